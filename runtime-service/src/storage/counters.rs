//! Counts every replica adds to (`ops_counters`), for the operators' view: the Prometheus
//! counters of the same events are per process, these are the deployment's since the table
//! was made. Each is added to in the transaction (or right after the broker round) that did
//! what it counts.

use diesel::prelude::*;
use diesel::result::Error;
use diesel::sql_types::{BigInt, Text};
use shared_models::prepared::prepared;
use shared_models::schema::ops_counters;
use std::collections::HashMap;

/// PENDING runs the sweeper queued again (`thygon_pending_runs_requeued_total`).
pub const PENDING_RUNS_REQUEUED: &str = "pending_runs_requeued";
/// Dead letters moved back to the job queue (`thygon_dead_letters_redriven_total`).
pub(crate) const DEAD_LETTERS_REDRIVEN: &str = "dead_letters_redriven";

/// Add `n` to the count `name` (made at 0 the first time).
pub(crate) fn add(conn: &mut PgConnection, name: &str, n: i64) -> Result<(), Error> {
    if n == 0 {
        return Ok(());
    }
    prepared(
        "INSERT INTO ops_counters (name, value, updated_at) VALUES ($1, $2, now())
         ON CONFLICT (name) DO UPDATE
         SET value = ops_counters.value + excluded.value, updated_at = now()",
    )
    .bind::<Text, _>(name)
    .bind::<BigInt, _>(n)
    .execute(conn)
    .map(|_| ())
}

/// Every count by name; a count never added to is absent (read it as 0).
pub fn read_all(conn: &mut PgConnection) -> Result<HashMap<String, i64>, Error> {
    Ok(ops_counters::table
        .select((ops_counters::name, ops_counters::value))
        .load::<(String, i64)>(conn)?
        .into_iter()
        .collect())
}
