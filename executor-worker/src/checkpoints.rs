//! Group commit of pure-step checkpoints and run ends.
//!
//! Every run a worker executes checkpoints each step before its next step starts. For
//! `transform` steps (pure: computed from the run's context alone) that checkpoint is one
//! transaction, and so is a run's end; with many runs in flight, those transactions are
//! batched: each run hands its computed step (or its end) to the [`Checkpointer`] and waits
//! for the commit; one task writes everything that is waiting in one transaction
//! (`storage::write_batch`: two statements for the steps and one for the ends, whatever
//! their number) and answers each run once it is committed.
//!
//! Guarantees are unchanged: a run never starts its next step before its previous one is
//! committed (it waits for its answer); every write is still fenced by the run's lease (a
//! run whose lease was lost gets [`Fenced::LeaseLost`] and nothing of it is written, the
//! rest of the batch is). A batch that fails for an outage fails every write in it: each run
//! stops with a storage error and its job is retried, exactly as when a single checkpoint
//! fails. A batch PostgreSQL refuses (a value it cannot store) is split and written again
//! until only the refused write fails; its run then fails (the engine records why), and the
//! others' writes commit.
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

/// A batch as the storage function takes it: its steps, its ends, and where each write's
/// answer is among them (is a run end, index among the steps or the ends).
struct Batch {
    steps: Vec<PureStep>,
    ends: Vec<RunFinish>,
    places: Vec<(bool, usize)>,
}

impl Batch {
    fn new(writes: impl IntoIterator<Item = Write>) -> Self {
        let mut batch = Batch {
            steps: Vec::new(),
            ends: Vec::new(),
            places: Vec::new(),
        };
        for write in writes {
            match write {
                Write::Step(step) => {
                    batch.places.push((false, batch.steps.len()));
                    batch.steps.push(step);
                }
                Write::End(end) => {
                    batch.places.push((true, batch.ends.len()));
                    batch.ends.push(end);
                }
            }
        }
        batch
    }

    /// The writes again, in their order (copies: only a failed batch is split).
    fn writes(&self, places: &[(bool, usize)]) -> Vec<Write> {
        places
            .iter()
            .map(|&(end, i)| {
                if end {
                    Write::End(self.ends[i].clone())
                } else {
                    Write::Step(self.steps[i].clone())
                }
            })
            .collect()
    }
}

/// Whether PostgreSQL refused a write for what it is (a value it cannot store, a constraint),
/// so that the same write would be refused again: not an outage, not a conflict with another
/// transaction (a deadlock, a serialization failure, a cancelled statement), which another
/// try can get past.
pub fn is_refused(e: &StorageError) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    match e {
        StorageError::Unavailable(_) => false,
        StorageError::Query(Error::DatabaseError(DatabaseErrorKind::SerializationFailure, _)) => {
            false
        }
        StorageError::Query(Error::DatabaseError(_, info)) => {
            let m = info.message();
            !(m.contains("deadlock detected") || m.contains("canceling statement"))
        }
        StorageError::Query(_) => true,
    }
}

/// Write one batch in one transaction; the answers in the writes' order. A batch PostgreSQL
/// refuses ([`is_refused`]) is written again in halves, and so on, so that only the write it
/// refuses gets the error and the others commit: one run's bad value must not fail its
/// neighbours' checkpoints (issue 13).
async fn write_batch(
    pool: PgPool,
    me: LeaseHolder,
    writes: Vec<Write>,
) -> Vec<Result<Fenced, StorageError>> {
    crate::metrics::CHECKPOINT_BATCH.observe(writes.len() as f64);
    write_split(pool, me, Batch::new(writes)).await
}

fn write_split(
    pool: PgPool,
    me: LeaseHolder,
    batch: Batch,
) -> futures_util::future::BoxFuture<'static, Vec<Result<Fenced, StorageError>>> {
    Box::pin(async move {
        let n = batch.places.len();
        let now = shared_models::time::now();
        let (who, batch) = (me.clone(), std::sync::Arc::new(batch));
        let writing = batch.clone();
        let written = blocking(&pool, move |conn| {
            storage::write_batch(conn, &writing.steps, &writing.ends, &who, now)
        })
        .await;
        match written {
            Ok((steps, ends)) => batch
                .places
                .iter()
                .map(|&(end, i)| Ok(if end { ends[i] } else { steps[i] }))
                .collect(),
            Err(e) if n > 1 && is_refused(&e) => {
                log::warn!("checkpoint batch of {n} failed ({e}); writing it again in halves");
                let (first, second) = batch.places.split_at(n / 2);
                let (first, second) = (
                    Batch::new(batch.writes(first)),
                    Batch::new(batch.writes(second)),
                );
                let mut answers = write_split(pool.clone(), me.clone(), first).await;
                answers.extend(write_split(pool, me, second).await);
                answers
            }
            // One write keeps its own error (a copy would lose what kind it is).
            Err(e) if n == 1 => {
                log::warn!("checkpoint failed: {e}");
                vec![Err(e)]
            }
            Err(e) => {
                log::warn!("checkpoint batch failed: {e}");
                answers(n, Err(e))
            }
        }
    })
}
