//! The runs and the outbox as Prometheus gauges, read from the database by a background task
//! every `METRICS_REFRESH_SECONDS` (default 15) and kept in memory: a scrape of `GET /metrics`
//! never touches the database. Reading them at each scrape cost every replica a count of all
//! runs by status per scrape, so the database's load grew with replicas times scrapers; now
//! it is one read per replica per interval, whoever scrapes and however often. When the
//! database does not answer, the gauges keep their last values, and a line is logged.
//!
//! - `thygon_runs{status}`: runs by status (every status, 0 included).
//! - `thygon_oldest_pending_run_age_seconds`: since its creation, the age of the oldest
//!   PENDING run that was due (no `wake_at`, or one that had come) at the last read; the age
//!   itself is computed at the scrape, so it grows between reads. 0 when there was none.
//! - `thygon_outbox_unsent`: outbox rows not yet published.
//! - `thygon_metrics_refresh_total`: reads of the three above attempted.
//! - `thygon_metrics_refresh_failures_total`: reads that failed (the gauges above then kept
//!   their last values).
//!
//! These live in a registry of the application's own ([`DatabaseGauges::registry`]), so the
//! applications of one test binary, each on its own database, each show theirs. The trigger
//! batcher adds `thygon_trigger_batch_size` (a histogram of the triggers each group-commit
//! transaction wrote; see [`crate::batcher`]) to the process's default registry, and so do
//! these counters of what this process did (the operators' view shows the deployment's
//! totals, from `ops_counters`):
//!
//! - `thygon_pending_runs_requeued_total`: PENDING runs the sweeper queued again
//!   ([`crate::sweeper`]).
//! - `thygon_dead_letters_redriven_total`: dead letters moved back to the job queue
//!   ([`crate::redrive`]).

use chrono::{DateTime, Utc};
use diesel::dsl::count_star;
use diesel::prelude::*;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{register_int_counter, Gauge, IntCounter, IntGauge, IntGaugeVec, Opts, Registry};
use shared_models::db::{blocking, PgPool};
use shared_models::schema::{outbox, runs};
use shared_models::status::RunStatus;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

pub(crate) static PENDING_RUNS_REQUEUED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "thygon_pending_runs_requeued_total",
        "PENDING runs queued again because no job of theirs was in flight for PENDING_REQUEUE_SECONDS"
    )
    .expect("register thygon_pending_runs_requeued_total")
});

pub(crate) static DEAD_LETTERS_REDRIVEN: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "thygon_dead_letters_redriven_total",
        "Dead letters moved back to the job queue by POST /ops/dead-letters/redrive"
    )
    .expect("register thygon_dead_letters_redriven_total")
});

/// Register the process's counters, so that they are shown (at 0) before anything is
/// counted.
pub(crate) fn register_counters() {
    let _ = (&*PENDING_RUNS_REQUEUED, &*DEAD_LETTERS_REDRIVEN);
}

/// How long a read may wait for the database before it counts as failed.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(3);

/// `METRICS_REFRESH_SECONDS` when unset.
pub(crate) const DEFAULT_REFRESH_SECONDS: f64 = 15.0;

/// The gauges read from the database, and the counters of those reads. Cheap to clone (the
/// metrics are shared handles).
#[derive(Clone)]
pub struct DatabaseGauges {
    pool: PgPool,
    runs: IntGaugeVec,
    /// When the oldest due PENDING run was created, as last read (`None`: there was none).
    oldest_due_pending: Arc<Mutex<Option<DateTime<Utc>>>>,
    /// Set from `oldest_due_pending` at each collection (see [`Collector::collect`]).
    oldest_age: Gauge,
    outbox_unsent: IntGauge,
    refreshes: IntCounter,
    failures: IntCounter,
}

struct Snapshot {
    by_status: Vec<(String, i64)>,
    oldest_due_pending: Option<DateTime<Utc>>,
    outbox_unsent: i64,
}

fn read(conn: &mut PgConnection, now: DateTime<Utc>) -> QueryResult<Snapshot> {
    let by_status = runs::table
        .group_by(runs::status)
        .select((runs::status, count_star()))
        .load::<(String, i64)>(conn)?;
    let oldest_due_pending = crate::storage::oldest_due_pending(conn, now)?;
    let outbox_unsent = outbox::table
        .filter(outbox::sent_at.is_null())
        .count()
        .get_result(conn)?;
    Ok(Snapshot {
        by_status,
        oldest_due_pending,
        outbox_unsent,
    })
}

