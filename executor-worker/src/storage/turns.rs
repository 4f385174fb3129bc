//! The journal of agent steps' conversations (`agent_turns`) and each run's usage
//! (`run_usage`): a model turn is written once its call answered, with its tokens and cost
//! added to the run's; each tool call's result is added to its turn once it finished. Every
//! write is fenced by the lease, in one transaction with the fence.

use super::lease::touch;
use super::{Fenced, LeaseHolder};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
use diesel::sql_types::{BigInt, Jsonb, Text};
use serde_json::Value;
use shared_models::schema::agent_turns;

/// One recorded turn, as read back.
#[derive(Debug, Clone, Queryable)]
pub struct TurnRow {
    pub turn: i32,
    pub attempt: i32,
    pub messages: Value,
    pub reply: Value,
    pub tool_results: Value,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_tokens: i64,
    pub cost_picos: i64,
}

/// The turns of one step, in order.
pub(crate) fn load_turns(
    conn: &mut PgConnection,
    run_id: &str,
    step: &str,
) -> Result<Vec<TurnRow>, Error> {
    agent_turns::table
        .filter(agent_turns::run_id.eq(run_id))
        .filter(agent_turns::step.eq(step))
        .order(agent_turns::turn.asc())
        .select((
            agent_turns::turn,
            agent_turns::attempt,
            agent_turns::messages,
            agent_turns::reply,
            agent_turns::tool_results,
            agent_turns::input_tokens,
            agent_turns::output_tokens,
            agent_turns::cached_tokens,
            agent_turns::cost_picos,
        ))
        .load(conn)
}

/// A turn to write.
#[derive(Debug, Clone)]
pub struct NewTurn {
    pub run_id: String,
    pub step: String,
    pub turn: i32,
    pub attempt: i32,
    pub org_id: String,
    pub workflow_id: String,
    pub agent_id: String,
    pub model: String,
    pub messages: Value,
    pub reply: Value,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_tokens: i64,
    pub cost_picos: i64,
    pub created_at: DateTime<Utc>,
}

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
        insert_turn(conn, turn)?;
        Ok(Fenced::Written)
    })
}

/// Which turn of which step of which run.
pub struct TurnKey<'a> {
    pub run_id: &'a str,
    pub step: &'a str,
    pub turn: i32,
}

/// In the caller's transaction, under its lease: write a turn and add its usage to the run's.
pub(super) fn insert_turn(conn: &mut PgConnection, turn: &NewTurn) -> Result<(), Error> {
    use diesel::sql_types::{Integer, Timestamptz};
    // One statement (one round trip): the turn, and its usage added to the run's.
    diesel::sql_query(
        "WITH turn AS (
           INSERT INTO agent_turns (run_id, step, turn, attempt, org_id, workflow_id, agent_id,
                                    model, messages, reply, input_tokens, output_tokens,
                                    cached_tokens, cost_picos, created_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
           RETURNING run_id, input_tokens, output_tokens, cached_tokens, cost_picos)
         INSERT INTO run_usage AS u (run_id, input_tokens, output_tokens, cached_tokens, cost_picos)
         SELECT * FROM turn
         ON CONFLICT (run_id) DO UPDATE SET
           input_tokens = u.input_tokens + EXCLUDED.input_tokens,
           output_tokens = u.output_tokens + EXCLUDED.output_tokens,
           cached_tokens = u.cached_tokens + EXCLUDED.cached_tokens,
           cost_picos = u.cost_picos + EXCLUDED.cost_picos",
    )
    .bind::<Text, _>(&turn.run_id)
    .bind::<Text, _>(&turn.step)
    .bind::<Integer, _>(turn.turn)
    .bind::<Integer, _>(turn.attempt)
    .bind::<Text, _>(&turn.org_id)
    .bind::<Text, _>(&turn.workflow_id)
    .bind::<Text, _>(&turn.agent_id)
    .bind::<Text, _>(&turn.model)
    .bind::<Jsonb, _>(&turn.messages)
    .bind::<Jsonb, _>(&turn.reply)
    .bind::<BigInt, _>(turn.input_tokens)
    .bind::<BigInt, _>(turn.output_tokens)
    .bind::<BigInt, _>(turn.cached_tokens)
    .bind::<BigInt, _>(turn.cost_picos)
    .bind::<Timestamptz, _>(turn.created_at)
    .execute(conn)?;
    Ok(())
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
        diesel::sql_query(
            "UPDATE agent_turns SET tool_results = tool_results || jsonb_build_object($4::text, $5::jsonb)
             WHERE run_id = $1 AND step = $2 AND turn = $3",
        )
        .bind::<Text, _>(run_id)
        .bind::<Text, _>(step)
        .bind::<diesel::sql_types::Integer, _>(turn)
        .bind::<Text, _>(call_id)
        .bind::<Jsonb, _>(result)
        .execute(conn)?;
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
