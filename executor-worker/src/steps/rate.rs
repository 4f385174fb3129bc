//! An agent's `rateLimit`, shared by the fleet ([`crate::storage::admit`]): a model call
//! waits for room in its agent's window. A short wait (up to `AGENT_WAIT_IN_SLOT_SECONDS`)
//! is waited here; a longer one defers the step ([`StepFailure::defer`]): its run parks,
//! WAITING, holding no worker slot, and the step goes on from its journal when the wait is
//! over.

use super::{StepEnv, StepFailure};
use crate::agents::RateLimit;
use crate::storage::{self, Admission};
use shared_models::db::blocking;

/// An admitted call, to add its tokens to once it answered.
pub(super) struct Admitted(Option<i64>);

/// Room for one call of `agent_id` under `limit` (none: at once).
pub(super) async fn admit(
    agent_id: &str,
    limit: Option<RateLimit>,
    env: &StepEnv<'_>,
) -> Result<Admitted, StepFailure> {
    let Some(limit) = limit else {
        return Ok(Admitted(None));
    };
    let window = chrono::Duration::from_std(env.rate_window)
        .map_err(|e| StepFailure::fatal(format!("AGENT_RATE_WINDOW_SECONDS: {e}")))?;
    loop {
        let agent = agent_id.to_string();
        let admission = blocking(env.pool, move |conn| {
            storage::admit(
                conn,
                &agent,
                limit.requests_per_minute,
                limit.tokens_per_minute,
                window,
            )
        })
        .await
        .map_err(|e| {
            StepFailure::retry(format!("the agent's rate limit could not be read: {e}"))
        })?;
        match admission {
            Admission::Admitted(id) => return Ok(Admitted(Some(id))),
            Admission::FullFor(wait) if wait <= env.wait_in_slot => tokio::time::sleep(wait).await,
            Admission::FullFor(wait) => {
                return Err(StepFailure::defer(
                    format!("agent '{agent_id}' is at its rateLimit"),
                    wait,
                ))
            }
        }
    }
}

impl Admitted {
    /// Count the tokens the call used against its agent's `tokensPerMinute`.
    pub(super) async fn used(self, tokens: i64, env: &StepEnv<'_>) {
        let Some(id) = self.0 else { return };
        if let Err(e) = blocking(env.pool, move |conn| storage::used(conn, id, tokens)).await {
            // The call is made; a count lost to an outage only lets the next window fuller.
            log::warn!("could not count the tokens of an agent call against its rate limit: {e}");
        }
    }
}
