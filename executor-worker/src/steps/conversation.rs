//! The tool-calling loop of an `agent` step whose agent is a model provider: ask the model,
//! run the tools it calls (all of a turn's calls at once), give it their results, and again,
//! until it answers or `maxTurns` is reached. With `outputSchema`, the answer must be JSON
//! matching it; a mismatch is sent back for a repair turn (`repairTurns`, default 1), then
//! fails the step listing the problems.
//!
//! Every turn and every tool result is journaled ([`super::journal`]) as it happens. An
//! attempt first reads the journal and goes on from it: after a crash, no turn already
//! answered is asked again and no finished tool call runs again; a final answer already
//! recorded is the step's output without another call. A conversation that ended for good
//! (out of turns, or an answer that failed its schema after every repair) is not taken up
//! again: the next attempt (a retried run) starts a new one, after it in the same journal.

use super::journal::{Draft, Journal};
use super::tools::ToolOutcome;
use super::{deltas, rate, tools, StepEnv, StepFailure};
use crate::agents::model::{Message, ModelReply, ModelRequest, ToolCall, Usage, PICOS_PER_USD};
use crate::agents::{self, AgentError, ModelAgent};
use crate::render::Ctx;
use crate::storage::TurnRow;
use serde_json::{json, Value};
use shared_models::graph::AgentStep;
use shared_models::json_schema::{self, Schema};
use std::time::Duration;

/// How long a step waits after a provider's 429 that gave no `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

const SYSTEM_LEAD: &str = "You are carrying out one step of an automated workflow. \
The workflow run's variables and this step's inputs, as JSON:";

/// A conversation as the journal has it.
#[derive(Default)]
struct Conversation {
    /// Every message so far, in order.
    messages: Vec<Message>,
    /// Model turns of this conversation.
    turns: u32,
    /// Of which repair turns.
    repairs: u32,
    /// The number of the journal's last turn (of any conversation of this step).
    last_turn: i32,
    /// The last turn's tool calls that have no result yet: (index in the turn, call, the
    /// child run a workflow tool's call started).
    pending: Vec<Pending>,
}

/// A tool call without its result yet: its place in its turn, the call, and the child run a
/// workflow tool's call started.
type Pending = (usize, ToolCall, Option<String>);

/// How long a step waiting for its tools' child runs stays parked at most before it looks
/// again; a child's end wakes it sooner (it queues a job for its parent).
const TOOL_RUNS_WAIT: Duration = Duration::from_secs(3600);

/// Usage of every turn of the step, every conversation and attempt.
#[derive(Default)]
struct Spent {
    usage: Usage,
    cost_picos: i64,
}

impl Spent {
    fn add(&mut self, usage: &Usage, cost_picos: i64) {
        self.usage.add(usage);
        self.cost_picos = self.cost_picos.saturating_add(cost_picos);
    }

    fn to_json(&self) -> Value {
        json!({
            "inputTokens": self.usage.input_tokens,
            "outputTokens": self.usage.output_tokens,
            "cachedTokens": self.usage.cached_tokens,
            "costUsd": self.cost_picos as f64 / PICOS_PER_USD,
        })
    }
}

fn unreadable(turn: i32, e: serde_json::Error) -> StepFailure {
    StepFailure::fatal(format!("the journal's turn {turn} cannot be read: {e}"))
}

/// The journal's turns as the current conversation (from its last start) and what they used.
fn replay(rows: Vec<TurnRow>) -> Result<(Conversation, Spent), StepFailure> {
    let mut spent = Spent::default();
    let mut conversation = Conversation::default();
    for row in rows {
        spent.add(
            &Usage {
                input_tokens: row.input_tokens,
                output_tokens: row.output_tokens,
                cached_tokens: row.cached_tokens,
            },
            row.cost_picos,
        );
        let added: Vec<Message> =
            serde_json::from_value(row.messages).map_err(|e| unreadable(row.turn, e))?;
        let reply: Message =
            serde_json::from_value(row.reply).map_err(|e| unreadable(row.turn, e))?;
        if matches!(added.first(), Some(Message::System { .. })) {
            conversation = Conversation::default();
        } else if added.iter().any(is_repair) {
            conversation.repairs += 1;
        }
        conversation.turns += 1;
        conversation.last_turn = row.turn;
        conversation.messages.extend(added);
        conversation.messages.push(reply.clone());
        conversation.pending.clear();
        if let Message::Assistant { tool_calls, .. } = &reply {
            for (i, call) in tool_calls.iter().enumerate() {
                match row.tool_results.get(&call.id) {
                    // A workflow tool's child run, started and not ended when last looked.
                    Some(noted) if noted.get("childRunId").is_some() => {
                        let child = noted["childRunId"].as_str().map(str::to_string);
                        conversation.pending.push((i, call.clone(), child));
                    }
                    Some(result) => conversation.messages.push(
                        serde_json::from_value(result.clone())
                            .map_err(|e| unreadable(row.turn, e))?,
                    ),
                    None => conversation.pending.push((i, call.clone(), None)),
                }
            }
        }
    }
    Ok((conversation, spent))
}

