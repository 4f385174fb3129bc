//! The queue side of the worker: consume jobs with a prefetch equal to the concurrency,
//! process each on its own task, and ack only after its effects are committed.
//! Survives broker restarts (reconnect with backoff); on shutdown it stops taking jobs,
//! lets in-flight ones finish within the grace period, and hands back the rest.
//! A poison job is republished to the dead-letter exchange with the reason in its headers
//! ([`DeadLetters`]) before the original is acked.
//! Each job is handled in the log context of its run and request, and counted in the
//! worker's metrics ([`crate::metrics`]).

use crate::dead_letters::{settle_poison, DeadLetters, PoisonSettlement};
use crate::engine::{Engine, JobOutcome};
use crate::metrics::{JOBS_IN_FLIGHT, JOBS_TOTAL};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::FieldTable;
use shared_models::db::blocking;
use shared_models::logctx::{self, LogContext};
use shared_models::queue::{self, Broker, QueueNames, RunJob};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

/// What the health endpoints and ops views read about this worker.
#[derive(Default)]
pub struct WorkerState {
    pub consuming: AtomicBool,
    /// Runs being executed now (their number is `thygon_jobs_in_flight`).
    pub in_flight: Mutex<HashSet<String>>,
}

impl WorkerState {
    pub fn in_flight(&self) -> Vec<String> {
        self.in_flight
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

pub struct Consumer {
    pub broker: Broker,
    pub names: QueueNames,
    pub concurrency: usize,
    pub shutdown_grace: Duration,
    pub engine: Arc<Engine>,
    pub state: Arc<WorkerState>,
}

/// A transient failure (the database away) is retried in this process, the message held
/// unacked, with pauses growing from RETRY_PAUSE to MAX_RETRY_PAUSE, for up to
/// TRANSIENT_RETRY_WINDOW; only then is it requeued. Requeueing at once would spend the
/// queue's delivery limit in seconds and dead-letter jobs during a short outage.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);
const TRANSIENT_RETRY_WINDOW: Duration = Duration::from_secs(120);
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(10);
impl Consumer {
    /// Consume until `shutdown` turns true, then drain.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let mut backoff = Duration::from_millis(250);
        while !*shutdown.borrow() {
            match self.consume(&permits, &mut shutdown).await {
                // `consume` drained before it closed its channel.
                Ok(()) => return,
                Err(e) => {
                    self.state.consuming.store(false, Ordering::SeqCst);
                    log::warn!("broker connection lost ({e}); reconnecting in {backoff:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
                }
            }
        }
        // Shutdown came while no channel was open (reconnecting): jobs of the lost channel
        // may still be running.
        self.state.consuming.store(false, Ordering::SeqCst);
        self.drain(&permits).await;
    }

    async fn consume(
        &self,
        permits: &Arc<Semaphore>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), String> {
        let e = |e: lapin::Error| e.to_string();
        let connection = queue::connect(
            &self.broker,
            &format!("thygon-worker-{}", self.engine.me.worker_id),
        )
        .await
        .map_err(e)?;
        let channel = connection.create_channel().await.map_err(e)?;
        queue::declare_topology(&channel, &self.names)
            .await
            .map_err(e)?;
        let dead_letters = Arc::new(
            DeadLetters::open(
                &connection,
                &self.names.dead_letter_exchange,
                &self.engine.me.worker_id,
            )
            .await
            .map_err(e)?,
        );
        channel
            .basic_qos(
                self.concurrency.min(u16::MAX as usize) as u16,
                BasicQosOptions::default(),
            )
            .await
            .map_err(e)?;
        let mut deliveries = channel
            .basic_consume(
                self.names.jobs.as_str().into(),
                self.engine.me.worker_id.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(e)?;
        self.state.consuming.store(true, Ordering::SeqCst);
        log::info!(
            "consuming {} on {} with concurrency {}",
            self.names.jobs,
            self.broker.redacted(),
            self.concurrency
        );
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return Ok(()) },
                _ = shutdown.changed() => break,
            };
            let delivery = tokio::select! {
                d = deliveries.next() => d,
                _ = shutdown.changed() => break,
            };
            match delivery {
                Some(Ok(delivery)) => {
                    let (engine, state) = (self.engine.clone(), self.state.clone());
                    let dead_letters = dead_letters.clone();
                    tokio::spawn(async move {
                        handle(&engine, &state, &dead_letters, delivery).await;
                        drop(permit);
                    });
                }
                Some(Err(err)) => return Err(err.to_string()),
                None => return Err("the broker cancelled the consumer".into()),
            }
        }
        // Shutdown, in this order: take no more deliveries; let in-flight jobs finish and ack
        // on this still-open channel (or hand their runs back); only then close, so the
        // broker requeues what is unsettled after its lease was released.
        self.state.consuming.store(false, Ordering::SeqCst);
        let tag = self.engine.me.worker_id.as_str().into();
        if let Err(e) = channel
            .basic_cancel(tag, BasicCancelOptions::default())
            .await
        {
            log::warn!("could not cancel the consumer: {e}");
        }
        self.drain(permits).await;
        dead_letters.close().await;
        let _ = channel.close(200, "worker shutting down".into()).await;
        let _ = connection.close(200, "worker shutting down".into()).await;
        Ok(())
    }

