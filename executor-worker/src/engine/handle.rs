//! A handle on a claimed run: its row, and its writes under this worker's lease, each on the
//! blocking pool ([`blocking`]) with a pooled connection.

use super::state::{fenced, Stop};
use crate::storage::{
    self, ChildStart, ChildState, LeaseHolder, Park, RunEnd, StepChange, StepRecord,
};
use chrono::{DateTime, Utc};
use diesel::PgConnection;
use serde_json::Value;
use shared_models::budget::Budget;
use shared_models::db::{blocking, PgPool};
use shared_models::logctx;
use shared_models::models::{RunRow, StepRunRow};
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The run this worker claimed, with what its writes need: the pool and the lease they are
/// fenced by. It reads as the run's row. A write whose lease was lost (the run cancelled or
/// taken over) answers [`Stop::LeaseLost`].
///
/// Each write is stamped with the time of its call, except [`RunHandle::record`] and
/// [`RunHandle::start_child`], which take it: the engine mirrors it in memory.
#[derive(Clone)]
pub(super) struct RunHandle {
    pool: PgPool,
    me: LeaseHolder,
    row: Arc<RunRow>,
    /// Set once the run's end was committed with its last step's checkpoint
    /// ([`crate::checkpoints::Checkpointer::checkpoint_and_finish`]).
    ended: Arc<AtomicBool>,
    /// This job's claim started the run: its pure steps are first attempts.
    pub(super) first_claim: bool,
    /// What its model calls may use: the definition's `budget` with the trigger's override,
    /// set once the graph is compiled ([`RunHandle::set_budget`]).
    budget: Arc<std::sync::OnceLock<Budget>>,
}

impl Deref for RunHandle {
    type Target = RunRow;

    fn deref(&self) -> &RunRow {
        &self.row
    }
}

impl RunHandle {
    pub(super) fn new(pool: PgPool, me: LeaseHolder, row: RunRow, first_claim: bool) -> Self {
        Self {
            pool,
            me,
            row: Arc::new(row),
            ended: Arc::default(),
            first_claim,
            budget: Arc::default(),
        }
    }

    /// The run's budget: `graph`'s (the definition's), each field the trigger set overriding
    /// it. An override that cannot be read (never written so) counts as none.
    pub(super) fn set_budget(&self, graph: Option<Budget>) {
        let over = self
            .row
            .budget
            .as_ref()
            .and_then(|b| serde_json::from_value::<Budget>(b.clone()).ok());
        let _ = self
            .budget
            .set(graph.unwrap_or_default().overridden_by(over));
    }

    /// The budget [`RunHandle::set_budget`] set (none before).
    pub(super) fn budget(&self) -> Budget {
        self.budget.get().copied().unwrap_or_default()
    }

    /// The run's end was committed with its last step (nothing is left to write).
    pub(super) fn mark_ended(&self) {
        self.ended.store(true, Ordering::Release);
    }

    /// Whether [`RunHandle::mark_ended`] was called.
    pub(super) fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// `f` with a pooled connection, the run's row and the lease, on the blocking pool.
    async fn with_conn<T, F>(&self, f: F) -> Result<T, Stop>
    where
        F: FnOnce(&mut PgConnection, &RunRow, &LeaseHolder) -> Result<T, diesel::result::Error>
            + Send
            + 'static,
        T: Send + 'static,
    {
        let (row, me) = (self.row.clone(), self.me.clone());
        Ok(blocking(&self.pool, move |conn| f(conn, &row, &me)).await?)
    }

    /// Renew the lease every third of its length until the returned task is aborted or the
    /// lease is lost.
    pub(super) fn spawn_heartbeat(&self) -> tokio::task::JoinHandle<()> {
        let run = self.clone();
        tokio::spawn(logctx::inherit(async move {
            let period = run.me.lease / 3;
            loop {
                tokio::time::sleep(period).await;
                match run.renew().await {
                    Ok(()) => {}
                    Err(Stop::LeaseLost) => return,
                    Err(Stop::Storage(e)) => log::warn!("lease heartbeat failed: {e}"),
                }
            }
        }))
    }

    /// Keep holding the run ([`storage::renew_lease`]).
    pub(super) async fn renew(&self) -> Result<(), Stop> {
        let now = shared_models::time::now();
        let renewed = self
            .with_conn(move |conn, run, me| storage::renew_lease(conn, &run.id, me, now))
            .await?;
        fenced(renewed)
    }

    /// An attempt of `step` starts ([`storage::start_step`]); returns its number.
    pub(super) async fn start_step(&self, step: &StepRecord) -> Result<i32, Stop> {
        let (step, now) = (step.clone(), shared_models::time::now());
        self.with_conn(move |conn, _, me| storage::start_step(conn, &step, me, now))
            .await?
            .map_err(|_| Stop::LeaseLost)
    }

    /// `step`'s change, as of `now` ([`storage::record_step`]).
    pub(super) async fn record(
        &self,
        step: &StepRecord,
        change: &StepChange,
        now: DateTime<Utc>,
    ) -> Result<(), Stop> {
        let (step, change) = (step.clone(), change.clone());
        let written = self
            .with_conn(move |conn, _, me| storage::record_step(conn, &step, &change, me, now))
            .await?;
        fenced(written)
    }

    /// Start the child run of the `subworkflow` step `step`, as of `now`, and record the
    /// step WAITING for it until `wait_until` ([`storage::start_child_run`]).
    pub(super) async fn start_child(
        &self,
        step: &StepRecord,
        workflow_id: &str,
        variables: Value,
        wait_until: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<ChildStart, Stop> {
        let (step, workflow_id) = (step.clone(), workflow_id.to_string());
        self.with_conn(move |conn, run, me| {
            storage::start_child_run(
                conn,
                run,
                &step,
                &workflow_id,
                variables,
                wait_until,
                me,
                now,
            )
        })
        .await?
        .map_err(|_| Stop::LeaseLost)
    }

    /// The status, output and error of the child run `child_id` ([`storage::child_state`]).
    pub(super) async fn child_state(&self, child_id: &str) -> Result<Option<ChildState>, Stop> {
        let child_id = child_id.to_string();
        self.with_conn(move |conn, _, _| storage::child_state(conn, &child_id))
            .await
    }

    /// Put the run aside, WAITING for the steps `waiting`, until `wake_at` at the latest
    /// ([`storage::park_run`]).
    pub(super) async fn park(
        &self,
        waiting: Vec<String>,
        wake_at: Option<DateTime<Utc>>,
    ) -> Result<Park, Stop> {
        let now = shared_models::time::now();
        self.with_conn(move |conn, run, me| {
            storage::park_run(conn, &run.id, &waiting, wake_at, me, now)
        })
        .await
    }

    /// The run's step rows ([`storage::load_steps`]).
    pub(super) async fn load_steps(&self) -> Result<Vec<StepRunRow>, Stop> {
        self.with_conn(|conn, run, _| storage::load_steps(conn, &run.id))
            .await
    }

    /// End the run in its own transaction ([`storage::finish_run`]).
    pub(super) async fn finish(&self, end: &RunEnd) -> Result<(), Stop> {
        let (end, now) = (end.clone(), shared_models::time::now());
        let written = self
            .with_conn(move |conn, run, me| storage::finish_run(conn, run, &end, me, now))
            .await?;
        fenced(written)
    }
}
