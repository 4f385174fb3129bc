//! Group commit of triggers: the runs of concurrent trigger requests are written together,
//! in two statements (the workflows' versions read, then the runs and their outbox rows
//! inserted by one statement, one commit), instead of one transaction (and two commits) each.
//!
//! A request hands its validated trigger ([`PlainTrigger`]) to the batching task through a
//! channel ([`Batcher::submit`]) and waits for its answer. The task takes the first trigger
//! waiting, then every other one already queued (at most [`MAX_BATCH`]), and writes them
//! with [`storage::create_runs`]. It never waits for more to come: a trigger alone is
//! written at once, as before, and batches grow only with the load.
//!
//! What each request is guaranteed, exactly as on the single path (`storage::create_run`,
//! then `publish_committed`):
//! - Its outcome is its own: `Created`, or `WorkflowNotFound` / `WorkflowInactive` for its
//!   workflow, or `QuotaExceeded` when its org's `maxQueuedRuns` leaves no room for it (each
//!   org of a batch is counted once, and only as many of its triggers as fit are written;
//!   `storage::create_runs`). Another trigger's missing or inactive workflow is not an error of the batch.
//!   If the batch's write fails with a query error (one trigger might be the cause),
//!   each trigger of the batch is written again alone, so only a trigger that fails alone
//!   gets an error. If the database is unavailable, every trigger of the batch gets that
//!   error (a 503).
//! - Its run and the run's outbox row commit together, or neither does.
//! - After the commit its job is published (every job of the batch at once: the publisher
//!   confirms are awaited together), every confirmed outbox row is marked sent in one
//!   statement, and only then is the request answered: a 201 means the job is confirmed by
//!   the broker and its row is marked sent. A failed publish leaves the row unsent for the
//!   outbox relay; the request still gets its 201 (the run is committed).
//! - Its run id and `created_at` are made by `runs::pending_run`, from the time the request
//!   arrived.
//!
//! Triggers with an Idempotency-Key keep the single path (their replay lookup and key race
//! belong to one request at a time).
//!
//! Up to [`MAX_IN_FLIGHT`] batches are written at once, so one batch's publishing overlaps
//! the next one's transaction.

use crate::publisher::{publish_jobs, JobPublisher};
use crate::storage::{self, CreateOutcome, PlainTrigger, QueuedCounts};
use prometheus::{register_histogram, Histogram};
use shared_models::db::{blocking, PgPool, StorageError};
use shared_models::queue::RunJob;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// The most triggers written in one transaction.
pub(crate) const MAX_BATCH: usize = 128;
/// The most batches being written or published at once (each takes a pooled connection
/// while it writes, and again while it marks its rows sent): one batch publishes while the
/// next one writes. Measured with 32 clients: 1 does worse than 2 and 4, which do alike
/// against runtime-service alone; on the bench (workers busy too) 4 did a little better.
pub(crate) const MAX_IN_FLIGHT: usize = 4;
/// Triggers that may wait for the batching task; more make their requests wait to enqueue.
const QUEUE_CAPACITY: usize = 4096;

/// `thygon_trigger_batch_size`: how many triggers each batch wrote (its count is the number
/// of batch transactions).
pub(crate) static BATCH_SIZE: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "thygon_trigger_batch_size",
        "Triggers written by each group-commit transaction",
        vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]
    )
    .expect("register thygon_trigger_batch_size")
});

type Answer = Result<CreateOutcome, StorageError>;

struct Waiting {
    trigger: PlainTrigger,
    reply: oneshot::Sender<Answer>,
}

/// The requests' side: cheap to clone, shared by every HTTP worker.
#[derive(Clone)]
pub struct Batcher {
    queue: mpsc::Sender<Waiting>,
    counters: Arc<Counters>,
}

/// What one batcher has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Batch transactions begun.
    pub batches: u64,
    /// Triggers taken into them.
    pub triggers: u64,
    /// The largest batch.
    pub largest: u64,
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    triggers: AtomicU64,
    largest: AtomicU64,
}

impl Counters {
    fn record(&self, size: usize) {
        let size = size as u64;
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.triggers.fetch_add(size, Ordering::Relaxed);
        self.largest.fetch_max(size, Ordering::Relaxed);
        BATCH_SIZE.observe(size as f64);
    }
}

/// The batching task; [`BatchLoop::run`] until every [`Batcher`] is dropped (or the task is
/// aborted at shutdown, once the server has answered every request).
pub struct BatchLoop {
    queue: mpsc::Receiver<Waiting>,
    pool: PgPool,
    publisher: Arc<dyn JobPublisher>,
    counters: Arc<Counters>,
    /// Each org's last queued-runs count, shared by the batches (`maxQueuedRuns`).
    queued: Arc<QueuedCounts>,
    max_batch: usize,
    max_in_flight: usize,
}

impl Batcher {
    /// A batcher writing with `pool` and publishing with `publisher`, at most [`MAX_BATCH`]
    /// triggers a batch and [`MAX_IN_FLIGHT`] batches at once. Nothing is written until the
    /// returned loop runs.
    pub(crate) fn new(pool: PgPool, publisher: Arc<dyn JobPublisher>) -> (Self, BatchLoop) {
        Self::with_limits(pool, publisher, MAX_BATCH, MAX_IN_FLIGHT)
    }

