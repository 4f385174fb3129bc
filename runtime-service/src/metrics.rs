//! The runs and the outbox as Prometheus gauges, read from the database at each scrape of
//! `GET /metrics` (three short queries). When the database does not answer, the scrape still
//! succeeds with the last values read, and a line is logged.
//!
//! - `thygon_runs{status}`: runs by status (every status, 0 included).
//! - `thygon_oldest_pending_run_age_seconds`: since its creation, the age of the oldest
//!   PENDING run that is due (no `wake_at`, or one that has come); 0 when there is none.
//! - `thygon_outbox_unsent`: outbox rows not yet published.
//! - `thygon_metrics_refresh_failures_total`: scrapes that could not read the database (the
//!   gauges above then keep their last values).
//!
//! The trigger batcher adds `thygon_trigger_batch_size` (a histogram of the triggers each
//! group-commit transaction wrote; see [`crate::batcher`]).

use crate::startup::AppState;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use diesel::dsl::count_star;
use diesel::prelude::*;
use prometheus::{
    register_gauge, register_int_counter, register_int_gauge, register_int_gauge_vec, Gauge,
    IntCounter, IntGauge, IntGaugeVec,
};
use shared_models::db::{blocking, PgPool};
use shared_models::schema::{outbox, runs};
use shared_models::status::RunStatus;
use std::sync::LazyLock;
use std::time::Duration;

pub static RUNS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!("thygon_runs", "Runs by status", &["status"])
        .expect("register thygon_runs")
});

pub static OLDEST_PENDING_RUN_AGE: LazyLock<Gauge> = LazyLock::new(|| {
    register_gauge!(
        "thygon_oldest_pending_run_age_seconds",
        "Age (since creation) of the oldest PENDING run that is due; 0 when none"
    )
    .expect("register thygon_oldest_pending_run_age_seconds")
});

pub static OUTBOX_UNSENT: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("thygon_outbox_unsent", "Outbox rows not yet published")
        .expect("register thygon_outbox_unsent")
});

pub static REFRESH_FAILURES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "thygon_metrics_refresh_failures_total",
        "Scrapes that could not read the runs and the outbox (their gauges kept their last values)"
    )
    .expect("register thygon_metrics_refresh_failures_total")
});

/// How long a scrape waits for the database before it answers with the last values.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(3);

/// One scrape at a time: the gauges are process-wide, and a scrape must render the values
/// it read (tests run several apps, each with its own database, in one process).
static SCRAPE: LazyLock<tokio::sync::Mutex<()>> = LazyLock::new(|| tokio::sync::Mutex::new(()));

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

/// Read the gauges' values from the database; on failure keep the last ones.
pub async fn refresh(pool: &PgPool) {
    // Registered before any read, so they are exposed even when the database is away.
    let (runs_gauge, age, unsent) = (&*RUNS, &*OLDEST_PENDING_RUN_AGE, &*OUTBOX_UNSENT);
    let failures = &*REFRESH_FAILURES;
    let now = shared_models::time::now();
    let read =
        tokio::time::timeout(REFRESH_TIMEOUT, blocking(pool, move |conn| read(conn, now))).await;
    let snapshot = match read {
        Ok(Ok(snapshot)) => snapshot,
        Ok(Err(e)) => {
            failures.inc();
            log::warn!(
                "metrics: cannot read the runs and the outbox ({e}); keeping the last values"
            );
            return;
        }
        Err(_) => {
            failures.inc();
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
        runs_gauge.with_label_values(&[status.as_str()]).set(n);
    }
    age.set(snapshot.oldest_due_pending.map_or(0.0, |created| {
        ((now - created).num_milliseconds().max(0) as f64) / 1000.0
    }));
    unsent.set(snapshot.outbox_unsent);
}

/// `GET /metrics` (public): the gauges above refreshed, and every other metric of the process.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let _one_at_a_time = SCRAPE.lock().await;
    refresh(&state.pool).await;
    shared_models::metrics::response()
}
