//! The wake-up scheduler: queues a job for every WAITING run whose `wake_at` has come (a
//! delay ended, an approval or child run timed out), so no waiting run holds a worker.
//! Every replica runs one; the outbox's unique dedupe key queues each wake-up once, and the
//! relay publishes wake-ups at once.

use crate::storage;
use shared_models::db::{blocking, PgPool, StorageError};
use std::time::Duration;

/// Wake-ups queued per pass; a larger backlog drains over the next passes.
const BATCH: i64 = 500;

/// One pass: queue the jobs of due wake-ups; returns how many were queued.
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

/// Run passes forever, `interval` apart; the caller aborts the task at shutdown (safe: a
/// pass is one transaction).
pub async fn run(pool: PgPool, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        if let Err(e) = schedule_once(&pool).await {
            log::warn!("scheduler pass failed: {e}");
        }
    }
}
