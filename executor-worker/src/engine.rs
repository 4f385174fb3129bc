//! Executing one job: claim the run, resume after its completed steps, execute every ready
//! step (independent branches at once), and finish the run, or park it as WAITING when
//! nothing executes and something waits (a delay, an approval, a child run).
//!
//! - Completed and skipped steps are checkpoints: a redelivered job, a takeover or a retry
//!   never runs them again. A step found RUNNING was cut off by a crash and runs again as the
//!   next attempt (agents and HTTP endpoints see the same `Idempotency-Key`).
//! - A step runs once all its dependencies are COMPLETED or SKIPPED; one whose dependencies
//!   were all SKIPPED is SKIPPED too; a false `when` skips it.
//! - When a step fails after its last attempt, nothing new starts, attempts in flight finish
//!   and are recorded, the steps not started are CANCELLED, and the run is FAILED.
//! - Everything logged while a job is processed carries its run and request ids (the job is
//!   processed in a [`logctx`] scope, and the lease heartbeat inherits it).

use crate::agents::AgentRegistry;
use crate::checkpoints::{is_refused, Checkpointer};
use crate::claims::Claimer;
use crate::limits::{self, WorkLimits};
use crate::outbound::Outbound;
use crate::render::{self, Ctx};
use crate::steps::{self, StepEnv, StepFailure};
use crate::storage::{
    self, Claim, ClaimedRun, Fenced, LeaseHolder, Park, PureStep, RunEnd, RunFinish, StepChange,
    StepRecord,
};
use chrono::{DateTime, Utc};
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::{json, Map, Value};
use shared_models::db::{blocking, PgPool, StorageError};
use shared_models::graph::{Step, StepKind, WorkflowGraph};
use shared_models::logctx::{self, LogContext};
use shared_models::models::{RunRow, StepRunRow};
use shared_models::queue::RunJob;
use shared_models::status::{RunStatus, StepStatus};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A `subworkflow` step whose run tree is busy (another worker is starting a child of the
/// same tree) tries again after this pause, doubled at each try up to
/// [`TREE_BUSY_MAX_PAUSE`], and fails after [`TREE_BUSY_MAX_WAIT`] of trying.
const TREE_BUSY_FIRST_PAUSE: Duration = Duration::from_millis(2);
const TREE_BUSY_MAX_PAUSE: Duration = Duration::from_millis(100);
const TREE_BUSY_MAX_WAIT: Duration = Duration::from_secs(60);

/// What to do with the message once a job was processed.
#[derive(Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// Its effects are committed, or there was nothing to do (a duplicate): ack.
    Done,
    /// It can never be processed (unknown run, undecodable): dead-letter it.
    Poison(String),
    /// A transient failure (database unreachable): requeue it and try again later.
    Retry(String),
}

pub struct Engine {
    pub pool: PgPool,
    pub agents: AgentRegistry,
    /// The clients of `http` steps (egress policy on) and of agents, and their bounds.
    pub http: Outbound,
    pub me: LeaseHolder,
    /// Per-attempt timeout of agent and HTTP calls whose step or agent entry sets none.
    pub agent_timeout: Duration,
    /// At most this many runs of one org RUNNING at once (`MAX_RUNNING_PER_ORG`; 0 = no cap):
    /// a job that would start one more is held back (see [`Claim::Held`]).
    max_running_per_org: u32,
    /// Where pure steps are checkpointed (group commit across runs).
    pub checkpoints: Checkpointer,
    /// Where jobs' runs are claimed (group commit across the jobs that arrive together).
    pub claims: Claimer,
    /// Workflow versions already compiled by this worker.
    pub graphs: Arc<GraphCache>,
    /// What one step or run may spend ([`crate::limits`]); the defaults unless set.
    pub limits: WorkLimits,
}

/// Compiled workflow versions, shared by every run this worker executes. A version never
/// changes once written, so each is read, parsed and validated once per worker, not at every
/// claim. Bounded: emptied when it reaches [`GraphCache::CAPACITY`] versions.
#[derive(Default)]
pub struct GraphCache {
    graphs: Mutex<HashMap<(String, String, i32), Arc<WorkflowGraph>>>,
}

impl GraphCache {
    pub const CAPACITY: usize = 1024;

    fn key(run: &RunRow) -> (String, String, i32) {
        (
            run.org_id.clone(),
            run.workflow_id.clone(),
            run.workflow_version,
        )
    }

    pub fn get(&self, run: &RunRow) -> Option<Arc<WorkflowGraph>> {
        let graphs = self.graphs.lock().unwrap_or_else(|e| e.into_inner());
        graphs.get(&Self::key(run)).cloned()
    }

