//! The PENDING sweeper's pass, as the scheduler runs it (`PENDING_REQUEUE_SECONDS`,
//! `PENDING_REQUEUE_BATCH`): [`crate::storage::sweeper`] has the rule and the transaction;
//! this keeps the replica's place in the walk over PENDING runs, and logs and counts
//! (`thygon_pending_runs_requeued_total`) what a pass queued.

use crate::metrics::PENDING_RUNS_REQUEUED;
use crate::publisher::in_run_context;
use crate::storage::sweeper::{requeue_stranded, Sweep, SweepCursor};
use shared_models::db::{blocking, PgPool, StorageError};
use std::time::Duration;

pub struct PendingSweeper {
    /// How long a PENDING run may go without a job in flight (`PENDING_REQUEUE_SECONDS`).
    stale_after: Duration,
    /// PENDING runs looked at per pass (`PENDING_REQUEUE_BATCH`): bounds a pass's work
    /// whatever the number of stale runs.
    batch: u32,
    /// Where this replica's walk stands; each replica walks on its own (the row locks of a
    /// pass keep two from queueing one run twice).
    cursor: SweepCursor,
    /// Whether the last pass found the outbox behind, so that is logged once, not per pass.
    outbox_behind: bool,
}

impl PendingSweeper {
    pub fn new(stale_after: Duration, batch: u32) -> Self {
        Self {
            stale_after,
            batch: batch.max(1),
            cursor: SweepCursor::default(),
            outbox_behind: false,
        }
    }

    /// One pass: queue a job for each stranded run among the next `batch` PENDING runs;
    /// returns how many were queued.
    pub async fn sweep_once(&mut self, pool: &PgPool) -> Result<usize, StorageError> {
        let secs = self.stale_after.as_secs_f64();
        let (batch, after) = (i64::from(self.batch), self.cursor.clone());
        let now = shared_models::time::now();
        let sweep = blocking(pool, move |conn| {
            requeue_stranded(conn, secs, batch, &after, now)
        })
        .await?;
        let (requeued, next) = match sweep {
            Sweep::OutboxBehind => {
                if !self.outbox_behind {
                    log::info!(
                        "PENDING sweeper waits: the outbox holds many unsent jobs (the broker is away or slow), so runs without a job are expected"
                    );
                }
                self.outbox_behind = true;
                return Ok(0);
            }
            Sweep::Swept { requeued, next } => (requeued, next),
        };
        self.outbox_behind = false;
        self.cursor = next;
        for (run_id, request_id) in &requeued {
            in_run_context(run_id, request_id.as_deref(), || {
                log::warn!(
                    "run {run_id}: PENDING with no job in flight for {secs} s (the broker lost it); queued again"
                )
            });
        }
        PENDING_RUNS_REQUEUED.inc_by(requeued.len() as u64);
        Ok(requeued.len())
    }
}
