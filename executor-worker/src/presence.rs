//! This worker's row in `workers`, for the operators' view (`GET /ops/workers` in
//! runtime-service): upserted when the worker starts and every `WORKER_HEARTBEAT_SECONDS`
//! with the number of runs in flight, deleted on a clean shutdown. A worker that dies keeps
//! its row; readers tell it apart by its old heartbeat.

use crate::consumer::WorkerState;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::upsert::excluded;
use shared_models::db::{blocking, PgPool, StorageError};

/// How long agents' live pieces (`agent_deltas`) are kept for the event streams.
pub const DELTAS_KEPT: std::time::Duration = std::time::Duration::from_secs(600);
use shared_models::models::WorkerRow;
use shared_models::schema::workers;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The shortest heartbeat interval (a 0 in the environment would spin).
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(100);

pub struct Presence {
    pub pool: PgPool,
    pub worker_id: String,
    pub hostname: String,
    pub pid: u32,
    pub concurrency: usize,
    pub started_at: DateTime<Utc>,
    pub interval: Duration,
    pub state: Arc<WorkerState>,
}

/// The machine's name: `HOSTNAME`, else `/etc/hostname`, else "unknown".
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

impl Presence {
    /// This process's presence: its host and pid, started now.
    pub fn new(
        pool: PgPool,
        worker_id: &str,
        concurrency: usize,
        interval: Duration,
        state: Arc<WorkerState>,
    ) -> Self {
        Self {
            pool,
            worker_id: worker_id.to_string(),
            hostname: hostname(),
            pid: std::process::id(),
            concurrency,
            started_at: shared_models::time::now(),
            interval: interval.max(MIN_HEARTBEAT),
            state,
        }
    }

    fn row(&self) -> WorkerRow {
        WorkerRow {
            id: self.worker_id.clone(),
            hostname: self.hostname.clone(),
            pid: i32::try_from(self.pid).unwrap_or(i32::MAX),
            started_at: self.started_at,
            last_heartbeat_at: shared_models::time::now(),
            concurrency: i32::try_from(self.concurrency).unwrap_or(i32::MAX),
            in_flight: i32::try_from(self.state.in_flight().len()).unwrap_or(i32::MAX),
        }
    }

    /// Write the row now (insert, or update the one of this worker id).
    pub async fn beat(&self) -> Result<(), StorageError> {
        let row = self.row();
        blocking(&self.pool, move |conn| {
            diesel::insert_into(workers::table)
                .values(&row)
                .on_conflict(workers::id)
                .do_update()
                .set((
                    workers::hostname.eq(excluded(workers::hostname)),
                    workers::pid.eq(excluded(workers::pid)),
                    workers::started_at.eq(excluded(workers::started_at)),
                    workers::last_heartbeat_at.eq(excluded(workers::last_heartbeat_at)),
                    workers::concurrency.eq(excluded(workers::concurrency)),
                    workers::in_flight.eq(excluded(workers::in_flight)),
                ))
                .execute(conn)
                .map(|_| ())
        })
        .await
    }

    /// Delete the row (clean shutdown). Only this process's row: a worker started again under
    /// the same id (another `started_at`) keeps its own.
    pub async fn remove(&self) -> Result<(), StorageError> {
        let (id, started_at) = (self.worker_id.clone(), self.started_at);
        blocking(&self.pool, move |conn| {
            diesel::delete(
                workers::table
                    .filter(workers::id.eq(id))
                    .filter(workers::started_at.eq(started_at)),
            )
            .execute(conn)
            .map(|_| ())
        })
        .await
    }

    /// Beat at once, then every interval, until `shutdown` turns true. A failed beat (the
    /// database away) is logged and tried again at the next interval. Each beat also prunes
    /// agents' live pieces older than [`DELTAS_KEPT`] (`crate::steps::deltas`).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut failing = false;
        while !*shutdown.borrow() {
            let pruned = blocking(&self.pool, |conn| {
                crate::steps::deltas::prune(conn, DELTAS_KEPT, 10_000)
            })
            .await;
            if let Err(e) = pruned {
                log::debug!("agents' live pieces were not pruned: {e}");
            }
            match self.beat().await {
                Ok(()) if failing => {
                    log::info!("worker heartbeat written again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    log::warn!("cannot write the worker heartbeat: {e}");
                    failing = true;
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                changed = shutdown.changed() => if changed.is_err() { return },
            }
        }
    }
}
