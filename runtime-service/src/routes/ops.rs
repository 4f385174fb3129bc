//! `GET /ops/queues` and `GET /ops/workers`: what an operator needs to see of the queues and
//! the workers (docs/API.md "Operating it"). The admin key only ([`Admin`]); org keys get 403.

use crate::error::RuntimeError;
use crate::queue_stats::{Point, QueueStats};
use crate::startup::AppState;
use crate::storage;
use crate::storage::counters;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Serialize;
use shared_models::auth::Admin;
use shared_models::db::blocking;
use shared_models::envelope::{self, ApiError, ErrorCode};
use shared_models::openapi::Envelope;
use shared_models::time::{rfc3339, rfc3339_opt};
use std::time::Duration;

/// A worker is live while its last heartbeat is at most this many heartbeat intervals old.
pub const LIVE_HEARTBEATS: u32 = 3;
/// Workers whose last heartbeat is older than this are not shown at all.
pub const STALE_SHOWN_FOR: Duration = Duration::from_secs(60 * 60);

/// One sample of a queue.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PointView {
    #[serde(with = "rfc3339")]
    at: DateTime<Utc>,
    messages: u32,
    consumers: u32,
}

impl From<&Point> for PointView {
    fn from(p: &Point) -> Self {
        PointView {
            at: p.at,
            messages: p.messages,
            consumers: p.consumers,
        }
    }
}

/// A queue as last sampled.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueView {
    #[schema(example = "thygon.run-jobs.v1")]
    name: String,
    /// `jobs` or `dead-letter`.
    #[schema(value_type = String, example = "jobs")]
    kind: &'static str,
    /// Whether the last broker round succeeded; when false, the numbers are the last known.
    reachable: bool,
    /// Whether the queue existed at the last successful round (a queue no one declared yet
    /// shows 0 messages).
    exists: bool,
    messages: u32,
    consumers: u32,
    /// Seconds since the oldest due PENDING run was created (0 when none); on the jobs queue
    /// only (`null` on the dead-letter queue, and before the database answered once).
    oldest_pending_run_age_seconds: Option<f64>,
    /// PENDING runs the sweeper queued again because no job of theirs was in flight, by
    /// every replica since the count began; on the jobs queue only.
    pending_runs_requeued: Option<i64>,
    /// Dead letters moved back to the job queue (`POST /ops/dead-letters/redrive`), by every
    /// replica since the count began; on the dead-letter queue only.
    dead_letters_redriven: Option<i64>,
    /// When the numbers were read from the broker.
    #[serde(with = "rfc3339_opt")]
    sampled_at: Option<DateTime<Utc>>,
    /// Samples of the last hour, oldest first, one per `OPS_SAMPLE_SECONDS`.
    history: Vec<PointView>,
}

fn queue_views(stats: &QueueStats) -> Vec<QueueView> {
    stats
        .queues
        .iter()
        .map(|q| {
            let latest = q.latest.as_ref();
            let jobs = q.kind == crate::queue_stats::QueueKind::Jobs;
            // A count never added to is 0, once the database has answered.
            let count = |name: &str, shown: bool| {
                let counters = stats.counters.as_ref().filter(|_| shown)?;
                Some(counters.get(name).copied().unwrap_or(0))
            };
            QueueView {
                name: q.name.clone(),
                kind: q.kind.as_str(),
                reachable: stats.reachable,
                exists: q.exists,
                messages: latest.map_or(0, |p| p.messages),
                consumers: latest.map_or(0, |p| p.consumers),
                oldest_pending_run_age_seconds: jobs
                    .then_some(stats.oldest_pending_run_age_seconds)
                    .flatten(),
                pending_runs_requeued: count(counters::PENDING_RUNS_REQUEUED, jobs),
                dead_letters_redriven: count(counters::DEAD_LETTERS_REDRIVEN, !jobs),
                sampled_at: latest.map(|p| p.at),
                history: q.history.iter().map(PointView::from).collect(),
            }
        })
        .collect()
}

/// `GET /ops/queues`: the job queue and the dead-letter queue, as last sampled. When the
/// broker is unreachable the last known numbers come with `"reachable": false`; when no
/// sample ever succeeded (the broker has been down since this replica started, or the first
/// sample is not done yet) the answer is 503 UNAVAILABLE.
#[utoipa::path(
    get,
    path = "/ops/queues",
    tag = "ops",
    summary = "The job queue and the dead-letter queue: depth, consumers, history (admin key)",
    responses(
        (status = 200, description = "Each queue as last sampled; `reachable: false` with the last known numbers when the broker is away", body = Envelope<Vec<QueueView>>),
    ),
)]
pub async fn queues(
    state: web::Data<AppState>,
    _admin: Admin,
) -> Result<HttpResponse, RuntimeError> {
    let stats = state
        .ops
        .queues
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if !stats.ever_sampled() {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "the queues have not been sampled yet: the broker has not been reachable since this service started",
        )
        .into());
    }
    Ok(envelope::ok(queue_views(&stats)))
}

/// A worker as its presence row and the runs it holds show it.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerView {
    id: String,
    hostname: String,
    pid: i32,
    #[serde(with = "rfc3339")]
    started_at: DateTime<Utc>,
    #[serde(with = "rfc3339")]
    last_heartbeat_at: DateTime<Utc>,
    concurrency: i32,
    /// Runs being executed at the last heartbeat.
    in_flight: i32,
    /// Whether the last heartbeat is recent (at most three heartbeat intervals old).
    live: bool,
    /// The RUNNING runs whose lease this worker holds.
    runs: Vec<String>,
}

/// `GET /ops/workers`: workers seen in the last hour, most recent heartbeat first; those
/// whose heartbeat is older than three `WORKER_HEARTBEAT_SECONDS` have `"live": false` (died
/// without a clean shutdown, or cut off from the database).
#[utoipa::path(
    get,
    path = "/ops/workers",
    tag = "ops",
    summary = "Workers seen in the last hour, live or not, with the runs they hold (admin key)",
    responses(
        (status = 200, description = "The workers, most recent heartbeat first", body = Envelope<Vec<WorkerView>>),
    ),
)]
pub async fn workers(
    state: web::Data<AppState>,
    _admin: Admin,
) -> Result<HttpResponse, RuntimeError> {
    let now = Utc::now();
    let shown_since = now - chrono::Duration::from_std(STALE_SHOWN_FOR).unwrap_or_default();
    let live_window = chrono::Duration::from_std(state.ops.worker_heartbeat * LIVE_HEARTBEATS)
        .unwrap_or_default();
    let rows = blocking(&state.pool, move |conn| {
        storage::workers::recent_workers(conn, shown_since)
    })
    .await?;
    let views: Vec<WorkerView> = rows
        .into_iter()
        .map(|(w, runs)| WorkerView {
            live: now - w.last_heartbeat_at <= live_window,
            id: w.id,
            hostname: w.hostname,
            pid: w.pid,
            started_at: w.started_at,
            last_heartbeat_at: w.last_heartbeat_at,
            concurrency: w.concurrency,
            in_flight: w.in_flight,
            runs,
        })
        .collect();
    Ok(envelope::ok(views))
}