impl DatabaseGauges {
    /// Gauges over `pool`'s database, never read yet (0 everywhere).
    pub(crate) fn new(pool: PgPool) -> Self {
        // The names and help texts are constants: building them cannot fail.
        let runs = IntGaugeVec::new(Opts::new("thygon_runs", "Runs by status"), &["status"])
            .expect("thygon_runs");
        for status in RunStatus::ALL {
            runs.with_label_values(&[status.as_str()]).set(0);
        }
        Self {
            pool,
            runs,
            oldest_due_pending: Arc::new(Mutex::new(None)),
            oldest_age: Gauge::new(
                "thygon_oldest_pending_run_age_seconds",
                "Age (since creation) of the oldest PENDING run that was due at the last read; 0 when none",
            )
            .expect("thygon_oldest_pending_run_age_seconds"),
            outbox_unsent: IntGauge::new("thygon_outbox_unsent", "Outbox rows not yet published")
                .expect("thygon_outbox_unsent"),
            refreshes: IntCounter::new(
                "thygon_metrics_refresh_total",
                "Reads of the runs and the outbox for the gauges (one per METRICS_REFRESH_SECONDS, never per scrape)",
            )
            .expect("thygon_metrics_refresh_total"),
            failures: IntCounter::new(
                "thygon_metrics_refresh_failures_total",
                "Reads of the runs and the outbox that failed (their gauges kept their last values)",
            )
            .expect("thygon_metrics_refresh_failures_total"),
        }
    }

    /// A registry holding these gauges, for [`shared_models::metrics::Exposition`].
    pub(crate) fn registry(&self) -> Registry {
        let registry = Registry::new();
        // A fresh registry and distinct names: registering cannot collide.
        registry
            .register(Box::new(self.clone()))
            .expect("a fresh registry");
        registry
    }

    /// Read the database once into the gauges; on failure keep the last values.
    pub async fn refresh(&self) {
        self.refreshes.inc();
        let now = shared_models::time::now();
        let read = tokio::time::timeout(
            REFRESH_TIMEOUT,
            blocking(&self.pool, move |conn| read(conn, now)),
        )
        .await;
        let snapshot = match read {
            Ok(Ok(snapshot)) => snapshot,
            Ok(Err(e)) => {
                self.failures.inc();
                log::warn!(
                    "metrics: cannot read the runs and the outbox ({e}); keeping the last values"
                );
                return;
            }
            Err(_) => {
                self.failures.inc();
                log::warn!(
                    "metrics: the database did not answer within {REFRESH_TIMEOUT:?}; keeping the last values"
                );
                return;
            }
        };
        for status in RunStatus::ALL {
            let n = snapshot
                .by_status
                .iter()
                .find(|(s, _)| s == status.as_str())
                .map_or(0, |(_, n)| *n);
            self.runs.with_label_values(&[status.as_str()]).set(n);
        }
        *self
            .oldest_due_pending
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = snapshot.oldest_due_pending;
        self.outbox_unsent.set(snapshot.outbox_unsent);
    }

    /// Refresh now and every `interval`, for ever (the task is aborted at shutdown). A read
    /// that overruns the interval delays the next one: reads never pile up.
    pub(crate) async fn run(self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.refresh().await;
        }
    }
}

impl DatabaseGauges {
    /// Every metric this collector exposes.
    fn parts(&self) -> [&dyn Collector; 5] {
        [
            &self.runs,
            &self.oldest_age,
            &self.outbox_unsent,
            &self.refreshes,
            &self.failures,
        ]
    }
}

impl Collector for DatabaseGauges {
    fn desc(&self) -> Vec<&Desc> {
        self.parts().into_iter().flat_map(|m| m.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let oldest = *self
            .oldest_due_pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.oldest_age.set(oldest.map_or(0.0, |created| {
            let age = shared_models::time::now() - created;
            (age.num_milliseconds().max(0) as f64) / 1000.0
        }));
        self.parts().into_iter().flat_map(|m| m.collect()).collect()
    }
}
