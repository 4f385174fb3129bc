//! The lease: the fence of every write ([`touch`]), its renewal during a long step, and its
//! release at shutdown.

use super::{Fenced, LeaseHolder};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
use shared_models::schema::runs as runs_table;

/// Touch the run while holding its lease: extends the lease and moves `updatedAt`.
pub(super) fn touch(
    conn: &mut PgConnection,
    run_id: &str,
    me: &LeaseHolder,
    now: DateTime<Utc>,
) -> Result<Fenced, Error> {
    let n = diesel::update(
        runs_table::table
            .find(run_id)
            .filter(runs_table::lease_owner.eq(&me.worker_id)),
    )
    .set((
        runs_table::updated_at.eq(now),
        runs_table::lease_expires_at.eq(me.expires(now)),
    ))
    .execute(conn)?;
    Ok(Fenced::of(n))
}

/// The heartbeat: keep holding the run during a long step.
pub(crate) fn renew_lease(
    conn: &mut PgConnection,
    run_id: &str,
    me: &LeaseHolder,
    now: DateTime<Utc>,
) -> Result<Fenced, Error> {
    let n = diesel::update(
        runs_table::table
            .find(run_id)
            .filter(runs_table::lease_owner.eq(&me.worker_id)),
    )
    .set(runs_table::lease_expires_at.eq(me.expires(now)))
    .execute(conn)?;
    Ok(Fenced::of(n))
}

/// Hand the run back at shutdown: the lease ends now (so the redelivered job is taken at
/// once) and the owner is cleared (so this worker's abandoned task can write nothing more).
pub(crate) fn release_lease(
    conn: &mut PgConnection,
    run_id: &str,
    me: &LeaseHolder,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    diesel::update(
        runs_table::table
            .find(run_id)
            .filter(runs_table::lease_owner.eq(&me.worker_id)),
    )
    .set((
        runs_table::lease_owner.eq(None::<String>),
        runs_table::lease_expires_at.eq(now),
    ))
    .execute(conn)
    .map(|_| ())
}
