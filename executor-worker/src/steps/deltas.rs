//! Live pieces of a streaming agent's answers (`stream = true` on its entry), for the run's
//! event stream: text as it is written, tool calls as they start, tool results as they
//! arrive. Coalesced: the pieces of one call are written at most every [`FLUSH_EVERY`] (so at
//! most 20 rows a second per step), into `agent_deltas`, which is not durable (docs/AGENTS.md,
//! "Streaming"); a step's answer is durable only once its turn is journaled.

use super::StepEnv;
use crate::agents::model::{Delta, Message};
use serde_json::{json, Value};
use shared_models::db::{blocking, PgPool};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the pieces of a streamed answer are written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// Where a step's pieces go.
#[derive(Clone)]
struct Target {
    pool: PgPool,
    run_id: String,
    step: String,
    attempt: i32,
}

impl Target {
    fn of(env: &StepEnv<'_>) -> Self {
        Self {
            pool: env.pool.clone(),
            run_id: env.run_id.to_string(),
            step: env.step.to_string(),
            attempt: env.attempt,
        }
    }

    /// Write one row; a failure is logged, not the step's (the pieces are a courtesy).
    async fn write(&self, kind: &'static str, data: Value) {
        let t = self.clone();
        let written = blocking(&self.pool, move |conn| {
            shared_models::agent_journal::insert_delta(
                conn, &t.run_id, &t.step, t.attempt, kind, &data,
            )
        })
        .await;
        if let Err(e) = written {
            log::debug!(
                "run {}: a live piece of step {} was not written: {e}",
                self.run_id,
                self.step
            );
        }
    }
}

/// The pieces not written yet.
#[derive(Default)]
struct Pieces {
    text: String,
    tool_calls: Vec<Value>,
}

impl Pieces {
    fn take(&mut self, turn: i32) -> Option<Value> {
        if self.text.is_empty() && self.tool_calls.is_empty() {
            return None;
        }
        let mut data = json!({ "turn": turn });
        if !self.text.is_empty() {
            data["text"] = Value::String(std::mem::take(&mut self.text));
        }
        if !self.tool_calls.is_empty() {
            data["toolCalls"] = Value::Array(std::mem::take(&mut self.tool_calls));
        }
        Some(data)
    }
}

/// The pieces of one streamed model call (turn `turn`).
pub(super) struct CallStream {
    target: Target,
    turn: i32,
    pieces: Arc<Mutex<Pieces>>,
    flusher: tokio::task::JoinHandle<()>,
}

impl CallStream {
    pub(super) fn start(env: &StepEnv<'_>, turn: i32) -> Self {
        let (target, pieces) = (Target::of(env), Arc::new(Mutex::new(Pieces::default())));
        let flusher = {
            let (target, pieces) = (target.clone(), pieces.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(FLUSH_EVERY).await;
                    let data = pieces.lock().unwrap_or_else(|e| e.into_inner()).take(turn);
                    if let Some(data) = data {
                        target.write("delta", data).await;
                    }
                }
            })
        };
        Self {
            target,
            turn,
            pieces,
            flusher,
        }
    }

    /// What the provider's stream calls with each piece.
    pub(super) fn sink(&self) -> impl FnMut(Delta) + Send + 'static {
        let pieces = self.pieces.clone();
        move |delta| {
            let mut pieces = pieces.lock().unwrap_or_else(|e| e.into_inner());
            match delta {
                Delta::Text(text) => pieces.text.push_str(&text),
                Delta::ToolCallStart { id, name } => {
                    pieces.tool_calls.push(json!({ "id": id, "name": name }))
                }
            }
        }
    }

    /// The call ended: write what is left.
    pub(super) async fn finish(self) {
        self.flusher.abort();
        let data = self
            .pieces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(self.turn);
        if let Some(data) = data {
            self.target.write("delta", data).await;
        }
    }
}

/// A retried attempt starts its answer again: clients drop what they showed of the last one.
pub(super) async fn reset(env: &StepEnv<'_>) {
    Target::of(env)
        .write("reset", json!({ "attempt": env.attempt }))
        .await;
}

/// A tool call's result arrived.
pub(super) async fn tool_result(env: &StepEnv<'_>, turn: i32, result: &Message) {
    if let Message::Tool {
        tool_call_id,
        name,
        is_error,
        ..
    } = result
    {
        let data = json!({ "turn": turn, "toolResult": { "id": tool_call_id, "name": name, "isError": is_error } });
        Target::of(env).write("delta", data).await;
    }
}

/// Delete pieces older than `age` (at most `batch` rows), as every worker does now and then;
/// returns how many.
pub fn prune(
    conn: &mut diesel::PgConnection,
    age: Duration,
    batch: i64,
) -> diesel::QueryResult<usize> {
    use diesel::prelude::*;
    use diesel::sql_types::{BigInt, Double};
    diesel::sql_query(
        "DELETE FROM agent_deltas WHERE id IN (
           SELECT id FROM agent_deltas WHERE at < now() - make_interval(secs => $1) LIMIT $2)",
    )
    .bind::<Double, _>(age.as_secs_f64())
    .bind::<BigInt, _>(batch)
    .execute(conn)
}
