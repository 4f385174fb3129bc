//! The journal of agent steps' conversations (`agent_turns`) and each run's usage
//! (`run_usage`): a model turn is written once its call answered, with its tokens and cost
//! added to the run's; each tool call's result is added to its turn once it finished. Every
//! write is fenced by the lease, in one transaction with the fence.

use super::lease::touch;
use super::{Fenced, LeaseHolder};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;

use serde_json::Value;
use shared_models::agent_journal;

/// The turns of one step, in order.
pub(crate) fn load_turns(
    conn: &mut PgConnection,
    run_id: &str,
    step: &str,
) -> Result<Vec<TurnRow>, Error> {
    agent_journal::load_turns(conn, run_id, Some(step))
}

pub use shared_models::agent_journal::{NewTurn, TurnRow};

/// Write a turn and add its usage to the run's, under the lease.
pub(crate) fn record_turn(
    conn: &mut PgConnection,
    turn: &NewTurn,
    me: &LeaseHolder,
) -> Result<Fenced, Error> {
    conn.transaction(|conn| {
        if touch(conn, &turn.run_id, me, turn.created_at)? == Fenced::LeaseLost {
            return Ok(Fenced::LeaseLost);
        }
        agent_journal::insert_turn(conn, turn)?;
        Ok(Fenced::Written)
    })
}

/// Which turn of which step of which run.
pub struct TurnKey<'a> {
    pub run_id: &'a str,
    pub step: &'a str,
    pub turn: i32,
}

/// Add one tool call's result (`result`, by its call id) to its turn, under the lease.
pub(crate) fn record_tool_result(
    conn: &mut PgConnection,
    at: TurnKey<'_>,
    call_id: &str,
    result: &Value,
    me: &LeaseHolder,
    now: DateTime<Utc>,
) -> Result<Fenced, Error> {
    let TurnKey { run_id, step, turn } = at;
    conn.transaction(|conn| {
        if touch(conn, run_id, me, now)? == Fenced::LeaseLost {
            return Ok(Fenced::LeaseLost);
        }
        agent_journal::add_tool_result(conn, run_id, step, turn, call_id, result)?;
        Ok(Fenced::Written)
    })
}

/// What the run's model calls have used so far: (tokens of every kind, cost in pico-USD).
pub(crate) fn run_spent(conn: &mut PgConnection, run_id: &str) -> Result<(i64, i64), Error> {
    use shared_models::schema::run_usage;
    Ok(run_usage::table
        .find(run_id)
        .select((
            run_usage::input_tokens + run_usage::output_tokens + run_usage::cached_tokens,
            run_usage::cost_picos,
        ))
        .first(conn)
        .optional()?
        .unwrap_or((0, 0)))
}
