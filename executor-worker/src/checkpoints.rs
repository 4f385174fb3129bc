//! Group commit of claims, pure-step checkpoints and run ends.
//!
//! Every run a worker executes is claimed (one transaction), checkpoints each step before its
//! next step starts (for `transform` steps, pure: computed from the run's context alone, one
//! transaction each) and ends (one more). With many runs in flight, those transactions are
//! batched: each run hands its claim, its computed step or its end to the [`Checkpointer`]
//! and waits for the commit; one task writes everything that is waiting in ONE transaction
//! ([`storage::write_batch`]: a handful of statements whatever the number of runs) and
//! answers each run once it is committed.
//!
//! Guarantees are unchanged: a run never starts its next step before its previous one is
//! committed (it waits for its answer), nor executes anything before its claim is committed;
//! every write is still fenced by the run's lease (a run whose lease was lost gets
//! [`Fenced::LeaseLost`] and nothing of it is written, the rest of the batch is); a failed
//! batch fails each of its members, each run stops with a storage error and its job is
//! retried, exactly as when a single write fails.
//!
//! Nothing waits on a timer: a batch is whatever arrived while the previous one was being
//! committed, so a lone run is written at once (a batch of one) and a busy worker writes
//! many runs per commit.

use crate::engine::GraphCache;
use crate::storage::{self, Batch, Claim, ClaimRequest, Fenced, LeaseHolder, PureStep, RunFinish};
use shared_models::db::{blocking, PgPool, StorageError};
use shared_models::graph::WorkflowGraph;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// At most this many writes per transaction.
pub const MAX_BATCH: usize = 256;

type Reply<T> = oneshot::Sender<Result<T, StorageError>>;

/// A claim, with the compiled graph of its version when this worker has it.
pub type Claimed = (Claim, Option<Arc<WorkflowGraph>>);

/// One write to make, and where its answer goes.
enum Write {
    Claim(ClaimRequest, Reply<Claimed>),
    Step(PureStep, Reply<Fenced>),
    End(RunFinish, Reply<Fenced>),
}

/// The handle runs use; cheap to clone. The writing task ends when every handle is dropped.
#[derive(Clone)]
pub struct Checkpointer {
    tx: mpsc::UnboundedSender<Write>,
}

impl Checkpointer {
    /// Start the writing task (on the current tokio runtime). `graphs`: the compiled
    /// versions this worker has, whose definitions a claim need not read.
    pub fn start(pool: PgPool, me: LeaseHolder, graphs: Arc<GraphCache>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_batches(pool, me, graphs, rx));
        Self { tx }
    }

    /// Claim a run; returns once the claim is committed.
    pub async fn claim(&self, request: ClaimRequest) -> Result<Claimed, StorageError> {
        let (reply, answer) = oneshot::channel();
        self.send(Write::Claim(request, reply), answer).await
    }

    /// Checkpoint one pure step; returns once it is committed (or not written at all).
    pub async fn checkpoint(&self, step: PureStep) -> Result<Fenced, StorageError> {
        let (reply, answer) = oneshot::channel();
        self.send(Write::Step(step, reply), answer).await
    }

    /// End a run; returns once it is committed (or not written at all).
    pub async fn finish(&self, end: RunFinish) -> Result<Fenced, StorageError> {
        let (reply, answer) = oneshot::channel();
        self.send(Write::End(end, reply), answer).await
    }

    async fn send<T>(
        &self,
        write: Write,
        answer: oneshot::Receiver<Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        let stopped = || StorageError::Unavailable("the checkpoint writer has stopped".into());
        self.tx.send(write).map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

async fn write_batches(
    pool: PgPool,
    me: LeaseHolder,
    graphs: Arc<GraphCache>,
    mut rx: mpsc::UnboundedReceiver<Write>,
) {
    let mut waiting = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut waiting, MAX_BATCH).await > 0 {
        let mut batch = Batch::default();
        let (mut claims, mut steps, mut ends) = (Vec::new(), Vec::new(), Vec::new());
        for write in waiting.drain(..) {
            match write {
                Write::Claim(request, reply) => {
                    batch.claims.push(request);
                    claims.push(reply);
                }
                Write::Step(step, reply) => {
                    batch.steps.push(step);
                    steps.push(reply);
                }
                Write::End(end, reply) => {
                    batch.ends.push(end);
                    ends.push(reply);
                }
            }
        }
        crate::metrics::CHECKPOINT_BATCH
            .observe((batch.claims.len() + batch.steps.len() + batch.ends.len()) as f64);
        let (me, now, known) = (me.clone(), shared_models::time::now(), graphs.clone());
        let written = blocking(&pool, move |conn| {
            storage::write_batch(conn, &batch, &me, now, |run| known.get(run).is_some())
        })
        .await;
        match written {
            Ok(out) => {
                for (reply, claim) in claims.into_iter().zip(out.claims) {
                    // The graph again, now: the cache may have been emptied meanwhile (the
                    // engine then reads the definition itself).
                    let graph = match &claim {
                        Claim::Claimed(c) if c.definition.is_none() => graphs.get(&c.run),
                        _ => None,
                    };
                    let _ = reply.send(Ok((claim, graph)));
                }
                for (reply, fenced) in steps.into_iter().zip(out.steps) {
                    let _ = reply.send(Ok(fenced));
                }
                for (reply, fenced) in ends.into_iter().zip(out.ends) {
                    let _ = reply.send(Ok(fenced));
                }
            }
            Err(e) => {
                log::warn!("checkpoint batch failed: {e}");
                for reply in claims {
                    let _ = reply.send(Err(shared(&e)));
                }
                for reply in steps.into_iter().chain(ends) {
                    let _ = reply.send(Err(shared(&e)));
                }
            }
        }
    }
}

/// The batch's error, for each of its members (diesel's errors cannot be cloned).
fn shared(e: &StorageError) -> StorageError {
    match e {
        StorageError::Unavailable(cause) => StorageError::Unavailable(cause.clone()),
        StorageError::Query(cause) => StorageError::Query(
            diesel::result::Error::QueryBuilderError(cause.to_string().into()),
        ),
    }
}
