//! The scheduler: each pass queues a job for every WAITING run whose `wake_at` has come (a
//! delay ended, an approval or child run timed out), so no waiting run holds a worker, and
//! for every PENDING run whose `wake_at` has come (a worker held it back because its org was
//! at `MAX_RUNNING_PER_ORG`), so it is tried again; and it reaps expired leases: a RUNNING run
//! whose worker died gets a new job, so another worker resumes it even when its message is
//! gone too.
//! Every replica runs one; the outbox's unique dedupe key queues each wake-up and each
//! expired lease once, and the relay publishes them at once.

use crate::storage;
use shared_models::db::{blocking, PgPool, StorageError};
use std::time::Duration;

/// Wake-ups (and, separately, expired leases) queued per pass; a larger backlog drains over
/// the next passes.
const BATCH: i64 = 500;

/// One pass: queue the jobs of due wake-ups (WAITING runs, and PENDING runs held back by
/// their org's running cap); returns how many were queued.
pub async fn schedule_once(pool: &PgPool) -> Result<usize, StorageError> {
    let queued = blocking(pool, |conn| {
        storage::wakeups::enqueue_due_wakeups(conn, BATCH)
    })
    .await?;
    if queued > 0 {
        log::info!("scheduler queued {queued} wake-up(s)");
    }
    Ok(queued)
}

/// One reaper pass: queue a job for each RUNNING run whose lease expired more than `grace`
/// ago; returns how many were queued.
pub async fn reap_once(pool: &PgPool, grace: Duration) -> Result<usize, StorageError> {
    let grace_secs = grace.as_secs_f64();
    let queued = blocking(pool, move |conn| {
        storage::reaper::enqueue_expired_leases(conn, grace_secs, BATCH)
    })
    .await?;
    if queued > 0 {
        log::warn!("lease reaper queued {queued} run(s) whose worker stopped renewing its lease");
    }
    Ok(queued)
}

/// Run passes (wake-ups, then expired leases with the reaper grace of
/// `REAPER_GRACE_SECONDS`) forever, `interval` apart; the caller aborts the task at shutdown
/// (safe: each pass is one transaction).
pub async fn run(pool: PgPool, interval: Duration, reaper_grace: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        if let Err(e) = schedule_once(&pool).await {
            log::warn!("scheduler pass failed: {e}");
        }
        if let Err(e) = reap_once(&pool, reaper_grace).await {
            log::warn!("lease reaper pass failed: {e}");
        }
    }
}