    fn insert(&self, run: &RunRow, graph: Arc<WorkflowGraph>) {
        let mut graphs = self.graphs.lock().unwrap_or_else(|e| e.into_inner());
        if graphs.len() >= Self::CAPACITY {
            graphs.clear();
        }
        graphs.insert(Self::key(run), graph);
    }

    /// How many versions are cached now.
    pub fn len(&self) -> usize {
        self.graphs.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Engine {
    /// An engine, with its claimer and checkpoint writer started on the current tokio runtime.
    pub fn new(
        pool: PgPool,
        agents: AgentRegistry,
        http: Outbound,
        me: LeaseHolder,
        agent_timeout: Duration,
        max_running_per_org: u32,
    ) -> Self {
        let graphs: Arc<GraphCache> = Arc::default();
        Self {
            checkpoints: Checkpointer::start(pool.clone(), me.clone()),
            claims: Claimer::start(
                pool.clone(),
                me.clone(),
                max_running_per_org,
                graphs.clone(),
            ),
            graphs,
            pool,
            agents,
            http,
            me,
            agent_timeout,
            max_running_per_org,
            limits: WorkLimits::default(),
        }
    }
}

/// Why the engine stopped working on a run before its end.
enum Stop {
    /// Another worker holds the run now, or it was cancelled: leave it alone.
    LeaseLost,
    Storage(StorageError),
}

impl From<StorageError> for Stop {
    fn from(e: StorageError) -> Self {
        Stop::Storage(e)
    }
}

fn fenced(f: Fenced) -> Result<(), Stop> {
    match f {
        Fenced::Written => Ok(()),
        Fenced::LeaseLost => Err(Stop::LeaseLost),
    }
}

/// A step's state as the engine tracks it during one job.
#[derive(Clone, Debug)]
struct StepState {
    status: StepStatus,
    output: Option<Value>,
    error: Option<String>,
    wake_at: Option<DateTime<Utc>>,
    child_run_id: Option<String>,
    /// When it started (a waiting step's wait is timed from then).
    started_at: Option<DateTime<Utc>>,
}

impl StepState {
    fn from_row(row: Option<&StepRunRow>) -> Self {
        match row {
            Some(r) => StepState {
                // RUNNING means an attempt was cut off by a crash: it runs again.
                status: match StepStatus::parse(&r.status) {
                    Some(StepStatus::Running) | None => StepStatus::Pending,
                    Some(s) => s,
                },
                output: r.output.clone(),
                error: r.error.clone(),
                wake_at: r.wake_at,
                child_run_id: r.child_run_id.clone(),
                started_at: r.started_at,
            },
            None => StepState {
                status: StepStatus::Pending,
                output: None,
                error: None,
                wake_at: None,
                child_run_id: None,
                started_at: None,
            },
        }
    }
}

/// One run being driven: its graph and the state of each step.
struct RunState<'a> {
    run: &'a RunRow,
    graph: Arc<WorkflowGraph>,
    steps: Vec<StepState>,
}

impl RunState<'_> {
    fn record(&self, i: usize) -> StepRecord {
        let step = &self.graph.steps[i];
        StepRecord {
            run_id: self.run.id.clone(),
            name: step.name.to_string(),
            position: i as i32,
            step_type: step.kind.type_name(),
        }
    }

    /// The template context now: `variables`, `steps.<name>.output|status`, `run`.
    fn context(&self) -> Ctx {
        let steps: Map<String, Value> = self
            .graph
            .steps
            .iter()
            .zip(&self.steps)
            .map(|(s, st)| {
                (
                    s.name.to_string(),
                    json!({ "output": st.output, "status": st.status.as_str() }),
                )
            })
            .collect();
        Arc::new(json!({
            "variables": self.run.variables,
            "steps": steps,
            "run": { "id": self.run.id, "workflowId": self.run.workflow_id },
        }))
    }

    /// The steps not settled yet (not started, or waiting): CANCELLED when the run fails.
    fn unsettled(&self) -> Vec<StepRecord> {
        (0..self.steps.len())
            .filter(|&j| {
                matches!(
                    self.steps[j].status,
                    StepStatus::Pending | StepStatus::Waiting
                )
            })
            .map(|j| self.record(j))
            .collect()
    }

    fn reload(&mut self, rows: &[StepRunRow]) {
        for (i, step) in self.graph.steps.iter().enumerate() {
            self.steps[i] = StepState::from_row(rows.iter().find(|r| r.name == step.name.as_str()));
        }
    }

    /// Steps whose dependencies are all settled and that have not started.
    fn ready(&self, in_flight: &HashSet<usize>) -> Vec<usize> {
        (0..self.steps.len())
            .filter(|&i| self.steps[i].status == StepStatus::Pending && !in_flight.contains(&i))
            .filter(|&i| {
                self.graph.steps[i]
                    .depends_on
                    .iter()
                    .all(|&d| self.steps[d].status.is_settled())
            })
            .collect()
    }
}

