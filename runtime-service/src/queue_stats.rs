//! The queues as operators see them (`GET /ops/queues`): a background sampler that, every
//! `OPS_SAMPLE_SECONDS`, asks the broker for the job queue's and the dead-letter queue's
//! message and consumer counts (a passive `queue.declare`, which creates nothing, over a
//! connection of its own), reads the age of the oldest due PENDING run and the counts of
//! runs queued again and dead letters redriven (`ops_counters`) from the database,
//! keeps the latest numbers and an hour of history in memory, and sets the Prometheus gauges
//! `thygon_queue_messages{queue}` and `thygon_queue_consumers{queue}` (the oldest pending
//! run's gauge is [`crate::metrics`]'s, read on its own interval).
//!
//! Each replica samples on its own; the numbers are the broker's, so every replica shows the
//! same ones. When the broker cannot be reached, the last known numbers stay, marked
//! unreachable.

use chrono::{DateTime, Utc};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::Connection;
use prometheus::{register_int_gauge_vec, IntGaugeVec};
use shared_models::db::{blocking, PgPool};
use shared_models::queue::{self, Broker, QueueNames};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

/// How much history each queue keeps.
pub(crate) const HISTORY_WINDOW: Duration = Duration::from_secs(60 * 60);
/// The longest one broker round (connect, or one passive declare) may take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(3);

static QUEUE_MESSAGES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "thygon_queue_messages",
        "Messages in the queue (ready and unacknowledged), as last sampled by runtime-service",
        &["queue"]
    )
    .expect("register thygon_queue_messages")
});

static QUEUE_CONSUMERS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "thygon_queue_consumers",
        "Consumers of the queue, as last sampled by runtime-service",
        &["queue"]
    )
    .expect("register thygon_queue_consumers")
});

/// What the queue is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    Jobs,
    DeadLetter,
}

impl QueueKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            QueueKind::Jobs => "jobs",
            QueueKind::DeadLetter => "dead-letter",
        }
    }
}

/// One sample of one queue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub at: DateTime<Utc>,
    pub messages: u32,
    pub consumers: u32,
}

/// What is known of one queue.
#[derive(Debug, Clone)]
pub struct QueueState {
    pub name: String,
    pub kind: QueueKind,
    /// The last successful sample, if any.
    pub latest: Option<Point>,
    /// Whether the queue existed at the last successful broker round (a passive declare of a
    /// queue no one declared yet answers NOT_FOUND: it is shown with 0 messages).
    pub exists: bool,
    /// Successful samples of the last [`HISTORY_WINDOW`], oldest first.
    pub history: VecDeque<Point>,
}

/// Everything the sampler knows; `GET /ops/queues` reads it.
#[derive(Debug, Clone)]
pub struct QueueStats {
    pub queues: Vec<QueueState>,
    /// Whether the last broker round succeeded.
    pub reachable: bool,
    /// When the sampler last tried (successfully or not).
    pub attempted_at: Option<DateTime<Utc>>,
    /// Seconds since the oldest due PENDING run was created (0 when none), as last read.
    pub oldest_pending_run_age_seconds: Option<f64>,
    /// The deployment's counts (`ops_counters`, by name), as last read.
    pub counters: Option<HashMap<String, i64>>,
    pub sample_interval: Duration,
}

impl QueueStats {
    /// Nothing sampled yet.
    pub(crate) fn new(names: &QueueNames, sample_interval: Duration) -> Self {
        let queue = |name: &str, kind| QueueState {
            name: name.to_string(),
            kind,
            latest: None,
            exists: false,
            history: VecDeque::new(),
        };
        Self {
            queues: vec![
                queue(&names.jobs, QueueKind::Jobs),
                queue(&names.dead_letter_queue, QueueKind::DeadLetter),
            ],
            reachable: false,
            attempted_at: None,
            oldest_pending_run_age_seconds: None,
            counters: None,
            sample_interval,
        }
    }

    /// Whether any broker sample ever succeeded.
    pub(crate) fn ever_sampled(&self) -> bool {
        self.queues.iter().any(|q| q.latest.is_some())
    }

    /// Record one queue's numbers, dropping history older than [`HISTORY_WINDOW`].
    fn record(&mut self, at: usize, point: Point, exists: bool) {
        let q = &mut self.queues[at];
        q.latest = Some(point);
        q.exists = exists;
        q.history.push_back(point);
        let window = chrono::Duration::from_std(HISTORY_WINDOW).unwrap_or(chrono::Duration::MAX);
        while q.history.front().is_some_and(|p| point.at - p.at > window) {
            q.history.pop_front();
        }
    }
}

pub(crate) type SharedQueueStats = Arc<RwLock<QueueStats>>;

/// The sampler: owns its broker connection (reconnecting after a failure) and writes
/// [`QueueStats`].
pub struct Sampler {
    broker: Broker,
    pool: PgPool,
    interval: Duration,
    stats: SharedQueueStats,
    connection: Option<Connection>,
}

/// What one passive declare found.
enum Found {
    Queue { messages: u32, consumers: u32 },
    Missing,
}

impl Sampler {
    pub fn new(broker: &Broker, names: &QueueNames, pool: PgPool, interval: Duration) -> Self {
        let interval = interval.max(Duration::from_millis(100));
        Self {
            broker: broker.clone(),
            pool,
            interval,
            stats: Arc::new(RwLock::new(QueueStats::new(names, interval))),
            connection: None,
        }
    }

