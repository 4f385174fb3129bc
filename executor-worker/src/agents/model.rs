//! A conversation with a model in Thygon's own terms. Each provider (`openai`, `anthropic`)
//! turns a [`ModelRequest`] into its wire format and its answer into a [`ModelReply`]; the
//! tool-calling loop of an `agent` step ([`crate::steps`]) works only with these types, and
//! the turn journal stores them, so a conversation recorded with one provider reads the same
//! whatever answered it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "camelCase")]
pub enum Message {
    System {
        content: String,
    },
    User {
        content: String,
    },
    /// What the model answered: text, tool calls, or both.
    #[serde(rename_all = "camelCase")]
    Assistant {
        content: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
    },
    /// The result of one tool call, sent back to the model.
    #[serde(rename_all = "camelCase")]
    Tool {
        tool_call_id: String,
        name: String,
        /// What the model reads: the tool's output as JSON text, or the error's message.
        content: String,
        #[serde(default)]
        is_error: bool,
    },
}

/// A tool call the model asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id for the call; results are sent back under it.
    pub id: String,
    pub name: String,
    /// The arguments, parsed (providers send them as JSON text or as an object).
    pub arguments: Value,
}

/// A tool the model may call, as described to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// A JSON Schema of the arguments (an object schema).
    pub parameters: Value,
}

/// Sampling parameters: the agent entry's defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelParams {
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub top_p: Option<f64>,
}

/// One request to a model.
#[derive(Debug, Clone, Copy)]
pub struct ModelRequest<'a> {
    pub messages: &'a [Message],
    pub tools: &'a [ToolSpec],
    /// A JSON Schema the final answer must match; sent as the provider's native structured
    /// output where it has one (OpenAI's `response_format`), and checked by the step either
    /// way.
    pub output_schema: Option<&'a Value>,
}

/// Tokens one model call used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// Input tokens billed at the input price (not read from the provider's cache).
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// Input tokens read from the provider's prompt cache (billed at the cached price).
    pub cached_tokens: i64,
}

impl Usage {
    pub fn add(&mut self, other: &Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cached_tokens += other.cached_tokens;
    }

    pub fn total_tokens(&self) -> i64 {
        self.input_tokens + self.output_tokens + self.cached_tokens
    }
}

/// What one model call answered.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelReply {
    /// The text of the answer (empty when it is only tool calls).
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
    pub usage: Usage,
    /// The provider's reason for stopping (`stop`, `tool_calls`, `end_turn`, `max_tokens`, ...).
    pub stop_reason: Option<String>,
}

impl ModelReply {
    /// The reply as the assistant message of the conversation.
    pub fn message(&self) -> Message {
        Message::Assistant {
            content: self.content.clone(),
            tool_calls: self.tool_calls.clone(),
        }
    }
}

/// A piece of a reply as it is written, for a streaming call.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    /// Text of the answer.
    Text(String),
    /// The model started a tool call.
    ToolCallStart { id: String, name: String },
}

/// An agent's prices, from its entry's `pricing` (USD per million tokens). Kept as pico-USD
/// per token (micro-USD per million tokens), whole numbers, so that costs add up exactly
/// over turns, attempts and runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pricing {
    pub input_picos: i64,
    pub output_picos: i64,
    pub cached_picos: i64,
}

/// One USD in pico-USD.
pub const PICOS_PER_USD: f64 = 1e12;

impl Pricing {
    /// From USD per million tokens; the cached price defaults to the input price. Each price
    /// must be a finite number from 0 to 10,000 with at most 6 decimals.
    pub fn from_usd_per_mtok(input: f64, output: f64, cached: Option<f64>) -> Result<Self, String> {
        let picos = |field: &str, usd: f64| -> Result<i64, String> {
            if !usd.is_finite() || !(0.0..=10_000.0).contains(&usd) {
                return Err(format!(
                    "`pricing.{field}` must be from 0 to 10000 (USD per million tokens), got {usd}"
                ));
            }
            let scaled = usd * 1e6;
            if (scaled - scaled.round()).abs() > 1e-6 {
                return Err(format!("`pricing.{field}` has more than 6 decimals: {usd}"));
            }
            Ok(scaled.round() as i64)
        };
        let input_picos = picos("inputPerMTok", input)?;
        Ok(Self {
            input_picos,
            output_picos: picos("outputPerMTok", output)?,
            cached_picos: match cached {
                Some(cached) => picos("cachedInputPerMTok", cached)?,
                None => input_picos,
            },
        })
    }

    /// What `usage` cost, in pico-USD (saturating: a count no provider reports).
    pub fn cost_picos(&self, usage: &Usage) -> i64 {
        usage
            .input_tokens
            .saturating_mul(self.input_picos)
            .saturating_add(usage.output_tokens.saturating_mul(self.output_picos))
            .saturating_add(usage.cached_tokens.saturating_mul(self.cached_picos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_are_exact_in_picos() {
        let p = Pricing::from_usd_per_mtok(2.5, 10.0, Some(1.25)).unwrap();
        let u = Usage {
            input_tokens: 1_000,
            output_tokens: 200,
            cached_tokens: 4_000,
        };
        // 1000 * 2.5e-6 + 200 * 10e-6 + 4000 * 1.25e-6 = 0.0025 + 0.002 + 0.005 USD
        assert_eq!(p.cost_picos(&u), 9_500_000_000);
        let cheap = Pricing::from_usd_per_mtok(0.15, 0.6, None).unwrap();
        assert_eq!(
            cheap.cached_picos, 150_000,
            "the cached price defaults to the input price"
        );
        assert_eq!(
            cheap.cost_picos(&Usage {
                input_tokens: 7,
                output_tokens: 3,
                cached_tokens: 0
            }),
            7 * 150_000 + 3 * 600_000
        );
    }

    #[test]
    fn prices_out_of_range_or_too_fine_are_refused() {
        assert!(Pricing::from_usd_per_mtok(-1.0, 1.0, None)
            .unwrap_err()
            .contains("inputPerMTok"));
        assert!(Pricing::from_usd_per_mtok(1.0, f64::NAN, None)
            .unwrap_err()
            .contains("outputPerMTok"));
        assert!(Pricing::from_usd_per_mtok(1.0, 1.0, Some(0.0000001))
            .unwrap_err()
            .contains("6 decimals"));
    }
}
