use shared_models::auth::AuthConfig;
use shared_models::config::{env_or, env_parse, env_seconds, CommonConfig};
use std::time::Duration;

/// This process's share of the connection budget (`DB_POOL_SIZE`; docs/DEPLOY.md "Sizing").
/// Trigger batches, the outbox relay, the reaper and the API share these.
pub(crate) const DEFAULT_DB_POOL_SIZE: u32 = 8;

#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonConfig,
    /// `ADMIN_API_KEY`, `RATE_LIMIT_PER_SECOND`.
    pub auth: AuthConfig,
    /// Where this service listens (`HTTP_ADDR`, default 127.0.0.1:8082).
    pub http_addr: String,
    /// How often the outbox relay looks for unpublished jobs (`OUTBOX_RELAY_INTERVAL_SECONDS`).
    pub relay_interval: Duration,
    /// How long a job may sit unpublished before the relay takes it from the request path
    /// (`OUTBOX_RELAY_GRACE_SECONDS`).
    pub relay_grace: Duration,
    /// How often the scheduler queues jobs for WAITING runs whose wake-up time has come
    /// (`SCHEDULER_INTERVAL_SECONDS`): the lateness of a delay's end is at most this plus the
    /// relay interval.
    pub scheduler_interval: Duration,
    /// How long past its `lease_expires_at` a RUNNING run's worker is taken for gone, and the
    /// scheduler's lease reaper queues a new job for it (`REAPER_GRACE_SECONDS`). The grace
    /// lets the broker's own redelivery of a dead worker's job come first.
    pub reaper_grace: Duration,
    /// How often the queue sampler of `GET /ops/queues` asks the broker (`OPS_SAMPLE_SECONDS`).
    pub ops_sample_interval: Duration,
    /// The workers' heartbeat interval (`WORKER_HEARTBEAT_SECONDS`, as the workers read it):
    /// `GET /ops/workers` calls a worker live while its last beat is at most three old.
    pub worker_heartbeat: Duration,
    /// How long a sent outbox row is kept before the scheduler deletes it
    /// (`OUTBOX_RETENTION_SECONDS`, default 3600).
    pub outbox_retention: Duration,
    /// The PENDING sweeper (`PENDING_REQUEUE_SECONDS`, `PENDING_REQUEUE_BATCH`); `None` when
    /// turned off (`PENDING_REQUEUE_SECONDS=0`).
    pub pending_requeue: Option<PendingRequeue>,
    /// The longest an event stream stays open (`EVENT_STREAM_MAX_SECONDS`, default 3600); it
    /// then ends with a `reconnect` event whose id the client resumes from.
    pub event_stream_max: Duration,
    /// How often the gauges of the runs and the outbox are read from the database
    /// (`METRICS_REFRESH_SECONDS`, default 15): a scrape shows the last read, never reads.
    pub metrics_refresh: Duration,
    /// Which background tasks [`crate::startup::Application::build`] starts (all, from the
    /// environment); a test that drives one itself turns it off.
    pub tasks: Tasks,
}

/// The background tasks of the runtime service besides the server and the trigger batcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tasks {
    /// The outbox relay (`relay`).
    pub relay: bool,
    /// The wake-up scheduler, lease reaper, PENDING sweeper and outbox pruning (`scheduler`).
    pub scheduler: bool,
    /// The queue sampler of `GET /ops/queues`; when off, its sampler is built but not run
    /// ([`crate::startup::Application::take_sampler`]).
    pub queue_sampler: bool,
    /// The reads of the database gauges of `/metrics`; when off, they are read only by
    /// [`crate::metrics::DatabaseGauges::refresh`].
    pub gauges: bool,
}

impl Tasks {
    pub const ALL: Tasks = Tasks {
        relay: true,
        scheduler: true,
        queue_sampler: true,
        gauges: true,
    };
    pub const NONE: Tasks = Tasks {
        relay: false,
        scheduler: false,
        queue_sampler: false,
        gauges: false,
    };
}

/// `HTTP_ADDR` when unset.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8082";

pub(crate) const DEFAULT_REAPER_GRACE_SECONDS: f64 = 5.0;

/// How the scheduler's PENDING sweeper queues runs that have no job in flight again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PendingRequeue {
    /// A PENDING run none of whose jobs went out for this long, with none waiting in the
    /// outbox, is queued again (`PENDING_REQUEUE_SECONDS`, default 300; at least 1 s).
    pub after: Duration,
    /// PENDING runs looked at per scheduler pass (`PENDING_REQUEUE_BATCH`, default 200,
    /// 1-10000).
    pub batch: u32,
}