/// The last reply of the conversation, if its last message is one.
fn last_reply(messages: &[Message]) -> Option<&Message> {
    messages
        .iter()
        .rev()
        .find(|m| !matches!(m, Message::Tool { .. }))
        .filter(|m| matches!(m, Message::Assistant { .. }))
}

/// The output of a reply that is a final answer standing as it is (text that matches the
/// schema, if any): `Some(its JSON, if any)`; `None` when the loop goes on (empty, or off its
/// schema).
fn final_output(content: &str, schema: Option<&Schema>) -> Option<Option<Value>> {
    if content.trim().is_empty() {
        return None;
    }
    check(content, schema).ok()
}

/// Whether a final answer is the step's output: its JSON (when there is any) if it matches
/// `schema`, else the problems.
fn check(content: &str, schema: Option<&Schema>) -> Result<Option<Value>, Vec<String>> {
    let parsed = parse_json_text(content);
    match (schema, parsed) {
        (None, parsed) => Ok(parsed),
        (Some(_), None) => Err(vec!["the answer is not JSON".to_string()]),
        (Some(schema), Some(parsed)) => {
            let problems = schema.problems(&parsed);
            if problems.is_empty() {
                Ok(Some(parsed))
            } else {
                Err(problems)
            }
        }
    }
}

/// JSON in an answer: the whole text, or a fenced ```json block.
pub(crate) fn parse_json_text(text: &str) -> Option<Value> {
    let text = text.trim();
    let inner = text
        .strip_prefix("```json")
        .or_else(|| text.strip_prefix("```"))
        .and_then(|rest| rest.trim_end().strip_suffix("```"))
        .unwrap_or(text)
        .trim();
    match serde_json::from_str::<Value>(inner) {
        Ok(v @ (Value::Object(_) | Value::Array(_))) => Some(v),
        _ => None,
    }
}