impl Engine {
    pub async fn process(&self, job: &RunJob) -> JobOutcome {
        self.process_detailed(job).await.0
    }

    /// [`Engine::process`], with how the job ended in more detail: the `outcome` label of
    /// `thygon_jobs_total` (see [`crate::metrics`]). Runs in the log context of the job.
    pub async fn process_detailed(&self, job: &RunJob) -> (JobOutcome, &'static str) {
        let ctx = LogContext::run(&job.run_id, job.request_id.as_deref());
        logctx::scope(ctx, self.process_in_context(job)).await
    }

    async fn process_in_context(&self, job: &RunJob) -> (JobOutcome, &'static str) {
        let claim = self
            .claims
            .claim(storage::ClaimJob {
                run_id: job.run_id.clone(),
                org_id: job.org_id.clone(),
            })
            .await;
        match claim {
            Err(e) => (JobOutcome::Retry(e.to_string()), "retry"),
            Ok((Claim::Missing, _)) => (
                JobOutcome::Poison(format!(
                    "run '{}' does not exist in org '{}'",
                    job.run_id, job.org_id
                )),
                "poison",
            ),
            Ok((Claim::Ended | Claim::HeldElsewhere, _)) => {
                log::info!("run {}: duplicate delivery, nothing to do", job.run_id);
                (JobOutcome::Done, "duplicate")
            }
            Ok((Claim::Held, _)) => {
                // The scheduler queues it again once its wake_at has come.
                log::info!(
                    "run {}: org {} is at its running cap (maxRunningRuns: the org's override, else MAX_RUNNING_PER_ORG = {}); held back for {:?}",
                    job.run_id,
                    job.org_id,
                    self.max_running_per_org,
                    storage::RUNNING_SLOT_HOLD
                );
                (JobOutcome::Done, "held")
            }
            Ok((Claim::Claimed(claimed), cached)) => {
                let heartbeat = self.spawn_heartbeat(&job.run_id);
                let result = self.drive(&claimed, cached).await;
                heartbeat.abort();
                match result {
                    Ok(()) => (JobOutcome::Done, "done"),
                    Err(Stop::LeaseLost) => {
                        log::warn!("run {}: no longer held by this worker (cancelled or taken over); stopping", job.run_id);
                        (JobOutcome::Done, "lease_lost")
                    }
                    Err(Stop::Storage(e)) => (JobOutcome::Retry(e.to_string()), "retry"),
                }
            }
        }
    }

    /// Renew the lease every third of its length while the run executes.
    fn spawn_heartbeat(&self, run_id: &str) -> tokio::task::JoinHandle<()> {
        let (pool, me, run_id) = (self.pool.clone(), self.me.clone(), run_id.to_string());
        tokio::spawn(logctx::inherit(async move {
            let period = me.lease / 3;
            loop {
                tokio::time::sleep(period).await;
                let (me, run_id) = (me.clone(), run_id.clone());
                let now = shared_models::time::now();
                match blocking(&pool, move |conn| {
                    storage::renew_lease(conn, &run_id, &me, now)
                })
                .await
                {
                    Ok(Fenced::Written) => {}
                    Ok(Fenced::LeaseLost) => return,
                    Err(e) => log::warn!("lease heartbeat failed: {e}"),
                }
            }
        }))
    }