pub(crate) const DEFAULT_PENDING_REQUEUE_SECONDS: f64 = 300.0;
pub(crate) const DEFAULT_PENDING_REQUEUE_BATCH: u32 = 200;
pub(crate) const MAX_PENDING_REQUEUE_BATCH: u32 = 10_000;

/// `PENDING_REQUEUE_SECONDS` (0 turns the sweeper off) and `PENDING_REQUEUE_BATCH`.
pub(crate) fn pending_requeue_from_env() -> Result<Option<PendingRequeue>, String> {
    PendingRequeue::checked(
        env_seconds("PENDING_REQUEUE_SECONDS", DEFAULT_PENDING_REQUEUE_SECONDS)?,
        env_parse("PENDING_REQUEUE_BATCH", DEFAULT_PENDING_REQUEUE_BATCH)?,
    )
}

impl PendingRequeue {
    /// The sweeper's settings if they are in range; `None` when `after` is 0 (off).
    pub(crate) fn checked(after: Duration, batch: u32) -> Result<Option<Self>, String> {
        if !(1..=MAX_PENDING_REQUEUE_BATCH).contains(&batch) {
            return Err(format!(
                "PENDING_REQUEUE_BATCH must be a whole number from 1 to {MAX_PENDING_REQUEUE_BATCH}"
            ));
        }
        if after.is_zero() {
            return Ok(None);
        }
        if after < Duration::from_secs(1) {
            return Err("PENDING_REQUEUE_SECONDS must be 0 (off) or at least 1 second".into());
        }
        Ok(Some(Self { after, batch }))
    }
}

/// `REAPER_GRACE_SECONDS`, default [`DEFAULT_REAPER_GRACE_SECONDS`].
pub(crate) fn reaper_grace_from_env() -> Result<Duration, String> {
    env_seconds("REAPER_GRACE_SECONDS", DEFAULT_REAPER_GRACE_SECONDS)
}

/// `METRICS_REFRESH_SECONDS`, default [`crate::metrics::DEFAULT_REFRESH_SECONDS`]: at least
/// 0.1 s (0 would read the database in a loop), at most an hour.
pub(crate) fn metrics_refresh_from_env() -> Result<Duration, String> {
    let refresh = env_seconds(
        "METRICS_REFRESH_SECONDS",
        crate::metrics::DEFAULT_REFRESH_SECONDS,
    )?;
    if !(0.1..=3600.0).contains(&refresh.as_secs_f64()) {
        return Err(
            "environment variable METRICS_REFRESH_SECONDS must be between 0.1 and 3600".into(),
        );
    }
    Ok(refresh)
}

/// `EVENT_STREAM_MAX_SECONDS`, default 3600 (at least 1 s).
pub(crate) fn event_stream_max_from_env() -> Result<Duration, String> {
    Ok(env_seconds("EVENT_STREAM_MAX_SECONDS", 3600.0)?.max(Duration::from_secs(1)))
}

impl Settings {
    pub fn from_env() -> Result<Self, String> {
        Ok(Self {
            common: CommonConfig::from_env(DEFAULT_DB_POOL_SIZE)?,
            auth: AuthConfig::from_env()?,
            http_addr: env_or("HTTP_ADDR", DEFAULT_HTTP_ADDR),
            relay_interval: env_seconds("OUTBOX_RELAY_INTERVAL_SECONDS", 1.0)?,
            relay_grace: env_seconds("OUTBOX_RELAY_GRACE_SECONDS", 2.0)?,
            scheduler_interval: env_seconds("SCHEDULER_INTERVAL_SECONDS", 0.5)?,
            reaper_grace: reaper_grace_from_env()?,
            ops_sample_interval: env_seconds("OPS_SAMPLE_SECONDS", 5.0)?,
            worker_heartbeat: env_seconds("WORKER_HEARTBEAT_SECONDS", 5.0)?,
            outbox_retention: env_seconds("OUTBOX_RETENTION_SECONDS", 3600.0)?,
            pending_requeue: pending_requeue_from_env()?,
            event_stream_max: event_stream_max_from_env()?,
            metrics_refresh: metrics_refresh_from_env()?,
            tasks: Tasks::ALL,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pending_sweeper_settings_are_checked() {
        let secs = Duration::from_secs;
        assert_eq!(
            PendingRequeue::checked(secs(300), 200),
            Ok(Some(PendingRequeue {
                after: secs(300),
                batch: 200
            }))
        );
        assert_eq!(PendingRequeue::checked(Duration::ZERO, 200), Ok(None));
        assert!(PendingRequeue::checked(Duration::from_millis(500), 200).is_err());
        for batch in [0, MAX_PENDING_REQUEUE_BATCH + 1] {
            let e = PendingRequeue::checked(secs(300), batch).unwrap_err();
            assert!(e.contains("PENDING_REQUEUE_BATCH"), "{e}");
        }
    }
}
