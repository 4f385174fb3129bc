//! A run's budget for its agent steps' model calls: `budget: {maxTokens, maxCostUsd}` in a
//! workflow definition, and the same in a trigger's body, whose fields override the
//! definition's for that run. The worker checks it before every model call
//! (docs/AGENTS.md, "Budgets").

use crate::body::{Errors, Obj};
use crate::envelope::FieldError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The most either limit may be set to.
pub const MAX_BUDGET_TOKENS: i64 = 1_000_000_000_000;
pub const MAX_BUDGET_USD: f64 = 1_000_000.0;

/// The error code a step fails with when its run's budget is spent.
pub const BUDGET_EXCEEDED: &str = "BUDGET_EXCEEDED";

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
}

impl Budget {
    /// `budget` as written at `path`: an object with `maxTokens` (a whole number from 1) and/or
    /// `maxCostUsd` (above 0); problems go to `errors`.
    pub fn parse(value: &Value, path: &str, errors: &mut Errors) -> Option<Budget> {
        let Some(map) = value.as_object() else {
            errors.push(FieldError::new(
                path,
                "must be an object: {\"maxTokens\": ..., \"maxCostUsd\": ...}",
            ));
            return None;
        };
        let before = errors.len();
        let mut obj = Obj::new(map, path);
        let max_tokens = obj.opt_f64("maxTokens", errors).and_then(|n| {
            if n.fract() != 0.0 || !(1.0..=MAX_BUDGET_TOKENS as f64).contains(&n) {
                errors.push(FieldError::new(
                    obj.path("maxTokens"),
                    format!("must be a whole number from 1 to {MAX_BUDGET_TOKENS}"),
                ));
                return None;
            }
            Some(n as i64)
        });
        let max_cost_usd = obj.opt_f64("maxCostUsd", errors).and_then(|usd| {
            if !(usd > 0.0 && usd <= MAX_BUDGET_USD) {
                errors.push(FieldError::new(
                    obj.path("maxCostUsd"),
                    format!("must be above 0 and at most {MAX_BUDGET_USD}"),
                ));
                return None;
            }
            Some(usd)
        });
        obj.finish(errors);
        if errors.len() > before {
            return None;
        }
        if max_tokens.is_none() && max_cost_usd.is_none() {
            errors.push(FieldError::new(
                path,
                "must set maxTokens, maxCostUsd or both",
            ));
            return None;
        }
        Some(Budget {
            max_tokens,
            max_cost_usd,
        })
    }

    /// This budget with `over`'s fields where it sets them (a trigger's override).
    pub fn overridden_by(self, over: Option<Budget>) -> Budget {
        let Some(over) = over else { return self };
        Budget {
            max_tokens: over.max_tokens.or(self.max_tokens),
            max_cost_usd: over.max_cost_usd.or(self.max_cost_usd),
        }
    }

    /// Why a run that has used `tokens` and `cost_picos` (pico-USD) may make no more model
    /// calls, or `None` while it may.
    pub fn spent(&self, tokens: i64, cost_picos: i64) -> Option<String> {
        if let Some(max) = self.max_tokens.filter(|&max| tokens >= max) {
            return Some(format!(
                "{BUDGET_EXCEEDED}: the run has used {tokens} tokens of its budget of {max} (budget.maxTokens)"
            ));
        }
        let usd = cost_picos as f64 / 1e12;
        if let Some(max) = self.max_cost_usd.filter(|&max| usd >= max) {
            return Some(format!(
                "{BUDGET_EXCEEDED}: the run has spent {usd} USD of its budget of {max} USD (budget.maxCostUsd)"
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Budget, Vec<String>> {
        let mut errors = Errors::new();
        Budget::parse(&v, "budget", &mut errors).ok_or_else(|| {
            errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect()
        })
    }

    #[test]
    fn a_budget_takes_tokens_cost_or_both() {
        assert_eq!(
            parse(json!({"maxTokens": 1000, "maxCostUsd": 0.5})).unwrap(),
            Budget {
                max_tokens: Some(1000),
                max_cost_usd: Some(0.5)
            }
        );
        assert_eq!(parse(json!({"maxCostUsd": 2})).unwrap().max_tokens, None);
        let errors =
            parse(json!({"maxTokens": 1.5, "maxCostUsd": -1, "maxtokens": 3})).unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(parse(json!({})).unwrap_err()[0].contains("must set maxTokens, maxCostUsd or both"));
        assert!(parse(json!(5)).unwrap_err()[0].starts_with("budget: must be an object"));
    }

    #[test]
    fn a_trigger_overrides_field_by_field() {
        let def = Budget {
            max_tokens: Some(100),
            max_cost_usd: Some(1.0),
        };
        let over = Budget {
            max_tokens: Some(50),
            max_cost_usd: None,
        };
        assert_eq!(
            def.overridden_by(Some(over)),
            Budget {
                max_tokens: Some(50),
                max_cost_usd: Some(1.0)
            }
        );
        assert_eq!(def.overridden_by(None), def);
    }

    #[test]
    fn spent_says_which_limit_and_carries_the_code() {
        let b = Budget {
            max_tokens: Some(100),
            max_cost_usd: Some(0.01),
        };
        assert_eq!(b.spent(99, 0), None);
        assert!(b
            .spent(100, 0)
            .unwrap()
            .starts_with("BUDGET_EXCEEDED: the run has used 100 tokens"));
        assert!(b
            .spent(0, 10_000_000_000)
            .unwrap()
            .contains("budget.maxCostUsd"));
        assert_eq!(Budget::default().spent(i64::MAX, i64::MAX), None);
    }
}
