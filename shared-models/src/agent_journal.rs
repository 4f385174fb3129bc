//! The journal of agent steps' conversations and their live pieces, as written: a model turn
//! with its usage added to the run's (`agent_turns`, `run_usage`), a tool call's result added
//! to its turn, a live piece of a streamed answer (`agent_deltas`). Written by executor-worker
//! (under the run's lease, in its transactions); here, in one place, so that what tests put in
//! these tables is what the worker writes.

use crate::schema::agent_turns;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Jsonb, Text, Timestamptz};
use serde_json::Value;

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

/// Write a turn and add its usage to the run's (in the caller's transaction; the worker's is
/// fenced by the run's lease).
pub fn insert_turn(conn: &mut PgConnection, turn: &NewTurn) -> QueryResult<()> {
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

/// Add one tool call's result (`result`, by its call id) to turn `turn` of `step`.
pub fn add_tool_result(
    conn: &mut PgConnection,
    run_id: &str,
    step: &str,
    turn: i32,
    call_id: &str,
    result: &Value,
) -> QueryResult<usize> {
    diesel::sql_query(
        "UPDATE agent_turns SET tool_results = tool_results || jsonb_build_object($4::text, $5::jsonb)
         WHERE run_id = $1 AND step = $2 AND turn = $3",
    )
    .bind::<Text, _>(run_id)
    .bind::<Text, _>(step)
    .bind::<Integer, _>(turn)
    .bind::<Text, _>(call_id)
    .bind::<Jsonb, _>(result)
    .execute(conn)
}

/// A live piece (`kind` `delta` or `reset`) of attempt `attempt` of `step`'s answer.
pub fn insert_delta(
    conn: &mut PgConnection,
    run_id: &str,
    step: &str,
    attempt: i32,
    kind: &str,
    data: &Value,
) -> QueryResult<usize> {
    diesel::sql_query(
        "INSERT INTO agent_deltas (run_id, step, attempt, kind, data) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind::<Text, _>(run_id)
    .bind::<Text, _>(step)
    .bind::<Integer, _>(attempt)
    .bind::<Text, _>(kind)
    .bind::<Jsonb, _>(data)
    .execute(conn)
}

/// One journaled turn, as read back (by the worker resuming a step, by run detail).
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = agent_turns, check_for_backend(diesel::pg::Pg))]
pub struct TurnRow {
    pub step: String,
    pub turn: i32,
    pub attempt: i32,
    pub agent_id: String,
    pub model: String,
    pub messages: Value,
    pub reply: Value,
    pub tool_results: Value,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_tokens: i64,
    pub cost_picos: i64,
    pub created_at: DateTime<Utc>,
}

/// The turns of a run (of its step `step` only, when given), by step and turn.
pub fn load_turns(
    conn: &mut PgConnection,
    run_id: &str,
    step: Option<&str>,
) -> QueryResult<Vec<TurnRow>> {
    let mut query = agent_turns::table
        .filter(agent_turns::run_id.eq(run_id))
        .order((agent_turns::step, agent_turns::turn))
        .select(TurnRow::as_select())
        .into_boxed();
    if let Some(step) = step {
        query = query.filter(agent_turns::step.eq(step));
    }
    query.load(conn)
}