    async fn drive(&self, c: &ClaimedRun, cached: Option<Arc<WorkflowGraph>>) -> Result<(), Stop> {
        // The claim read the definition exactly when the cache had no graph for it.
        let compiled = match (cached, &c.definition) {
            (Some(graph), _) => Ok(graph),
            (None, Some(definition)) => WorkflowGraph::from_stored(definition).map(|graph| {
                let graph = Arc::new(graph);
                self.graphs.insert(&c.run, graph.clone());
                graph
            }),
            (None, None) => Err("the claim read no workflow definition".to_string()),
        };
        let graph = match compiled {
            Ok(g) => g,
            Err(e) => {
                log::error!("run {}: {e}", c.run.id);
                return self
                    .finish(&c.run, RunStatus::Failed, None, Some(e), Vec::new())
                    .await;
            }
        };
        let steps = graph
            .steps
            .iter()
            .map(|s| StepState::from_row(c.steps.iter().find(|r| r.name == s.name.as_str())))
            .collect();
        let mut rs = RunState {
            run: &c.run,
            graph,
            steps,
        };
        if c.lease_takeovers > self.limits.max_lease_takeovers {
            return self.end_poison_run(&rs, c.lease_takeovers).await;
        }
        loop {
            self.resolve_waits(&mut rs).await?;
            let failed = self.execute_ready(&mut rs).await?;
            if let Some(i) = failed {
                let cancelled = rs.unsettled();
                let step = &rs.graph.steps[i].name;
                let reason = format!(
                    "step '{step}' failed: {}",
                    rs.steps[i].error.as_deref().unwrap_or("unknown error")
                );
                return self
                    .finish(rs.run, RunStatus::Failed, None, Some(reason), cancelled)
                    .await;
            }
            let waiting: Vec<usize> = (0..rs.steps.len())
                .filter(|&i| rs.steps[i].status == StepStatus::Waiting)
                .collect();
            if waiting.is_empty() {
                if let Some(stuck) = rs.steps.iter().position(|s| !s.status.is_settled()) {
                    // Cannot happen for a validated graph; never leave a run RUNNING forever.
                    let reason = format!(
                        "step '{}' can never become ready",
                        rs.graph.steps[stuck].name
                    );
                    return self
                        .finish(rs.run, RunStatus::Failed, None, Some(reason), Vec::new())
                        .await;
                }
                let output: Map<String, Value> = rs
                    .graph
                    .leaves()
                    .into_iter()
                    .filter(|&i| rs.steps[i].status == StepStatus::Completed)
                    .map(|i| {
                        (
                            rs.graph.steps[i].name.to_string(),
                            rs.steps[i].output.clone().unwrap_or(Value::Null),
                        )
                    })
                    .collect();
                let output = Value::Object(output);
                if let Err(reason) = self.limits.check_run_output(&output) {
                    return self
                        .finish(rs.run, RunStatus::Failed, None, Some(reason), Vec::new())
                        .await;
                }
                return self
                    .finish(rs.run, RunStatus::Completed, Some(output), None, Vec::new())
                    .await;
            }
            let names: Vec<String> = waiting
                .iter()
                .map(|&i| rs.graph.steps[i].name.to_string())
                .collect();
            let wake_at = waiting.iter().filter_map(|&i| rs.steps[i].wake_at).min();
            let (run_id, me, now) = (
                rs.run.id.clone(),
                self.me.clone(),
                shared_models::time::now(),
            );
            let parked = blocking(&self.pool, move |conn| {
                storage::park_run(conn, &run_id, &names, wake_at, &me, now)
            })
            .await?;
            match parked {
                Park::Parked => {
                    log::info!("run {}: waiting; released", rs.run.id);
                    return Ok(());
                }
                Park::LeaseLost => return Err(Stop::LeaseLost),
                Park::Changed => {
                    let run_id = rs.run.id.clone();
                    let rows = blocking(&self.pool, move |conn| storage::load_steps(conn, &run_id))
                        .await?;
                    rs.reload(&rows);
                }
            }
        }
    }

    /// Settle the waiting steps whose wait is over: a due delay, a child run that ended, a
    /// wait past its timeout. (Approvals are settled by the approve endpoint itself.)
    async fn resolve_waits(&self, rs: &mut RunState<'_>) -> Result<(), Stop> {
        let now = shared_models::time::now();
        for i in 0..rs.steps.len() {
            if rs.steps[i].status != StepStatus::Waiting {
                continue;
            }
            let due = rs.steps[i].wake_at.is_some_and(|t| t <= now);
            let change = match &rs.graph.steps[i].kind {
                StepKind::Delay { seconds } if due => {
                    Some(StepChange::completed(json!({ "seconds": seconds })))
                }
                StepKind::Subworkflow { .. } => self.child_outcome(rs, i, due).await?,
                StepKind::Approval if due => Some(StepChange::failed(timeout_message(
                    &rs.graph.steps[i],
                    "approval",
                ))),
                _ => None,
            };
            if let Some(change) = change {
                self.record(rs, i, change).await?;
            }
        }
        Ok(())
    }

    async fn child_outcome(
        &self,
        rs: &RunState<'_>,
        i: usize,
        due: bool,
    ) -> Result<Option<StepChange>, Stop> {
        let Some(child) = rs.steps[i].child_run_id.clone() else {
            return Ok(Some(StepChange::failed(
                "the child run was never recorded".into(),
            )));
        };
        let id = child.clone();
        let state = blocking(&self.pool, move |conn| storage::child_state(conn, &id)).await?;
        Ok(match state {
            None => Some(StepChange::failed(format!(
                "child run {child} does not exist"
            ))),
            Some((status, output, error)) => match RunStatus::parse(&status) {
                Some(RunStatus::Completed) => {
                    let output = output.unwrap_or(Value::Null);
                    Some(match self.limits.check_step_output(&output) {
                        Ok(()) => StepChange::completed(output),
                        Err(e) => StepChange::failed(format!("child run {child}: {e}")),
                    })
                }
                Some(s) if s.is_terminal() => Some(StepChange::failed(format!(
                    "child run {child} {}: {}",
                    s.as_str().to_lowercase(),
                    error.unwrap_or_else(|| "no error recorded".into())
                ))),
                _ if due => Some(StepChange::failed(timeout_message(
                    &rs.graph.steps[i],
                    &format!("child run {child}"),
                ))),
                _ => None,
            },
        })
    }

