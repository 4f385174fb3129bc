//! Publishing jobs to RabbitMQ: persistent messages, publisher confirms, topology declared
//! once per connection. The HTTP layer sees only [`JobPublisher`], and [`publish_jobs`] for
//! jobs whose outbox rows have just committed (single triggers, run control, the batcher).

use crate::dead_letters::DeadLetterChannel;
use crate::storage;
use futures_util::future::{join_all, BoxFuture};
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Connection};
use shared_models::db::{blocking, PgPool};
use shared_models::logctx::{self, LogContext};
use shared_models::queue::{self, Broker, QueueNames, RunJob};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker unreachable: {0}")]
    Unreachable(String),
    #[error("broker refused the message (nack)")]
    Nacked,
    #[error("no confirm from the broker within {0:?}")]
    Timeout(Duration),
}

/// Where jobs go. A failed publish is never fatal to a trigger: the job waits in the outbox.
pub trait JobPublisher: Send + Sync + 'static {
    fn publish<'a>(&'a self, job: &'a RunJob) -> BoxFuture<'a, Result<(), PublishError>>;
    /// Can a publish succeed now? (The broker half of `/readyz`.)
    fn ready(&self) -> BoxFuture<'_, bool>;
    /// A channel on the dead-letter queue, for one redrive of dead letters.
    fn dead_letters(&self) -> BoxFuture<'_, Result<DeadLetterChannel, PublishError>>;
}

/// Timeouts keep a stuck broker (memory alarm, half-open socket) from holding requests.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// During an outage, try to reconnect at most this often instead of on every request.
const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);

struct Link {
    // Lives as long as its channel; the redrive opens channels of its own on it.
    connection: Connection,
    channel: Channel,
}

#[derive(Default)]
struct State {
    link: Option<Arc<Link>>,
    last_attempt: Option<Instant>,
}

pub struct AmqpPublisher {
    broker: Broker,
    names: QueueNames,
    state: Mutex<State>,
}

impl AmqpPublisher {
    /// Does not connect yet: a service starts during a broker outage and recovers after it.
    pub fn new(broker: &Broker, names: QueueNames) -> Self {
        Self {
            broker: broker.clone(),
            names,
            state: Mutex::new(State::default()),
        }
    }

    async fn link(&self) -> Result<Arc<Link>, PublishError> {
        let mut state = self.state.lock().await;
        if let Some(link) = &state.link {
            if link.channel.status().connected() {
                return Ok(link.clone());
            }
            state.link = None;
        }
        if state
            .last_attempt
            .is_some_and(|t| t.elapsed() < RECONNECT_BACKOFF)
        {
            return Err(PublishError::Unreachable("reconnect backing off".into()));
        }
        state.last_attempt = Some(Instant::now());
        let link = tokio::time::timeout(CONNECT_TIMEOUT, self.connect())
            .await
            .map_err(|_| {
                PublishError::Unreachable(format!("no connection within {CONNECT_TIMEOUT:?}"))
            })?
            .map_err(|e| PublishError::Unreachable(e.to_string()))?;
        log::info!(
            "publisher connected to the broker {}; queue {}",
            self.broker.redacted(),
            self.names.jobs
        );
        let link = Arc::new(link);
        state.link = Some(link.clone());
        Ok(link)
    }

    async fn connect(&self) -> Result<Link, lapin::Error> {
        let connection = queue::connect(&self.broker, "thygon-runtime-publisher").await?;
        let channel = queue::confirm_channel(&connection).await?;
        queue::declare_topology(&channel, &self.names).await?;
        Ok(Link {
            connection,
            channel,
        })
    }

    async fn forget(&self, failed: &Arc<Link>) {
        let mut state = self.state.lock().await;
        if state.link.as_ref().is_some_and(|l| Arc::ptr_eq(l, failed)) {
            state.link = None;
        }
    }

    async fn publish_job(&self, job: &RunJob) -> Result<(), PublishError> {
        let link = self.link().await?;
        let props = BasicProperties::default()
            .with_delivery_mode(2) // persistent
            .with_content_type("application/json".into())
            .with_message_id(job.run_id.as_str().into());
        let result = async {
            let confirm = link
                .channel
                .basic_publish(
                    "".into(),
                    self.names.jobs.as_str().into(),
                    BasicPublishOptions::default(),
                    &job.encode(),
                    props,
                )
                .await
                .map_err(|e| PublishError::Unreachable(e.to_string()))?;
            let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
                .await
                .map_err(|_| PublishError::Timeout(CONFIRM_TIMEOUT))?
                .map_err(|e| PublishError::Unreachable(e.to_string()))?;
            if confirmation.is_ack() {
                Ok(())
            } else {
                Err(PublishError::Nacked)
            }
        }
        .await;
        if matches!(
            result,
            Err(PublishError::Unreachable(_) | PublishError::Timeout(_))
        ) {
            self.forget(&link).await;
        }
        result
    }
}

impl JobPublisher for AmqpPublisher {
    fn publish<'a>(&'a self, job: &'a RunJob) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(self.publish_job(job))
    }

    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move { self.link().await.is_ok() })
    }

    fn dead_letters(&self) -> BoxFuture<'_, Result<DeadLetterChannel, PublishError>> {
        Box::pin(async move {
            let link = self.link().await?;
            match DeadLetterChannel::open(&link.connection, &self.names).await {
                Ok(channel) => Ok(channel),
                Err(e) => {
                    self.forget(&link).await;
                    Err(PublishError::Unreachable(e.to_string()))
                }
            }
        })
    }
}

/// Publish jobs whose outbox rows have committed (all at once: their confirms are awaited
/// together), then mark the rows the broker confirmed sent, in one statement. Never fails
/// the request: committed, a job cannot be lost, and what is not marked sent is published by
/// the outbox relay (when the broker returns). Publishing here only saves the relay's delay.
pub(crate) async fn publish_jobs(
    pool: &PgPool,
    publisher: &dyn JobPublisher,
    jobs: &[(i64, &RunJob)],
) {
    if jobs.is_empty() {
        return;
    }
    let confirms = join_all(jobs.iter().map(|(_, job)| publisher.publish(job))).await;
    let mut sent = Vec::with_capacity(jobs.len());
    for ((outbox_id, job), confirm) in jobs.iter().zip(confirms) {
        match confirm {
            Ok(()) => sent.push(*outbox_id),
            Err(e) => in_run_context(&job.run_id, job.request_id.as_deref(), || {
                log::warn!(
                    "run {}: publish failed ({e}); left to the outbox relay",
                    job.run_id
                )
            }),
        }
    }
    if sent.is_empty() {
        return;
    }
    let count = sent.len();
    let sent_at = shared_models::time::now();
    if let Err(e) = blocking(pool, move |conn| {
        storage::mark_outbox_sent(conn, &sent, sent_at)
    })
    .await
    {
        log::warn!(
            "{count} published job(s) not marked sent ({e}); the relay may publish them again"
        );
    }
}

/// Log lines about one run carry its ids, as they would in its request.
pub(crate) fn in_run_context(run_id: &str, request_id: Option<&str>, f: impl FnOnce()) {
    let ctx = LogContext::run(run_id, request_id);
    logctx::sync_scope(Some(ctx), f);
}
