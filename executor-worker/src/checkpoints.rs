//! Group commit of pure-step checkpoints and run ends.
//!
//! Every run a worker executes checkpoints each step before its next step starts. For
//! `transform` steps (pure: computed from the run's context alone) that checkpoint is one
//! transaction, and so is a run's end; with many runs in flight, those transactions are
//! batched: each run hands its computed step (or its end) to the [`Checkpointer`] and waits
//! for the commit; one task writes everything that is waiting in one transaction
//! ([`storage::write_batch`]: two statements for the steps and one for the ends, whatever
//! their number) and answers each run once it is committed.
//!
//! Guarantees are unchanged: a run never starts its next step before its previous one is
//! committed (it waits for its answer); every write is still fenced by the run's lease (a
//! run whose lease was lost gets [`Fenced::LeaseLost`] and nothing of it is written, the
//! rest of the batch is); a failed batch fails every step in it, each run stops with a
//! storage error and its job is retried, exactly as when a single checkpoint fails.
//!
//! Batches form as in [`crate::batches`]: whatever arrived while the previous one was being
//! committed.

use crate::batches::{answers, Batches};
use crate::storage::{self, Fenced, LeaseHolder, PureStep, RunFinish};
use shared_models::db::{blocking, PgPool, StorageError};

/// At most this many steps per transaction.
pub const MAX_BATCH: usize = 256;

/// One write to make.
enum Write {
    Step(PureStep),
    End(RunFinish),
}

/// The handle runs use; cheap to clone. The writing task ends when every handle is dropped.
#[derive(Clone)]
pub struct Checkpointer {
    batches: Batches<Write, Fenced>,
}

impl Checkpointer {
    /// Start the writing task (on the current tokio runtime).
    pub fn start(pool: PgPool, me: LeaseHolder) -> Self {
        let batches = Batches::start("the checkpoint writer", MAX_BATCH, move |writes| {
            write_batch(pool.clone(), me.clone(), writes)
        });
        Self { batches }
    }

    /// Checkpoint one pure step; returns once it is committed (or not written at all).
    pub async fn checkpoint(&self, step: PureStep) -> Result<Fenced, StorageError> {
        self.batches.submit(Write::Step(step)).await
    }

    /// End a run; returns once it is committed (or not written at all).
    pub async fn finish(&self, end: RunFinish) -> Result<Fenced, StorageError> {
        self.batches.submit(Write::End(end)).await
    }
}

/// Write one batch in one transaction; the answers in the writes' order.
async fn write_batch(
    pool: PgPool,
    me: LeaseHolder,
    writes: Vec<Write>,
) -> Vec<Result<Fenced, StorageError>> {
    let n = writes.len();
    // Where each write's answer is: (is a run end, index among the steps or the ends).
    let mut places = Vec::with_capacity(n);
    let (mut steps, mut ends) = (Vec::new(), Vec::new());
    for write in writes {
        match write {
            Write::Step(step) => {
                places.push((false, steps.len()));
                steps.push(step);
            }
            Write::End(end) => {
                places.push((true, ends.len()));
                ends.push(end);
            }
        }
    }
    crate::metrics::CHECKPOINT_BATCH.observe(n as f64);
    let now = shared_models::time::now();
    let written = blocking(&pool, move |conn| {
        storage::write_batch(conn, &steps, &ends, &me, now)
    })
    .await;
    if let Err(e) = &written {
        log::warn!("checkpoint batch failed: {e}");
    }
    let written = written.map(|(steps, ends)| {
        places
            .into_iter()
            .map(|(end, i)| Ok(if end { ends[i] } else { steps[i] }))
            .collect()
    });
    answers(n, written)
}
