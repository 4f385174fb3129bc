//! Group commit of pure-step checkpoints and run ends.
//!
//! Every run a worker executes checkpoints each step before its next step starts. For
//! `transform` steps (pure: computed from the run's context alone) that checkpoint is one
//! transaction, and so is a run's end; with many runs in flight, those transactions are
//! batched: each run hands its computed step (or its end) to the [`Checkpointer`] and waits
//! for the commit; one task writes everything that is waiting in one transaction
//! ([`storage::write_batch`]: four statements for the steps and two for the ends, whatever
//! their number) and answers each run once it is committed.
//!
//! Guarantees are unchanged: a run never starts its next step before its previous one is
//! committed (it waits for its answer); every write is still fenced by the run's lease (a
//! run whose lease was lost gets [`Fenced::LeaseLost`] and nothing of it is written, the
//! rest of the batch is); a failed batch fails every step in it, each run stops with a
//! storage error and its job is retried, exactly as when a single checkpoint fails.
//!
//! Nothing waits on a timer: a batch is whatever arrived while the previous one was being
//! committed, so a lone run is written at once (a batch of one) and a busy worker writes
//! many runs per commit.

use crate::storage::{self, Fenced, LeaseHolder, PureStep, RunFinish};
use shared_models::db::{blocking, PgPool, StorageError};
use tokio::sync::{mpsc, oneshot};

/// At most this many steps per transaction.
pub const MAX_BATCH: usize = 256;

type Reply = oneshot::Sender<Result<Fenced, StorageError>>;

/// One write to make.
enum Write {
    Step(PureStep),
    End(RunFinish),
}

/// The handle runs use; cheap to clone. The writing task ends when every handle is dropped.
#[derive(Clone)]
pub struct Checkpointer {
    tx: mpsc::UnboundedSender<(Write, Reply)>,
}

impl Checkpointer {
    /// Start the writing task (on the current tokio runtime).
    pub fn start(pool: PgPool, me: LeaseHolder) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_batches(pool, me, rx));
        Self { tx }
    }

    /// Checkpoint one pure step; returns once it is committed (or not written at all).
    pub async fn checkpoint(&self, step: PureStep) -> Result<Fenced, StorageError> {
        self.write(Write::Step(step)).await
    }

    /// End a run; returns once it is committed (or not written at all).
    pub async fn finish(&self, end: RunFinish) -> Result<Fenced, StorageError> {
        self.write(Write::End(end)).await
    }

    async fn write(&self, write: Write) -> Result<Fenced, StorageError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((write, reply))
            .map_err(|_| StorageError::Unavailable("the checkpoint writer has stopped".into()))?;
        answer.await.unwrap_or_else(|_| {
            Err(StorageError::Unavailable(
                "the checkpoint writer has stopped".into(),
            ))
        })
    }
}

async fn write_batches(
    pool: PgPool,
    me: LeaseHolder,
    mut rx: mpsc::UnboundedReceiver<(Write, Reply)>,
) {
    let mut waiting = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut waiting, MAX_BATCH).await > 0 {
        let (mut steps, mut ends) = (Vec::new(), Vec::new());
        let (mut step_replies, mut end_replies) = (Vec::new(), Vec::new());
        for (write, reply) in waiting.drain(..) {
            match write {
                Write::Step(step) => {
                    steps.push(step);
                    step_replies.push(reply);
                }
                Write::End(end) => {
                    ends.push(end);
                    end_replies.push(reply);
                }
            }
        }
        crate::metrics::CHECKPOINT_BATCH.observe((steps.len() + ends.len()) as f64);
        let (me, now) = (me.clone(), shared_models::time::now());
        let written = blocking(&pool, move |conn| {
            storage::write_batch(conn, &steps, &ends, &me, now)
        })
        .await;
        let replies = step_replies.into_iter().chain(end_replies);
        match written {
            Ok((steps, ends)) => {
                for (reply, f) in replies.zip(steps.into_iter().chain(ends)) {
                    let _ = reply.send(Ok(f));
                }
            }
            Err(e) => {
                log::warn!("checkpoint batch failed: {e}");
                for reply in replies {
                    let _ = reply.send(Err(shared(&e)));
                }
            }
        }
    }
}

/// The batch's error, for each of its steps (diesel's errors cannot be cloned).
fn shared(e: &StorageError) -> StorageError {
    match e {
        StorageError::Unavailable(cause) => StorageError::Unavailable(cause.clone()),
        StorageError::Query(cause) => StorageError::Query(
            diesel::result::Error::QueryBuilderError(cause.to_string().into()),
        ),
    }
}