/// Carry out the step with `agent`; `instructions` and `inputs` are already rendered.
pub(super) async fn converse(
    step: &AgentStep,
    agent: ModelAgent<'_>,
    instructions: String,
    inputs: Value,
    ctx: &Ctx,
    env: &StepEnv<'_>,
) -> Result<Value, StepFailure> {
    let journal = Journal::new(env);
    let schema = step
        .output_schema
        .as_ref()
        .map(|s| {
            json_schema::compile(s).map_err(|e| StepFailure::fatal(format!("outputSchema {e}")))
        })
        .transpose()?;
    let specs = tools::specs(&step.tools);
    let mut reset_sent = false;
    let (mut conversation, mut spent) = replay(journal.load_unless_first().await?)?;
    // A conversation that cannot go on was ended for good by an earlier attempt.
    if conversation.turns > 0 && ended(&conversation, step, schema.as_ref()) {
        conversation = Conversation {
            last_turn: conversation.last_turn,
            ..Conversation::default()
        };
    }
    loop {
        // The last turn's tool calls, all at once, each journaled as it finishes.
        if !conversation.pending.is_empty() {
            let results =
                run_tools(step, agent.streams(), &mut conversation, &journal, ctx, env).await?;
            conversation.messages.extend(results);
        }
        let to_send = match last_reply(&conversation.messages) {
            None => {
                let context = json!({ "variables": ctx.get("variables"), "inputs": inputs });
                vec![
                    Message::System {
                        content: format!("{SYSTEM_LEAD}\n{context}"),
                    },
                    Message::User {
                        content: instructions.clone(),
                    },
                ]
            }
            Some(Message::Assistant { tool_calls, .. }) if !tool_calls.is_empty() => vec![],
            // No text and no call: asked again (a turn like any other, within maxTurns).
            Some(Message::Assistant { content, .. }) if content.trim().is_empty() => {
                vec![Message::User {
                    content: EMPTY_ANSWER.to_string(),
                }]
            }
            Some(Message::Assistant { content, .. }) => match check(content, schema.as_ref()) {
                Ok(parsed) => return Ok(output(content, parsed, &conversation, &spent)),
                Err(problems) if conversation.repairs < step.repair_turns => {
                    vec![Message::User {
                        content: repair_request(&problems),
                    }]
                }
                Err(problems) => return Err(mismatch(&problems, step.repair_turns)),
            },
            Some(_) => unreachable!("last_reply finds only assistant messages"),
        };
        if conversation.turns >= step.max_turns {
            return Err(StepFailure::fatal(format!(
                "the agent gave no final answer within maxTurns ({}) model turns",
                step.max_turns
            )));
        }
        journal.check_budget().await?;
        let mut messages = conversation.messages.clone();
        messages.extend(to_send.iter().cloned());
        let timeout = env
            .step_timeout
            .or(agent.timeout())
            .unwrap_or(env.agent_timeout);
        let request = ModelRequest {
            messages: &messages,
            tools: &specs,
            output_schema: step.output_schema.as_ref(),
        };
        let admitted = rate::admit(&step.agent_id, agent.rate_limit(), env).await?;
        let turn = conversation.last_turn + 1;
        let reply = if agent.streams() {
            if env.attempt > 1 && !reset_sent {
                deltas::reset(env).await;
                reset_sent = true;
            }
            let live = deltas::CallStream::start(env, turn);
            let mut sink = live.sink();
            let reply = agents::complete(
                env.agents,
                &env.http.operator,
                &step.agent_id,
                request,
                timeout,
                Some(&mut sink),
            )
            .await;
            live.finish().await;
            reply
        } else {
            agents::complete(
                env.agents,
                &env.http.operator,
                &step.agent_id,
                request,
                timeout,
                None,
            )
            .await
        };
        let reply: ModelReply = match reply {
            Ok(reply) => {
                admitted.used(reply.usage.total_tokens(), env).await;
                reply
            }
            // A provider's 429 (or 503 with Retry-After): wait as it asks, not a failure.
            Err(e @ AgentError::RateLimited { retry_after, .. }) => {
                return Err(StepFailure::defer(
                    e.to_string(),
                    retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
                ))
            }
            Err(e) => return Err(StepFailure::retry(e.to_string())),
        };
        let cost = agent.pricing().map_or(0, |p| p.cost_picos(&reply.usage));
        // A final answer that stands is written with the step's end, in one commit; any
        // other turn at once, so that the next attempt goes on after it.
        let output = match reply.tool_calls.is_empty() {
            true => final_output(&reply.content, schema.as_ref()),
            false => None,
        };
        let draft = Draft {
            turn,
            agent_id: &step.agent_id,
            model: agent.model(),
            messages: &to_send,
            reply: &reply,
            cost_picos: cost,
        };
        if let Some(parsed) = output {
            journal.record_with_end(&draft)?;
            crate::metrics::agent_turn(&step.agent_id, &reply.usage, cost);
            spent.add(&reply.usage, cost);
            conversation.turns += 1;
            return Ok(self::output(&reply.content, parsed, &conversation, &spent));
        }
        journal.record_turn(&draft).await?;
        crate::metrics::agent_turn(&step.agent_id, &reply.usage, cost);
        spent.add(&reply.usage, cost);
        if to_send.iter().any(is_repair) {
            conversation.repairs += 1;
        }
        conversation.turns += 1;
        conversation.last_turn = turn;
        conversation.messages.extend(to_send);
        conversation.pending = reply
            .tool_calls
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, call)| (i, call, None))
            .collect();
        conversation.messages.push(reply.message());
    }
}