    /// [`Batcher::new`] with other limits (each at least 1).
    pub fn with_limits(
        pool: PgPool,
        publisher: Arc<dyn JobPublisher>,
        max_batch: usize,
        max_in_flight: usize,
    ) -> (Self, BatchLoop) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        let batcher = Self {
            queue: tx,
            counters: counters.clone(),
        };
        let task = BatchLoop {
            queue: rx,
            pool,
            publisher,
            counters,
            queued: Arc::default(),
            max_batch: max_batch.max(1),
            max_in_flight: max_in_flight.max(1),
        };
        (batcher, task)
    }

    /// Write `trigger`'s run with whatever else is waiting; answers once the run's job is
    /// published and its outbox row marked sent (or left to the relay if the publish failed).
    /// The outcome is the one `storage::create_run` would give this trigger alone.
    pub async fn submit(&self, trigger: PlainTrigger) -> Result<CreateOutcome, StorageError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Waiting { trigger, reply })
            .await
            .map_err(|_| stopped())?;
        // Dropped unanswered only if its batch task died: nothing is known of the run then.
        answer.await.map_err(|_| {
            StorageError::Unavailable("the trigger's batch ended without an answer".into())
        })?
    }

    /// Triggers queued and not yet taken into a batch.
    pub fn waiting(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    pub fn stats(&self) -> BatchStats {
        BatchStats {
            batches: self.counters.batches.load(Ordering::Relaxed),
            triggers: self.counters.triggers.load(Ordering::Relaxed),
            largest: self.counters.largest.load(Ordering::Relaxed),
        }
    }
}

fn stopped() -> StorageError {
    StorageError::Unavailable("the trigger batcher has stopped".into())
}

impl BatchLoop {
    /// Take batches until every [`Batcher`] is gone. Each batch is written by a task of its
    /// own, so a batch being published does not hold back the next transaction.
    pub async fn run(mut self) {
        let slots = Arc::new(Semaphore::new(self.max_in_flight));
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            // Whatever is waiting now, without waiting for more.
            let Some(first) = self.queue.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < self.max_batch {
                match self.queue.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            self.counters.record(batch.len());
            let (pool, publisher, queued) = (
                self.pool.clone(),
                self.publisher.clone(),
                self.queued.clone(),
            );
            tokio::spawn(async move {
                write_batch(&pool, publisher.as_ref(), &queued, batch).await;
                drop(slot);
            });
        }
    }
}

/// Write, publish, mark sent, answer: see the module's documentation.
async fn write_batch(
    pool: &PgPool,
    publisher: &dyn JobPublisher,
    queued: &Arc<QueuedCounts>,
    batch: Vec<Waiting>,
) {
    let (triggers, replies): (Vec<_>, Vec<_>) =
        batch.into_iter().map(|w| (w.trigger, w.reply)).unzip();
    let outcomes = write(pool, queued, triggers).await;
    publish(pool, publisher, &outcomes).await;
    for (reply, outcome) in replies.into_iter().zip(outcomes) {
        // The request may have gone (client disconnected): its run stands all the same.
        let _ = reply.send(outcome);
    }
}

/// One outcome per trigger, in order.
async fn write(
    pool: &PgPool,
    queued: &Arc<QueuedCounts>,
    triggers: Vec<PlainTrigger>,
) -> Vec<Answer> {
    let triggers = Arc::new(triggers);
    let (all, known) = (triggers.clone(), queued.clone());
    let written = blocking(pool, move |conn| storage::create_runs(conn, &all, &known)).await;
    match written {
        Ok(outcomes) => outcomes
            .into_iter()
            .map(|o| o.map_err(StorageError::from))
            .collect(),
        Err(StorageError::Unavailable(cause)) => triggers
            .iter()
            .map(|_| Err(StorageError::Unavailable(cause.clone())))
            .collect(),
        Err(e) if triggers.len() == 1 => vec![Err(e)],
        Err(e) => {
            // Perhaps one trigger's doing: each alone, so only a trigger that fails alone fails.
            log::warn!(
                "a batch of {} triggers failed ({e}); writing each alone",
                triggers.len()
            );
            let mut outcomes = Vec::with_capacity(triggers.len());
            for trigger in triggers.iter() {
                if let Some(Err(StorageError::Unavailable(cause))) = outcomes.last() {
                    let cause = cause.clone();
                    outcomes.push(Err(StorageError::Unavailable(cause)));
                    continue;
                }
                let (one, known) = ([trigger.clone()], queued.clone());
                let written =
                    blocking(pool, move |conn| storage::create_runs(conn, &one, &known)).await;
                outcomes.push(match written {
                    Ok(mut outcome) => outcome
                        .pop()
                        .unwrap_or(Err(diesel::result::Error::NotFound))
                        .map_err(StorageError::from),
                    Err(e) => Err(e),
                });
            }
            outcomes
        }
    }
}

/// Publish the jobs of the runs created and mark them sent (see
/// [`publish_jobs`]).
async fn publish(pool: &PgPool, publisher: &dyn JobPublisher, outcomes: &[Answer]) {
    let created: Vec<(i64, &RunJob)> = outcomes
        .iter()
        .filter_map(|outcome| match outcome {
            Ok(CreateOutcome::Created { job, outbox_id, .. }) => Some((*outbox_id, job)),
            _ => None,
        })
        .collect();
    publish_jobs(pool, publisher, &created).await;
}
