//! An agent step's journal: its recorded turns read back, and each new turn and tool result
//! written under the run's lease ([`crate::storage::record_turn`]). A write that finds the
//! lease lost fails the attempt; the engine's own next write then finds it too and stops the
//! run's task, as for any step.

use super::{StepEnv, StepFailure};
use crate::agents::model::{Message, ModelReply, Usage};
use crate::storage::{self, Fenced, NewTurn, TurnRow};
use serde_json::Value;
use shared_models::db::blocking;

/// A model turn to journal: its number, who answered, the messages it added, the reply and
/// what it cost (pico-USD).
#[derive(Clone, Copy)]
pub(super) struct Draft<'a> {
    pub turn: i32,
    pub agent_id: &'a str,
    pub model: &'a str,
    pub messages: &'a [Message],
    pub reply: &'a ModelReply,
    pub cost_picos: i64,
}

pub(super) struct Journal<'a> {
    env: &'a StepEnv<'a>,
}

/// Storage failed (an outage): the attempt is retried like any failed call.
fn storage_failure(e: impl std::fmt::Display) -> StepFailure {
    StepFailure::retry(format!(
        "the agent step's journal could not be written: {e}"
    ))
}

fn fenced(written: Fenced) -> Result<(), StepFailure> {
    match written {
        Fenced::Written => Ok(()),
        Fenced::LeaseLost => Err(StepFailure::retry(
            "the run's lease was lost (cancelled, or taken over by another worker)",
        )),
    }
}

impl<'a> Journal<'a> {
    pub(super) fn new(env: &'a StepEnv<'a>) -> Self {
        Self { env }
    }

    /// The step's turns so far, across its attempts.
    pub(super) async fn load(&self) -> Result<Vec<TurnRow>, StepFailure> {
        let (run_id, step) = (self.env.run_id.to_string(), self.env.step.to_string());
        blocking(self.env.pool, move |conn| {
            storage::load_turns(conn, &run_id, &step)
        })
        .await
        .map_err(storage_failure)
    }

    /// Fails the step (not retried) when the run's budget is spent: checked before every
    /// model call, against the run's usage so far (every step, every attempt).
    pub(super) async fn check_budget(&self) -> Result<(), StepFailure> {
        let budget = self.env.budget;
        if budget.max_tokens.is_none() && budget.max_cost_usd.is_none() {
            return Ok(());
        }
        let run_id = self.env.run_id.to_string();
        let (tokens, picos) =
            blocking(self.env.pool, move |conn| storage::run_spent(conn, &run_id))
                .await
                .map_err(storage_failure)?;
        match budget.spent(tokens, picos) {
            Some(why) => Err(StepFailure::fatal(why)),
            None => Ok(()),
        }
    }

    /// The step's turns so far, across its attempts: none on its first attempt (attempt
    /// numbers are never reused, a retried run's included), without asking the database.
    pub(super) async fn load_unless_first(&self) -> Result<Vec<TurnRow>, StepFailure> {
        if self.env.attempt <= 1 {
            return Ok(Vec::new());
        }
        self.load().await
    }

    /// Turn `turn` as a row: the messages it added, the model's reply, its usage and cost.
    fn row(&self, draft: &Draft<'_>) -> Result<NewTurn, StepFailure> {
        let Draft {
            turn,
            agent_id,
            model,
            messages,
            reply,
            cost_picos,
        } = *draft;
        let Usage {
            input_tokens,
            output_tokens,
            cached_tokens,
        } = reply.usage;
        Ok(NewTurn {
            run_id: self.env.run_id.to_string(),
            step: self.env.step.to_string(),
            turn,
            attempt: self.env.attempt,
            org_id: self.env.org_id.to_string(),
            workflow_id: self.env.workflow_id.to_string(),
            agent_id: agent_id.to_string(),
            model: model.to_string(),
            messages: serde_json::to_value(messages).map_err(storage_failure)?,
            reply: serde_json::to_value(reply.message()).map_err(storage_failure)?,
            input_tokens,
            output_tokens,
            cached_tokens,
            cost_picos,
            created_at: shared_models::time::now(),
        })
    }

    /// Write turn `turn` now, under the lease.
    pub(super) async fn record_turn(&self, draft: &Draft<'_>) -> Result<(), StepFailure> {
        let row = self.row(draft)?;
        let me = self.env.me.clone();
        let written = blocking(self.env.pool, move |conn| {
            storage::record_turn(conn, &row, &me)
        })
        .await
        .map_err(storage_failure)?;
        fenced(written)
    }

    /// Leave the final turn `turn` to be written with the step's end, in its transaction
    /// ([`StepEnv::final_turn`]): one commit where two were.
    pub(super) fn record_with_end(&self, draft: &Draft<'_>) -> Result<(), StepFailure> {
        let row = self.row(draft)?;
        *self
            .env
            .final_turn
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(row);
        Ok(())
    }

    /// Add a tool call's result (a [`Message::Tool`]) to turn `turn`.
    pub(super) async fn record_tool_result(
        &self,
        turn: i32,
        result: &Message,
    ) -> Result<(), StepFailure> {
        let Message::Tool { tool_call_id, .. } = result else {
            return Err(StepFailure::fatal("only a tool result is recorded as one"));
        };
        let (run_id, step, call_id) = (
            self.env.run_id.to_string(),
            self.env.step.to_string(),
            tool_call_id.clone(),
        );
        let value: Value = serde_json::to_value(result).map_err(storage_failure)?;
        let me = self.env.me.clone();
        let written = blocking(self.env.pool, move |conn| {
            let at = storage::TurnKey {
                run_id: &run_id,
                step: &step,
                turn,
            };
            storage::record_tool_result(conn, at, &call_id, &value, &me, shared_models::time::now())
        })
        .await
        .map_err(storage_failure)?;
        fenced(written)
    }
}