    /// Start everything ready, run it to quiescence, and return the first failed step, if any.
    async fn execute_ready(&self, rs: &mut RunState<'_>) -> Result<Option<usize>, Stop> {
        let mut in_flight = FuturesUnordered::new();
        let mut running: HashSet<usize> = HashSet::new();
        let mut failed = rs.steps.iter().position(|s| s.status == StepStatus::Failed);
        loop {
            // Starting steps can settle others at once (skips, failed conditions), which can
            // make more steps ready: repeat until nothing changes.
            let mut changed = true;
            while changed && failed.is_none() {
                changed = false;
                for i in rs.ready(&running) {
                    // The others wait for a step of this run to end (and a turn).
                    if running.len() >= self.limits.max_steps_in_flight_per_run {
                        break;
                    }
                    match self.begin(rs, i).await? {
                        Begin::Settled => changed = true,
                        Begin::Failed => {
                            failed = Some(i);
                            break;
                        }
                        Begin::Waiting => {}
                        Begin::Execute => {
                            running.insert(i);
                            let ctx = rs.context();
                            let (run, step) = (rs.run, rs.graph.steps[i].clone());
                            in_flight.push(self.run_attempts(run, step, rs.record(i), ctx, i));
                        }
                    }
                }
            }
            let Some((i, result)) = in_flight.next().await else {
                return Ok(failed);
            };
            running.remove(&i);
            match result {
                Ok(output) => {
                    rs.steps[i].status = StepStatus::Completed;
                    rs.steps[i].output = Some(output);
                }
                Err(StepEnd::Failed(error)) => {
                    rs.steps[i].status = StepStatus::Failed;
                    rs.steps[i].error = Some(error);
                    failed = failed.or(Some(i));
                }
                Err(StepEnd::Stop(stop)) => return Err(stop),
            }
        }
    }

    /// Decide what a ready step does: skip, fail its condition, start waiting, or execute.
    async fn begin(&self, rs: &mut RunState<'_>, i: usize) -> Result<Begin, Stop> {
        let step = &rs.graph.steps[i];
        if !step.depends_on.is_empty()
            && step
                .depends_on
                .iter()
                .all(|&d| rs.steps[d].status == StepStatus::Skipped)
        {
            self.record(
                rs,
                i,
                StepChange::skipped("every step it depends on was skipped".into()),
            )
            .await?;
            return Ok(Begin::Settled);
        }
        if let Some(condition) = &step.when {
            match render::condition(condition, &rs.context(), self.limits.template_deadline).await {
                Ok(true) => {}
                Ok(false) => {
                    self.record(
                        rs,
                        i,
                        StepChange::skipped(format!("condition is false: {condition}")),
                    )
                    .await?;
                    return Ok(Begin::Settled);
                }
                Err(e) => {
                    self.record(rs, i, StepChange::failed(format!("when: {e}")))
                        .await?;
                    return Ok(Begin::Failed);
                }
            }
        }
        let now = shared_models::time::now();
        let wait_deadline = step
            .timeout
            .and_then(|t| chrono::Duration::from_std(t).ok())
            .map(|t| now + t);
        let change = match &step.kind {
            StepKind::Delay { seconds } => {
                let wake = now + chrono::Duration::milliseconds((seconds * 1000.0).round() as i64);
                StepChange::waiting(Some(wake), None, format!("waiting {seconds}s"))
            }
            StepKind::Approval => {
                StepChange::waiting(wait_deadline, None, "waiting for approval".into())
            }
            StepKind::Subworkflow {
                workflow_id,
                variables,
            } => {
                let rendered = match variables {
                    Some(v) => render::json(v, &rs.context(), self.limits.template_deadline)
                        .await
                        .map(Some),
                    None => Ok(None),
                };
                let vars = match rendered {
                    Ok(None) => Value::Object(Map::new()),
                    Ok(Some(v)) if limits::has_nul(&v) => {
                        let e = "variables contain U+0000, which PostgreSQL cannot store";
                        self.record(rs, i, StepChange::failed(e.into())).await?;
                        return Ok(Begin::Failed);
                    }
                    Ok(Some(v @ Value::Object(_))) => v,
                    Ok(Some(other)) => {
                        self.record(
                            rs,
                            i,
                            StepChange::failed(format!(
                                "variables must render to an object, not {other}"
                            )),
                        )
                        .await?;
                        return Ok(Begin::Failed);
                    }
                    Err(e) => {
                        self.record(rs, i, StepChange::failed(format!("variables: {e}")))
                            .await?;
                        return Ok(Begin::Failed);
                    }
                };
                // Another worker may be starting a child of the same tree: its lock is
                // tried, not waited for, so try again after a pause that grows, holding no
                // connection meanwhile; the lease is renewed at each try.
                let mut pause = TREE_BUSY_FIRST_PAUSE;
                let deadline = Instant::now() + TREE_BUSY_MAX_WAIT;
                let started = loop {
                    let (parent, record, wf, me, vars) = (
                        rs.run.clone(),
                        rs.record(i),
                        workflow_id.clone(),
                        self.me.clone(),
                        vars.clone(),
                    );
                    let now = shared_models::time::now();
                    let started = blocking(&self.pool, move |conn| {
                        storage::start_child_run(
                            conn,
                            &parent,
                            &record,
                            &wf,
                            vars,
                            wait_deadline,
                            &me,
                            now,
                        )
                    })
                    .await?
                    .map_err(|_| Stop::LeaseLost)?;
                    match started {
                        storage::ChildStart::TreeBusy if Instant::now() < deadline => {
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(TREE_BUSY_MAX_PAUSE);
                        }
                        other => break (other, now),
                    }
                };
                match started {
                    (storage::ChildStart::Started(child), now) => {
                        let st = &mut rs.steps[i];
                        st.status = StepStatus::Waiting;
                        st.wake_at = wait_deadline;
                        st.child_run_id = Some(child);
                        st.started_at = Some(now);
                        return Ok(Begin::Waiting);
                    }
                    (storage::ChildStart::Refused(reason), _) => {
                        self.record(rs, i, StepChange::failed(reason)).await?;
                        return Ok(Begin::Failed);
                    }
                    (storage::ChildStart::TreeBusy, _) => {
                        let reason = format!(
                            "could not start the child run: its run tree was busy starting \
                             others for {}s",
                            TREE_BUSY_MAX_WAIT.as_secs()
                        );
                        self.record(rs, i, StepChange::failed(reason)).await?;
                        return Ok(Begin::Failed);
                    }
                }
            }
            _ => return Ok(Begin::Execute),
        };
        self.record(rs, i, change).await?;
        Ok(Begin::Waiting)
    }

