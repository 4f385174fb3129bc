//! Reading a run's events for its event stream.

use diesel::prelude::*;
use diesel::result::Error;
use shared_models::models::RunEventRow;
use shared_models::schema::{run_events, runs};
use shared_models::status::RunStatus;

/// The next events of a run, and whether the stream can end after them.
pub(crate) struct EventBatch {
    pub events: Vec<RunEventRow>,
    /// The run had ended before these events were read, so no event can follow them
    /// (unless the batch was full: then read on).
    pub run_ended: bool,
}

/// Up to `limit` events of the run with ids above `after`, oldest first; `None` when the run
/// is not the org's.
///
/// Every writer inserts a run's events while holding the run's row lock, so their ids
/// commit in order and "ids above the last one sent" misses nothing.
pub(crate) fn events_after(
    conn: &mut PgConnection,
    org_id: &str,
    run_id: &str,
    after: i64,
    limit: i64,
) -> Result<Option<EventBatch>, Error> {
    // The status first: events written together with the end of the run are then certain
    // to be visible to the read below.
    let status: Option<RunStatus> = runs::table
        .find(run_id)
        .filter(runs::org_id.eq(org_id))
        .select(runs::status)
        .first(conn)
        .optional()?;
    let Some(status) = status else {
        return Ok(None);
    };
    let events = run_events::table
        .filter(run_events::run_id.eq(run_id))
        .filter(run_events::id.gt(after))
        .select(RunEventRow::as_select())
        .order(run_events::id)
        .limit(limit)
        .load(conn)?;
    Ok(Some(EventBatch {
        events,
        run_ended: status.is_terminal(),
    }))
}

/// A live piece of an agent's answer (`agent_deltas`, written by the worker).
#[derive(Queryable)]
pub(crate) struct DeltaRow {
    pub id: i64,
    pub step: String,
    pub attempt: i32,
    pub kind: String,
    pub data: serde_json::Value,
}

/// Up to `limit` live pieces of the run's agent steps with ids above `after`, oldest first.
pub(crate) fn deltas_after(
    conn: &mut PgConnection,
    run_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<DeltaRow>, Error> {
    use shared_models::schema::agent_deltas;
    agent_deltas::table
        .filter(agent_deltas::run_id.eq(run_id))
        .filter(agent_deltas::id.gt(after))
        .order(agent_deltas::id)
        .limit(limit)
        .select((
            agent_deltas::id,
            agent_deltas::step,
            agent_deltas::attempt,
            agent_deltas::kind,
            agent_deltas::data,
        ))
        .load(conn)
}

/// The id of the run's last live piece (0: none): a new stream sends the pieces after it.
pub(crate) fn last_delta(conn: &mut PgConnection, run_id: &str) -> Result<i64, Error> {
    use shared_models::schema::agent_deltas;
    Ok(agent_deltas::table
        .filter(agent_deltas::run_id.eq(run_id))
        .select(diesel::dsl::max(agent_deltas::id))
        .first::<Option<i64>>(conn)?
        .unwrap_or(0))
}
