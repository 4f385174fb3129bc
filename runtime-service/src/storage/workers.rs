//! Workers as `GET /ops/workers` shows them: the rows executor workers keep in `workers`
//! (they own the table; this service only reads it) and the RUNNING runs each one holds.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
use shared_models::models::WorkerRow;
use shared_models::schema::{runs, workers};
use std::collections::HashMap;

/// Workers whose last heartbeat is after `since`, most recent heartbeat first, each with the
/// ids of the RUNNING runs it holds the lease of (oldest first).
pub(crate) fn recent_workers(
    conn: &mut PgConnection,
    since: DateTime<Utc>,
) -> Result<Vec<(WorkerRow, Vec<String>)>, Error> {
    let rows: Vec<WorkerRow> = workers::table
        .filter(workers::last_heartbeat_at.gt(since))
        .select(WorkerRow::as_select())
        .order((workers::last_heartbeat_at.desc(), workers::id))
        .load(conn)?;
    let ids: Vec<&str> = rows.iter().map(|w| w.id.as_str()).collect();
    let held: Vec<(String, Option<String>)> = runs::table
        .filter(runs::status.eq("RUNNING"))
        .filter(runs::lease_owner.eq_any(&ids))
        .select((runs::id, runs::lease_owner))
        .order(runs::id)
        .load(conn)?;
    let mut by_owner: HashMap<String, Vec<String>> = HashMap::new();
    for (run, owner) in held {
        if let Some(owner) = owner {
            by_owner.entry(owner).or_default().push(run);
        }
    }
    Ok(rows
        .into_iter()
        .map(|w| {
            let runs = by_owner.remove(&w.id).unwrap_or_default();
            (w, runs)
        })
        .collect())
}