    /// Record a step change and mirror it in memory.
    async fn record(
        &self,
        rs: &mut RunState<'_>,
        i: usize,
        change: StepChange,
    ) -> Result<(), Stop> {
        let (record, me, now, c) = (
            rs.record(i),
            self.me.clone(),
            shared_models::time::now(),
            change.clone(),
        );
        let step_type = record.step_type;
        fenced(
            blocking(&self.pool, move |conn| {
                storage::record_step(conn, &record, &c, &me, now)
            })
            .await?,
        )?;
        let st = &mut rs.steps[i];
        if rs.graph.steps[i].kind.waits()
            && st.status == StepStatus::Waiting
            && matches!(change.to, StepStatus::Completed | StepStatus::Failed)
        {
            let waited = st
                .started_at
                .map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0);
            crate::metrics::STEP_DURATION
                .with_label_values(&[step_type, change.to.as_str()])
                .observe(waited);
        }
        if change.to == StepStatus::Waiting {
            st.started_at = Some(now);
        }
        st.status = change.to;
        st.output = change.output;
        st.error = change.error;
        st.wake_at = change.wake_at;
        if change.child_run_id.is_some() {
            st.child_run_id = change.child_run_id;
        }
        Ok(())
    }

    /// Every attempt of one executing step, with its timeout and the retry policy's pauses.
    async fn run_attempts(
        &self,
        run: &RunRow,
        step: Step,
        record: StepRecord,
        ctx: Ctx,
        i: usize,
    ) -> (usize, Result<Value, StepEnd>) {
        (i, self.attempts(run, &step, record, ctx).await)
    }

    async fn attempts(
        &self,
        run: &RunRow,
        step: &Step,
        record: StepRecord,
        ctx: Ctx,
    ) -> Result<Value, StepEnd> {
        // A pure step's failure is its first attempt's result: it is not computed again.
        let mut computed = match self.pure_step(run, step, &record, &ctx).await? {
            Some(Ok(output)) => return Ok(output),
            Some(Err(failure)) => Some(failure),
            None => None,
        };
        let mut tries: u32 = 0;
        loop {
            tries += 1;
            let (rec, me, now) = (record.clone(), self.me.clone(), shared_models::time::now());
            let attempt = blocking(&self.pool, move |conn| {
                storage::start_step(conn, &rec, &me, now)
            })
            .await
            .map_err(|e| StepEnd::Stop(e.into()))?
            .map_err(|_| StepEnd::Stop(Stop::LeaseLost))?;
            log::info!(
                "run {}: step {} started (attempt {attempt})",
                run.id,
                step.name
            );
            let started = Instant::now();
            let result = match computed.take() {
                Some(failure) => Err(failure),
                None => self.execute(run, step, attempt, &ctx).await,
            };
            let elapsed = started.elapsed();
            let change = match &result {
                Ok(output) => StepChange::completed(output.clone()),
                Err(e) if e.retryable && tries < step.retry.max_attempts => StepChange::retrying(
                    attempt,
                    e.message.clone(),
                    step.retry.delay_before(attempt + 1),
                ),
                Err(e) => StepChange::failed(e.message.clone()),
            };
            match &result {
                Ok(_) => log::info!("run {}: step {} completed", run.id, step.name),
                Err(e) => log::warn!(
                    "run {}: step {} attempt {attempt} failed: {e}",
                    run.id,
                    step.name
                ),
            }
            let (change, result) = self.write_step(&record, change, result).await?;
            let outcome = if result.is_ok() {
                StepStatus::Completed
            } else {
                StepStatus::Failed
            };
            crate::metrics::STEP_DURATION
                .with_label_values(&[step.kind.type_name(), outcome.as_str()])
                .observe(elapsed.as_secs_f64());
            match (result, change.to) {
                (Ok(output), _) => return Ok(output),
                (Err(_), StepStatus::Pending) => {
                    tokio::time::sleep(step.retry.delay_before(attempt + 1)).await
                }
                (Err(e), _) => return Err(StepEnd::Failed(e.message)),
            }
        }
    }

    /// One attempt of a step: executed within its timeout, its output checked before it is
    /// written ([`WorkLimits::check_step_output`]).
    async fn execute(
        &self,
        run: &RunRow,
        step: &Step,
        attempt: i32,
        ctx: &Ctx,
    ) -> Result<Value, StepFailure> {
        let env = self.step_env(run, step, attempt);
        let output = match self.http.step_timeout(step.timeout) {
            Some(limit) => tokio::time::timeout(limit, steps::execute(&step.kind, ctx, &env))
                .await
                .unwrap_or_else(|_| Err(StepFailure::retry(self.http.timed_out(limit)))),
            None => steps::execute(&step.kind, ctx, &env).await,
        }?;
        self.limits
            .check_step_output(&output)
            .map_err(StepFailure::fatal)?;
        Ok(output)
    }

    /// Record an attempt's change. A write PostgreSQL refuses (not an outage: the same write
    /// would be refused again) fails the step with that reason instead of retrying the job
    /// forever; returns the change and the result as recorded.
    async fn write_step(
        &self,
        record: &StepRecord,
        change: StepChange,
        result: Result<Value, StepFailure>,
    ) -> Result<(StepChange, Result<Value, StepFailure>), StepEnd> {
        let write = |c: StepChange| {
            let (rec, me, now) = (record.clone(), self.me.clone(), shared_models::time::now());
            blocking(&self.pool, move |conn| {
                storage::record_step(conn, &rec, &c, &me, now)
            })
        };
        match write(change.clone()).await {
            Ok(written) => {
                fenced(written).map_err(StepEnd::Stop)?;
                Ok((change, result))
            }
            Err(e) if is_refused(&e) && change.to != StepStatus::Failed => {
                let failure = StepFailure::fatal(format!("the step could not be written: {e}"));
                log::warn!("run {}: {failure}", record.run_id);
                let failed = StepChange::failed(failure.message.clone());
                let written = write(failed.clone())
                    .await
                    .map_err(|e| StepEnd::Stop(e.into()))?;
                fenced(written).map_err(StepEnd::Stop)?;
                Ok((failed, Err(failure)))
            }
            Err(e) => Err(StepEnd::Stop(e.into())),
        }
    }

    /// What a step's execution may use, for attempt `attempt` of `step` of `run`.
    fn step_env<'a>(&'a self, run: &'a RunRow, step: &'a Step, attempt: i32) -> StepEnv<'a> {
        StepEnv {
            agents: &self.agents,
            http: &self.http,
            agent_timeout: self.agent_timeout,
            step_timeout: self.http.step_timeout(step.timeout),
            run_id: &run.id,
            workflow_id: &run.workflow_id,
            step: step.name.as_str(),
            attempt,
            template_deadline: self.limits.template_deadline,
        }
    }

    /// A `transform` step computes its value from the run's context alone: nothing outside
    /// the database sees it, and computing it again gives the same value. So it is computed
    /// first, and its start and its completion are checkpointed together, in one transaction
    /// shared with the pure steps of the other runs in flight ([`Checkpointer`]); a worker
    /// that dies before the commit leaves no trace, and the step simply runs again.
    ///
    /// `None`: not a transform. `Some(Err)`: it failed (its template, its output's limits, or
    /// a checkpoint PostgreSQL refused), which the general path records as its first attempt.
    async fn pure_step(
        &self,
        run: &RunRow,
        step: &Step,
        record: &StepRecord,
        ctx: &Ctx,
    ) -> Result<Option<Result<Value, StepFailure>>, StepEnd> {
        if !matches!(step.kind, StepKind::Transform { .. }) {
            return Ok(None);
        }
        let started = Instant::now();
        let output = match self.execute(run, step, 1, ctx).await {
            Ok(output) => output,
            Err(failure) => return Ok(Some(Err(failure))),
        };
        let elapsed = started.elapsed();
        let written = self
            .checkpoints
            .checkpoint(PureStep {
                record: record.clone(),
                output: output.clone(),
            })
            .await;
        let written = match written {
            Ok(written) => written,
            // Refused on its own (the writer splits a failed batch): it would be again.
            Err(e) if is_refused(&e) => {
                let failure = StepFailure::fatal(format!("the step could not be written: {e}"));
                return Ok(Some(Err(failure)));
            }
            Err(e) => return Err(StepEnd::Stop(e.into())),
        };
        fenced(written).map_err(StepEnd::Stop)?;
        log::info!("run {}: step {} completed", run.id, step.name);
        crate::metrics::STEP_DURATION
            .with_label_values(&[step.kind.type_name(), StepStatus::Completed.as_str()])
            .observe(elapsed.as_secs_f64());
        Ok(Some(Ok(output)))
    }

    /// End a run taken over more than `MAX_LEASE_TAKEOVERS` times without running it: each
    /// worker that held it stopped renewing its lease (killed, out of memory, wedged), so the
    /// next would likely go the same way.
    async fn end_poison_run(&self, rs: &RunState<'_>, takeovers: i32) -> Result<(), Stop> {
        let reason = format!(
            "poison run: taken over {takeovers} times (MAX_LEASE_TAKEOVERS); it keeps killing or wedging workers"
        );
        log::error!("run {}: {reason}", rs.run.id);
        self.finish(
            rs.run,
            RunStatus::Failed,
            None,
            Some(reason),
            rs.unsettled(),
        )
        .await
    }

    async fn finish(
        &self,
        run: &RunRow,
        status: RunStatus,
        output: Option<Value>,
        error: Option<String>,
        cancelled: Vec<StepRecord>,
    ) -> Result<(), Stop> {
        log::info!("run {}: {}", run.id, status.as_str());
        let end = RunEnd {
            status,
            output,
            error: error.map(limits::text_column),
            cancelled,
        };
        // The common end (nothing to cancel, no parent to wake) is batched with the other
        // runs' writes; the rest is its own transaction.
        let written = match RunFinish::simple(run, &end) {
            Some(simple) => self.checkpoints.finish(simple).await,
            None => self.finish_alone(run, &end).await,
        };
        let (written, status) = match written {
            // PostgreSQL refused this end (the writer splits a failed batch, so it is this
            // run's own): it would refuse it again, so the run FAILS with that reason.
            Err(e) if is_refused(&e) && (status != RunStatus::Failed || end.output.is_some()) => {
                let failed = RunEnd {
                    status: RunStatus::Failed,
                    output: None,
                    error: Some(limits::text_column(format!(
                        "the run's end could not be written: {e}"
                    ))),
                    cancelled: end.cancelled,
                };
                log::warn!("run {}: {}", run.id, failed.error.as_deref().unwrap_or(""));
                (self.finish_alone(run, &failed).await, RunStatus::Failed)
            }
            other => (other, status),
        };
        fenced(written?)?;
        crate::metrics::RUNS_FINISHED
            .with_label_values(&[status.as_str()])
            .inc();
        Ok(())
    }

    /// [`storage::finish_run`] in its own transaction.
    async fn finish_alone(&self, run: &RunRow, end: &RunEnd) -> Result<Fenced, StorageError> {
        let (run, me, now) = (run.clone(), self.me.clone(), shared_models::time::now());
        let end = RunEnd {
            status: end.status,
            output: end.output.clone(),
            error: end.error.clone(),
            cancelled: end.cancelled.clone(),
        };
        blocking(&self.pool, move |conn| {
            storage::finish_run(conn, &run, &end, &me, now)
        })
        .await
    }
}

/// What starting a ready step led to.
enum Begin {
    /// Skipped: settled without executing.
    Settled,
    /// Failed before executing (its condition or its child run could not start).
    Failed,
    /// Now WAITING (delay, approval, subworkflow).
    Waiting,
    /// To be executed (agent, http, transform).
    Execute,
}

enum StepEnd {
    Failed(String),
    Stop(Stop),
}

fn timeout_message(step: &Step, what: &str) -> String {
    let secs = step.timeout.map(|t| t.as_secs_f64()).unwrap_or_default();
    format!("timed out after {secs}s waiting for {what}")
}