    /// The numbers this sampler writes, for the HTTP layer.
    pub fn stats(&self) -> SharedQueueStats {
        self.stats.clone()
    }

    /// Sample now and every interval, for ever (the task is aborted at shutdown).
    pub async fn run(mut self) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.sample_once().await;
        }
    }

    /// One round: the broker's numbers for both queues and the database's oldest due run.
    pub async fn sample_once(&mut self) {
        let names: Vec<String> = self.read().queues.iter().map(|q| q.name.clone()).collect();
        let mut found = Vec::with_capacity(names.len());
        let mut failure = None;
        for name in &names {
            match self.declare_passive(name).await {
                Ok(f) => found.push(f),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let oldest = self.oldest_pending_age().await;
        let counters = self.counters().await;
        let at = shared_models::time::now();

        let mut stats = self.stats.write().unwrap_or_else(|e| e.into_inner());
        stats.attempted_at = Some(at);
        if let Some(age) = oldest {
            stats.oldest_pending_run_age_seconds = Some(age);
        }
        if counters.is_some() {
            stats.counters = counters;
        }
        match failure {
            Some(e) => {
                if stats.reachable || !stats.ever_sampled() {
                    log::warn!(
                        "queue sampler: broker unreachable ({e}); showing the last known numbers"
                    );
                }
                stats.reachable = false;
            }
            None => {
                if !stats.reachable && stats.ever_sampled() {
                    log::info!("queue sampler: broker reachable again");
                }
                stats.reachable = true;
                for (i, (name, f)) in names.iter().zip(found).enumerate() {
                    let (messages, consumers, exists) = match f {
                        Found::Queue {
                            messages,
                            consumers,
                        } => (messages, consumers, true),
                        Found::Missing => (0, 0, false),
                    };
                    QUEUE_MESSAGES
                        .with_label_values(&[name.as_str()])
                        .set(i64::from(messages));
                    QUEUE_CONSUMERS
                        .with_label_values(&[name.as_str()])
                        .set(i64::from(consumers));
                    stats.record(
                        i,
                        Point {
                            at,
                            messages,
                            consumers,
                        },
                        exists,
                    );
                }
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, QueueStats> {
        self.stats.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A passive declare on a channel of its own (a NOT_FOUND closes the channel, never the
    /// connection). A connection that failed is dropped, and made again on the next call.
    async fn declare_passive(&mut self, name: &str) -> Result<Found, String> {
        let result = tokio::time::timeout(BROKER_TIMEOUT, self.try_declare(name))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {BROKER_TIMEOUT:?}")));
        if result.is_err() {
            if let Some(c) = self.connection.take() {
                let _ =
                    tokio::time::timeout(BROKER_TIMEOUT, c.close(200, "reconnect".into())).await;
            }
        }
        result
    }

    async fn try_declare(&mut self, name: &str) -> Result<Found, String> {
        if !self
            .connection
            .as_ref()
            .is_some_and(|c| c.status().connected())
        {
            self.connection = None;
            let c = queue::connect(&self.broker, "thygon-runtime-queue-sampler")
                .await
                .map_err(|e| e.to_string())?;
            self.connection = Some(c);
        }
        let connection = self.connection.as_ref().ok_or("no connection")?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        let declared = channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(q) => {
                let _ = channel.close(200, "sampled".into()).await;
                Ok(Found::Queue {
                    messages: q.message_count(),
                    consumers: q.consumer_count(),
                })
            }
            Err(e) if is_not_found(&e) => Ok(Found::Missing),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Seconds since the oldest PENDING run that is due (no later `wake_at`) was created; 0
    /// when there is none; `None` when the database cannot say.
    async fn oldest_pending_age(&self) -> Option<f64> {
        let oldest = blocking(&self.pool, |conn| {
            crate::storage::oldest_due_pending(conn, Utc::now())
        })
        .await;
        match oldest {
            Ok(None) => Some(0.0),
            Ok(Some(t)) => {
                let age = (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0;
                Some(age)
            }
            Err(e) => {
                log::warn!("queue sampler: cannot read the oldest pending run: {e}");
                None
            }
        }
    }

    /// The deployment's counts; `None` when the database cannot say.
    async fn counters(&self) -> Option<HashMap<String, i64>> {
        match blocking(&self.pool, crate::storage::counters::read_all).await {
            Ok(counts) => Some(counts),
            Err(e) => {
                log::warn!("queue sampler: cannot read the ops counters: {e}");
                None
            }
        }
    }
}

/// Whether a declare failed because the queue does not exist (AMQP 404 NOT_FOUND).
fn is_not_found(e: &lapin::Error) -> bool {
    let text = e.to_string();
    text.contains("NOT_FOUND") || text.contains("NotFound") || text.contains("no queue")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keeps_one_hour() {
        let names = QueueNames::new("t");
        let mut stats = QueueStats::new(&names, Duration::from_secs(5));
        assert!(!stats.ever_sampled());
        let start = Utc::now();
        for minute in 0..=90 {
            let at = start + chrono::Duration::minutes(minute);
            stats.record(
                0,
                Point {
                    at,
                    messages: minute as u32,
                    consumers: 1,
                },
                true,
            );
        }
        let q = &stats.queues[0];
        assert!(stats.ever_sampled());
        assert_eq!(q.latest.unwrap().messages, 90);
        assert_eq!(q.history.len(), 61);
        assert_eq!(q.history.front().unwrap().messages, 30);
        assert!(stats.queues[1].latest.is_none());
        assert_eq!(stats.queues[1].kind.as_str(), "dead-letter");
    }
}