/// Run the pending tool calls of the conversation's last turn, all at once; their results.
/// Workflow tools' child runs are waited for a while in the slot (they are often quick),
/// then the step is deferred (its run parks, holding no worker) until they end.
async fn run_tools(
    step: &AgentStep,
    streams: bool,
    conversation: &mut Conversation,
    journal: &Journal<'_>,
    ctx: &Ctx,
    env: &StepEnv<'_>,
) -> Result<Vec<Message>, StepFailure> {
    let turn = conversation.last_turn;
    let calls = std::mem::take(&mut conversation.pending);
    let outcomes =
        futures_util::future::join_all(calls.into_iter().map(|(i, call, child)| async move {
            let outcome = match child {
                Some(child) => ToolOutcome::Started(child),
                None => tools::call(&step.tools, &call, i, turn, ctx, env).await?,
            };
            if let ToolOutcome::Done(result) = &outcome {
                settle(journal, streams, env, turn, result).await?;
            }
            Ok::<_, StepFailure>((i, call, outcome))
        }))
        .await;
    let mut results = Vec::new();
    let mut running: Vec<Pending> = Vec::new();
    for outcome in outcomes {
        match outcome? {
            (_, _, ToolOutcome::Done(result)) => results.push(result),
            (i, call, ToolOutcome::Started(child)) => running.push((i, call, Some(child))),
        }
    }
    // The child runs, looked at with pauses that grow, for as long as a wait in the slot.
    let deadline = tokio::time::Instant::now() + env.wait_in_slot;
    let mut pause = Duration::from_millis(10);
    while !running.is_empty() {
        let mut still = Vec::new();
        for (i, call, child) in running {
            let id = child.as_deref().unwrap_or_default();
            match tools::child_result(&call, id, env).await? {
                Some(result) => {
                    settle(journal, streams, env, turn, &result).await?;
                    results.push(result);
                }
                None => still.push((i, call, child)),
            }
        }
        running = still;
        if running.is_empty() {
            break;
        }
        if tokio::time::Instant::now() + pause > deadline {
            let names: Vec<String> = running
                .iter()
                .map(|(_, call, child)| {
                    format!("{} ({})", call.name, child.as_deref().unwrap_or("?"))
                })
                .collect();
            return Err(StepFailure::defer(
                format!("waiting for tool runs: {}", names.join(", ")),
                TOOL_RUNS_WAIT,
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
    Ok(results)
}

/// A tool call's result is in: journaled, and sent live when the agent streams.
async fn settle(
    journal: &Journal<'_>,
    streams: bool,
    env: &StepEnv<'_>,
    turn: i32,
    result: &Message,
) -> Result<(), StepFailure> {
    journal.record_tool_result(turn, result).await?;
    if streams {
        deltas::tool_result(env, turn, result).await;
    }
    Ok(())
}

/// Whether `conversation` cannot go on: out of turns without a final answer, or a final
/// answer that fails its schema with no repair left.
fn ended(conversation: &Conversation, step: &AgentStep, schema: Option<&Schema>) -> bool {
    match last_reply(&conversation.messages) {
        Some(Message::Assistant {
            content,
            tool_calls,
        }) if tool_calls.is_empty() && !content.trim().is_empty() => {
            check(content, schema).is_err() && conversation.repairs >= step.repair_turns
        }
        _ => conversation.pending.is_empty() && conversation.turns >= step.max_turns,
    }
}

/// What a repair turn's message opens with (how the journal's repair turns are counted).
const REPAIR_LEAD: &str = "Your answer does not match the required JSON Schema:";
/// What the model is told after an answer with neither text nor tool calls.
const EMPTY_ANSWER: &str = "Your answer was empty. Carry out the instructions and answer.";

fn repair_request(problems: &[String]) -> String {
    format!(
        "{REPAIR_LEAD}\n- {}\nAnswer again with JSON that matches it, and nothing else.",
        problems.join("\n- ")
    )
}

fn is_repair(message: &Message) -> bool {
    matches!(message, Message::User { content } if content.starts_with(REPAIR_LEAD))
}

fn mismatch(problems: &[String], repairs: u32) -> StepFailure {
    let after = match repairs {
        0 => String::new(),
        1 => " after 1 repair turn".to_string(),
        n => format!(" after {n} repair turns"),
    };
    StepFailure::fatal(format!(
        "the agent's answer does not match outputSchema{after}: {}",
        problems.join("; ")
    ))
}

/// The step's output: the answer's text, its JSON, the turns it took, and the step's usage.
fn output(
    content: &str,
    parsed: Option<Value>,
    conversation: &Conversation,
    spent: &Spent,
) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("content".into(), Value::String(content.to_string()));
    if let Some(parsed) = parsed {
        out.insert("json".into(), parsed);
    }
    out.insert("turns".into(), json!(conversation.turns));
    out.insert("usage".into(), spent.to_json());
    Value::Object(out)
}
