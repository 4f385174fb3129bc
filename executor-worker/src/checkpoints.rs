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
//! A run's last pure step and the run's end go in one write ([`Checkpointer::checkpoint_and_finish`]):
//! the step checkpointed and the run ended in the same transaction, one commit where two were.
//! Either both are written or neither (the lease fences both), so a worker that dies before
//! the commit leaves the run exactly as before its last step.
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
    /// A run's last step and its end, together.
    StepAndEnd(PureStep, RunFinish),
}

/// Where a write's answer is in a batch: its index among the steps, the ends, or both.
#[derive(Clone, Copy)]
enum Place {
    Step(usize),
    End(usize),
    Both(usize, usize),
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

    /// Checkpoint a run's last pure step and end the run, in one transaction; returns once
    /// both are committed, or neither was written (its lease lost, or an error).
    pub async fn checkpoint_and_finish(
        &self,
        step: PureStep,
        end: RunFinish,
    ) -> Result<Fenced, StorageError> {
        debug_assert_eq!(step.record.run_id, end.run_id);
        self.batches.submit(Write::StepAndEnd(step, end)).await
    }
}

/// A batch as the storage function takes it: its steps, its ends, and where each write's
/// answer is among them.
struct Batch {
    steps: Vec<PureStep>,
    ends: Vec<RunFinish>,
    places: Vec<Place>,
}

impl Batch {
    fn new(writes: impl IntoIterator<Item = Write>) -> Self {
        let mut batch = Batch {
            steps: Vec::new(),
            ends: Vec::new(),
            places: Vec::new(),
        };
        for write in writes {
            let place = match write {
                Write::Step(step) => {
                    batch.steps.push(step);
                    Place::Step(batch.steps.len() - 1)
                }
                Write::End(end) => {
                    batch.ends.push(end);
                    Place::End(batch.ends.len() - 1)
                }
                Write::StepAndEnd(step, end) => {
                    batch.steps.push(step);
                    batch.ends.push(end);
                    Place::Both(batch.steps.len() - 1, batch.ends.len() - 1)
                }
            };
            batch.places.push(place);
        }
        batch
    }

    /// The writes again, in their order (copies: only a failed batch is split).
    fn writes(&self, places: &[Place]) -> Vec<Write> {
        places
            .iter()
            .map(|&place| match place {
                Place::Step(i) => Write::Step(self.steps[i].clone()),
                Place::End(i) => Write::End(self.ends[i].clone()),
                Place::Both(i, j) => Write::StepAndEnd(self.steps[i].clone(), self.ends[j].clone()),
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
                .map(|&place| {
                    Ok(match place {
                        Place::Step(i) => steps[i],
                        Place::End(i) => ends[i],
                        // One lease fences both, in one transaction: they cannot differ, but
                        // only both written is an answer of "written".
                        Place::Both(i, j) => match (steps[i], ends[j]) {
                            (Fenced::Written, Fenced::Written) => Fenced::Written,
                            _ => Fenced::LeaseLost,
                        },
                    })
                })
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