    /// Wait for in-flight jobs up to the grace period; hand back what is still running by
    /// ending its lease, so the redelivered job is taken over at once.
    async fn drain(&self, permits: &Arc<Semaphore>) {
        let all = self.concurrency.min(u32::MAX as usize) as u32;
        if tokio::time::timeout(self.shutdown_grace, permits.acquire_many(all))
            .await
            .is_ok()
        {
            log::info!("all in-flight jobs finished");
            return;
        }
        let left = self.state.in_flight();
        log::warn!("grace period over; handing back {} run(s)", left.len());
        for run_id in left {
            let me = self.engine.me.clone();
            let now = shared_models::time::now();
            if let Err(e) = blocking(&self.engine.pool, move |conn| {
                crate::storage::release_lease(conn, &run_id, &me, now)
            })
            .await
            {
                log::warn!("could not hand back a run: {e}");
            }
        }
    }
}

/// Process a job, trying again while the failure is transient (see [`TRANSIENT_RETRY_WINDOW`]);
/// with the `outcome` label of `thygon_jobs_total`.
async fn process_through_outages(engine: &Engine, job: &RunJob) -> (JobOutcome, &'static str) {
    let started = std::time::Instant::now();
    let mut pause = RETRY_PAUSE;
    loop {
        match engine.process_detailed(job).await {
            (JobOutcome::Retry(reason), _) if started.elapsed() < TRANSIENT_RETRY_WINDOW => {
                log::warn!(
                    "run {}: transient failure ({reason}); trying again in {pause:?}",
                    job.run_id
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RETRY_PAUSE);
            }
            outcome => return outcome,
        }
    }
}

/// Track the runs being executed: the set, and its size as `thygon_jobs_in_flight`.
fn track_in_flight(state: &WorkerState, edit: impl FnOnce(&mut HashSet<String>) -> bool) -> bool {
    match state.in_flight.lock() {
        Ok(mut s) => {
            let changed = edit(&mut s);
            JOBS_IN_FLIGHT.set(s.len() as i64);
            changed
        }
        Err(_) => true,
    }
}

async fn handle(
    engine: &Engine,
    state: &WorkerState,
    dead_letters: &DeadLetters,
    delivery: Delivery,
) {
    let job = RunJob::decode(&delivery.data);
    let ctx = match &job {
        Ok(job) => LogContext::run(&job.run_id, job.request_id.as_deref()),
        Err(_) => LogContext::default(),
    };
    logctx::scope(ctx, handle_job(engine, state, dead_letters, delivery, job)).await
}

async fn handle_job(
    engine: &Engine,
    state: &WorkerState,
    dead_letters: &DeadLetters,
    delivery: Delivery,
    job: Result<RunJob, String>,
) {
    let (outcome, label) = match job {
        Err(e) => (JobOutcome::Poison(e), "poison"),
        Ok(job) => {
            // After a reconnect the broker redelivers this worker's unsettled jobs to it while
            // the first tasks may still run them; the claim would accept them (same worker),
            // so they are recognised here and settled as duplicates.
            let first = track_in_flight(state, |s| s.insert(job.run_id.clone()));
            if first {
                let outcome = process_through_outages(engine, &job).await;
                track_in_flight(state, |s| s.remove(&job.run_id));
                outcome
            } else {
                log::info!(
                    "run {}: already executing in this worker; duplicate delivery",
                    job.run_id
                );
                (JobOutcome::Done, "duplicate")
            }
        }
    };
    JOBS_TOTAL.with_label_values(&[label]).inc();
    let settled = match outcome {
        JobOutcome::Done => delivery.ack(BasicAckOptions::default()).await,
        JobOutcome::Poison(reason) => {
            match settle_poison(dead_letters.publish(&delivery, &reason).await) {
                PoisonSettlement::Ack => {
                    log::error!("dead-lettered a job: {reason}");
                    delivery.ack(BasicAckOptions::default()).await
                }
                PoisonSettlement::Reject(e) => {
                    log::error!(
                        "dead-lettering a job without its reason ({reason}): the copy with it was not taken ({e})"
                    );
                    delivery.reject(BasicRejectOptions { requeue: false }).await
                }
            }
        }
        JobOutcome::Retry(reason) => {
            log::warn!("job will be retried: {reason}");
            tokio::time::sleep(RETRY_PAUSE).await;
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
        }
    };
    // Not settled means the channel is gone: the broker redelivers the message, and the
    // claim of the run makes that safe.
    match settled {
        Ok(true) => {}
        Ok(false) => {
            log::warn!("could not settle a delivery: the channel is closed; it will be redelivered")
        }
        Err(e) => log::warn!("could not settle a delivery: {e}"),
    }
}
