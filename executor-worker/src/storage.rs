//! Plain diesel functions over `&mut PgConnection`. The worker owns `step_runs` and
//! `run_events`, and a run's status once the run exists (the runtime's run-control endpoints
//! aside: cancel, retry, approve).
//!
//! Every write is fenced by the lease: it happens only while `runs.lease_owner` is this
//! worker. A worker that lost its run (lease expired and taken over, or the run cancelled)
//! finds out at its next write ([`Fenced::LeaseLost`]) and stops touching it.

use crate::limits::text_column;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
use diesel::sql_types::{Array, BigInt, Int4, Jsonb, Nullable, Text, Timestamptz};
use serde_json::Value;
use shared_models::limits::{self, QuotaExceeded};
use shared_models::models::{NewRunEvent, RunRow, StepRunRow};
use shared_models::prepared::{column, prepared, Id};
use shared_models::runs::{self, NewRun};
use shared_models::schema::{runs as runs_table, step_runs, workflow_versions, workflows};
use shared_models::status::{RunStatus, StepStatus};
use std::time::Duration;

/// The columns of [`RunRow`], for the `RETURNING` of prepared statements: a list, not `*`, so
/// that a column added by a later release's migration does not change the result type of a
/// statement prepared before it on a live connection (PostgreSQL refuses those: "cached plan
/// must not change result type").
macro_rules! run_columns {
    () => {
        "id, org_id, workflow_id, workflow_version, status, variables, output, error, \
         created_at, updated_at, started_at, completed_at, lease_owner, lease_expires_at, \
         idempotency_key, request_hash, request_id, parent_run_id, parent_step, wake_at, root_run_id"
    };
}

/// Who is writing, and for how long a claim or heartbeat holds the run.
#[derive(Debug, Clone)]
pub struct LeaseHolder {
    pub worker_id: String,
    pub lease: Duration,
}

impl LeaseHolder {
    fn expires(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::seconds(30))
    }
}

/// A run claimed for execution, with all it needs to resume.
#[derive(Debug)]
pub struct ClaimedRun {
    pub run: RunRow,
    /// The workflow version's definition; `None` when the caller said it has it.
    pub definition: Option<Value>,
    pub steps: Vec<StepRunRow>,
    /// How many times the run was taken over after its worker stopped renewing its lease,
    /// this claim included when it is one (`runs.lease_takeovers`); 0 otherwise. The engine
    /// ends a run over `MAX_LEASE_TAKEOVERS` as a poison run instead of running it.
    pub lease_takeovers: i32,
}

#[derive(Debug)]
pub enum Claim {
    Claimed(Box<ClaimedRun>),
    /// Not started: its org already has `MAX_RUNNING_PER_ORG` runs RUNNING. The run keeps its
    /// status (PENDING or WAITING) with `wake_at` [`RUNNING_SLOT_HOLD`] from now, and the
    /// runtime's scheduler queues it again then.
    Held,
    /// Already ended: a duplicate delivery.
    Ended,
    /// Another live worker holds it: a duplicate delivery.
    HeldElsewhere,
    /// No such run (in that org): a poison message.
    Missing,
}

/// Outcome of a fenced write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    Written,
    LeaseLost,
}

/// How long a run held back by its org's running cap waits before it is tried again (the
/// scheduler queues it once its `wake_at` has come).
pub const RUNNING_SLOT_HOLD: Duration = Duration::from_secs(1);

/// Take the run: PENDING or WAITING -> RUNNING, or resume a RUNNING run whose lease expired
/// (its worker died) or that this worker already holds (a redelivery to the same worker).
///
/// `max_running_per_org` (0 = no cap) bounds the org's RUNNING runs: a PENDING or WAITING run
/// that would exceed it is not started but [`Claim::Held`]. A RUNNING run taken over or
/// redelivered adds no running run and is never held. The count and the start of one org's
/// claims are serialised by the org's lock (`thygon_lock_and_count_running`, a migration),
/// held to the claim's commit: a PENDING run below the cap is claimed in one statement
/// ([`claim_pending`]), everything else in a transaction that locks the run first
/// ([`claim_locked`]).
///
/// The definition of the run's workflow version is read only when `has_definition` says the
/// caller does not have it already (versions never change once written).
pub fn claim_run(
    conn: &mut PgConnection,
    run_id: &str,
    org_id: &str,
    me: &LeaseHolder,
    max_running_per_org: u32,
    now: DateTime<Utc>,
    has_definition: impl FnMut(&RunRow) -> bool,
) -> Result<Claim, Error> {
    let job = ClaimJob {
        run_id: run_id.to_string(),
        org_id: org_id.to_string(),
    };
    let mut claims = claim_runs(conn, &[job], me, max_running_per_org, now, has_definition)?;
    claims.pop().unwrap_or(Ok(Claim::Missing))
}

/// A job to claim: its run, in its org.
#[derive(Debug, Clone)]
pub struct ClaimJob {
    pub run_id: String,
    pub org_id: String,
}

/// [`claim_run`] for many jobs at once, one answer per job, in order: the PENDING runs below
/// their orgs' caps are claimed together in one statement ([`claim_pending`]) and their step
/// rows read in one query; each of the others (held, WAITING, taken over, redelivered, ended,
/// missing) goes through [`claim_locked`] on its own, and only its own answer is an error when
/// that fails. The outer error is the batch statement's: nothing was claimed.
///
/// The run ids must be distinct (the consumer never hands one worker the same run twice at
/// once); a repeated id is answered [`Claim::HeldElsewhere`] after its first.
pub fn claim_runs(
    conn: &mut PgConnection,
    jobs: &[ClaimJob],
    me: &LeaseHolder,
    max_running_per_org: u32,
    now: DateTime<Utc>,
    mut has_definition: impl FnMut(&RunRow) -> bool,
) -> Result<Vec<Result<Claim, Error>>, Error> {
    let pending = claim_pending(conn, jobs, me, max_running_per_org, now)?;
    let ids: Vec<&str> = pending.iter().map(|r| r.id.as_str()).collect();
    let mut steps = load_steps_of(conn, &ids)?;
    let mut claimed: std::collections::HashMap<String, RunRow> =
        pending.into_iter().map(|r| (r.id.clone(), r)).collect();
    let mut seen = std::collections::HashSet::new();
    // A claimed run with what it needs to resume: its definition too when the caller has not
    // got it, read once per version in the batch.
    let mut definitions = Definitions::default();
    let mut resume = |conn: &mut PgConnection, run: RunRow, steps: Vec<StepRunRow>| {
        let definition = if has_definition(&run) {
            None
        } else {
            Some(definitions.of(conn, &run)?)
        };
        Ok(ClaimedRun {
            run,
            definition,
            steps,
            lease_takeovers: 0,
        })
    };
    let mut answers = Vec::with_capacity(jobs.len());
    for job in jobs {
        if !seen.insert(job.run_id.as_str()) {
            answers.push(Ok(Claim::HeldElsewhere));
            continue;
        }
        let answer = match claimed.remove(&job.run_id) {
            Some(run) => {
                let steps = steps.remove(&run.id).unwrap_or_default();
                resume(conn, run, steps).map(|c| Claim::Claimed(Box::new(c)))
            }
            None => claim_locked(conn, job, me, max_running_per_org, now, &mut resume),
        };
        answers.push(answer);
    }
    Ok(answers)
}

/// The claim of one run that [`claim_pending`] did not take, in a transaction that locks the
/// run first: a WAITING run (resumed), a RUNNING run (taken over or redelivered), a run held
/// at its org's cap, or nothing to do (ended, held elsewhere, missing). `resume` completes a
/// claimed run with what it needs (see [`claim_runs`]).
fn claim_locked(
    conn: &mut PgConnection,
    job: &ClaimJob,
    me: &LeaseHolder,
    max_running_per_org: u32,
    now: DateTime<Utc>,
    resume: &mut impl FnMut(&mut PgConnection, RunRow, Vec<StepRunRow>) -> Result<ClaimedRun, Error>,
) -> Result<Claim, Error> {
    let (run_id, org_id) = (job.run_id.as_str(), job.org_id.as_str());
    conn.transaction(|conn| {
        let run: Option<RunRow> = runs_table::table
            .find(run_id)
            .filter(runs_table::org_id.eq(org_id))
            .select(RunRow::as_select())
            .for_no_key_update()
            .first(conn)
            .optional()?;
        let Some(run) = run else {
            return Ok(Claim::Missing);
        };
        let status = RunStatus::parse(&run.status).unwrap_or(RunStatus::Failed);
        if status.is_terminal() {
            return Ok(Claim::Ended);
        }
        let lease_live = run.lease_expires_at.is_some_and(|t| t > now);
        let mine = run.lease_owner.as_deref() == Some(me.worker_id.as_str());
        if status == RunStatus::Running && lease_live && !mine {
            return Ok(Claim::HeldElsewhere);
        }
        if status != RunStatus::Running
            && hold_for_slot(conn, &run, status, max_running_per_org, now)?
        {
            return Ok(Claim::Held);
        }
        // The row is locked: `started_at` stays what it was read as, or becomes now.
        let claimed_row: RunRow = prepared(concat!(
            "UPDATE runs SET status = 'RUNNING', started_at = COALESCE(started_at, $2),
                    updated_at = $2, wake_at = NULL, lease_owner = $3, lease_expires_at = $4
             WHERE id = $1
             RETURNING ",
            run_columns!()
        ))
        .bind::<Text, _>(run_id)
        .bind::<Timestamptz, _>(now)
        .bind::<Text, _>(&me.worker_id)
        .bind::<Timestamptz, _>(me.expires(now))
        .get_result(conn)?;
        // A takeover: the run's worker stopped renewing its lease (a run handed back at
        // shutdown has no owner, and is not counted).
        let takeovers = if status == RunStatus::Running && !mine && run.lease_owner.is_some() {
            count_takeover(conn, run_id)?
        } else {
            0
        };
        let mut events = Vec::new();
        if status != RunStatus::Running {
            events.push(NewRunEvent::transition(
                run_id,
                now,
                None,
                status.as_str(),
                RunStatus::Running.as_str(),
            ));
            let verb = if status == RunStatus::Pending {
                "started"
            } else {
                "resumed"
            };
            events.push(NewRunEvent::log(
                run_id,
                now,
                None,
                "INFO",
                started_log(verb, me),
            ));
        } else if !mine {
            let previous = run.lease_owner.as_deref().unwrap_or("another worker");
            let message = format!(
                "run resumed on worker {} after {previous} stopped holding it{}",
                me.worker_id,
                if takeovers > 0 {
                    format!(" (takeover {takeovers})")
                } else {
                    String::new()
                }
            );
            events.push(NewRunEvent::log(run_id, now, None, "WARN", message));
        }
        runs::insert_events(conn, &events)?;
        let steps = load_steps(conn, run_id)?;
        resume(conn, claimed_row, steps).map(|mut c| {
            c.lease_takeovers = takeovers;
            Claim::Claimed(Box::new(c))
        })
    })
}

/// Count one more takeover of the run (its row locked by the claim); returns the new count.
fn count_takeover(conn: &mut PgConnection, run_id: &str) -> Result<i32, Error> {
    diesel::update(runs_table::table.find(run_id))
        .set(runs_table::lease_takeovers.eq(runs_table::lease_takeovers + 1))
        .returning(runs_table::lease_takeovers)
        .get_result(conn)
}

fn started_log(verb: &str, me: &LeaseHolder) -> String {
    format!("run {verb} on worker {}", me.worker_id)
}

/// The statement of [`claim_pending`] (public for the test of its plan).
///
/// Written for the plan PostgreSQL keeps for it (prepared, it settles on a generic plan made
/// once, from the statistics of that moment): each run is looked up by its key in a lateral
/// join, and the status is a parameter ($8), so that the partial index of PENDING runs
/// (`runs_pending_by_age`) cannot be used. Statistics taken while few runs were PENDING make
/// that index look empty; during a backlog, such a plan scans every PENDING run for each batch
/// (seen in the bench: 2.7-3.5 ms per batch, against 0.4 ms).
pub const CLAIM_PENDING: &str = concat!(
    "WITH batch AS (
         SELECT b.id, b.org_id, b.position
         FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS b(id, org_id, position)
     ), pending AS (
         SELECT r.id, r.org_id,
                row_number() OVER (PARTITION BY r.org_id ORDER BY b.position) AS place
         FROM batch b
         CROSS JOIN LATERAL (
             SELECT id, org_id FROM runs
             WHERE id = b.id AND org_id = b.org_id AND status = $8
             OFFSET 0
         ) r
     ), caps AS (
         SELECT o.org_id,
                COALESCE((SELECT g.max_running_runs FROM orgs g WHERE g.id = o.org_id), $7) AS cap
         FROM (SELECT DISTINCT org_id FROM pending) o
     ), slots AS (
         SELECT c.org_id, c.cap - thygon_lock_and_count_running(c.org_id) AS free
         FROM (SELECT org_id, cap FROM caps WHERE cap > 0 ORDER BY org_id) c
     ), admitted AS (
         SELECT p.id FROM pending p
         WHERE p.place <= COALESCE((SELECT s.free FROM slots s WHERE s.org_id = p.org_id),
                                   p.place)
     ), claimed AS (
         UPDATE runs SET status = 'RUNNING', started_at = COALESCE(started_at, $3),
                updated_at = $3, wake_at = NULL, lease_owner = $4, lease_expires_at = $5
         WHERE id IN (SELECT id FROM admitted) AND status = $8
         RETURNING ",
    run_columns!(),
    "
     ), logged AS (
         INSERT INTO run_events (run_id, at, kind, from_status, to_status, level, message)
         SELECT c.id, $3, e.kind, e.from_status, e.to_status, e.level, e.message
         FROM claimed c,
              (VALUES (1, 'transition', 'PENDING', 'RUNNING', NULL, NULL),
                      (2, 'log', NULL, NULL, 'INFO', $6))
              AS e(position, kind, from_status, to_status, level, message)
         ORDER BY c.id, e.position
     )
     SELECT * FROM claimed"
);

/// Claim the PENDING runs among `jobs` in one statement (no explicit transaction): what
/// [`claim_locked`] writes for each (RUNNING, lease, the transition and the start line), for
/// as many of each org's runs, in the jobs' order, as its cap leaves room for: the org's
/// `maxRunningRuns` override (a primary-key lookup in `orgs`), else `cap` (0 = none).
/// Returns the runs claimed; a job whose run is not PENDING (or not in that org), or that its
/// org's cap leaves out, is not among them.
///
/// Rows are locked by the update itself, so a concurrent claim or cancel waits for it and then
/// finds the run no longer PENDING. With a cap, `thygon_lock_and_count_running` takes each
/// org's lock (kept until this statement commits), in the orgs' order so that two batches
/// cannot wait on each other, and counts with a snapshot taken after it: claims of one org are
/// serialised from their count to their commit, one statement long. A run that stopped being
/// PENDING between the statement's snapshot and its update still used a place, so a batch
/// may start fewer than the cap allows, never more.
///
/// Step rows are read after it commits (a retried run has some): a cancel in between clears
/// the lease, which the run's first fenced write finds.
fn claim_pending(
    conn: &mut PgConnection,
    jobs: &[ClaimJob],
    me: &LeaseHolder,
    cap: u32,
    now: DateTime<Utc>,
) -> Result<Vec<RunRow>, Error> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    prepared(CLAIM_PENDING)
        .bind::<Array<Text>, _>(column(jobs, |j| j.run_id.as_str()))
        .bind::<Array<Text>, _>(column(jobs, |j| j.org_id.as_str()))
        .bind::<Timestamptz, _>(now)
        .bind::<Text, _>(&me.worker_id)
        .bind::<Timestamptz, _>(me.expires(now))
        .bind::<Text, _>(started_log("started", me))
        .bind::<BigInt, _>(i64::from(cap))
        .bind::<Text, _>(RunStatus::Pending.as_str())
        .load(conn)
}

/// In `claim_run`'s transaction, with the run row locked: when the run's org already has
/// its cap of runs RUNNING (its `maxRunningRuns` override, else `default_cap`; 0 = no cap),
/// hold the run back (status unchanged, `wake_at` = now +
/// [`RUNNING_SLOT_HOLD`], and a log line the first time a PENDING run is held) and return
/// true. The org's transaction-scoped lock (taken by `thygon_lock_and_count_running`, which
/// counts after it is granted) serialises the count-then-start of every claim in that org, so
/// two workers cannot both take its last slot.
fn hold_for_slot(
    conn: &mut PgConnection,
    run: &RunRow,
    status: RunStatus,
    default_cap: u32,
    now: DateTime<Utc>,
) -> Result<bool, Error> {
    #[derive(QueryableByName)]
    struct Running {
        #[diesel(sql_type = BigInt)]
        cap: i64,
        #[diesel(sql_type = BigInt)]
        running: i64,
    }
    // The org's lock is taken (and the count made) only when there is a cap.
    let Running { cap, running } = prepared(
        "SELECT c.cap,
                CASE WHEN c.cap > 0 THEN thygon_lock_and_count_running($1) ELSE 0 END AS running
         FROM (SELECT COALESCE((SELECT max_running_runs FROM orgs WHERE id = $1)::int8, $2) AS cap) c",
    )
    .bind::<Text, _>(&run.org_id)
    .bind::<BigInt, _>(i64::from(default_cap))
    .get_result::<Running>(conn)?;
    if cap <= 0 || running < cap {
        return Ok(false);
    }
    let hold =
        chrono::Duration::from_std(RUNNING_SLOT_HOLD).unwrap_or(chrono::Duration::seconds(1));
    diesel::update(runs_table::table.find(&run.id))
        .set((
            runs_table::wake_at.eq(now + hold),
            runs_table::updated_at.eq(now),
        ))
        .execute(conn)?;
    if status == RunStatus::Pending && run.wake_at.is_none() {
        // The setting, or the org's own quota when it overrides it.
        let limit = if cap == i64::from(default_cap) {
            "MAX_RUNNING_PER_ORG"
        } else {
            "maxRunningRuns"
        };
        let message = format!(
            "waiting for a running slot: org has {running} of {cap} runs running ({limit})"
        );
        runs::insert_events(
            conn,
            &[NewRunEvent::log(&run.id, now, None, "INFO", message)],
        )?;
    }
    Ok(true)
}

/// The definitions read during one claim batch, by workflow version: the runs of a version
/// the caller has not got yet (a worker's first batch of it) read it once, not once each.
#[derive(Default)]
struct Definitions(std::collections::HashMap<(String, String, i32), Value>);

impl Definitions {
    /// The definition of the run's workflow version.
    fn of(&mut self, conn: &mut PgConnection, run: &RunRow) -> Result<Value, Error> {
        let key = (
            run.org_id.clone(),
            run.workflow_id.clone(),
            run.workflow_version,
        );
        if let Some(definition) = self.0.get(&key) {
            return Ok(definition.clone());
        }
        let definition: Value = workflow_versions::table
            .find((&run.org_id, &run.workflow_id, run.workflow_version))
            .select(workflow_versions::definition)
            .first(conn)?;
        self.0.insert(key, definition.clone());
        Ok(definition)
    }
}

/// The step rows of one run, in position order.
pub fn load_steps(conn: &mut PgConnection, run_id: &str) -> Result<Vec<StepRunRow>, Error> {
    Ok(load_steps_of(conn, &[run_id])?
        .remove(run_id)
        .unwrap_or_default())
}

/// The statement of [`load_steps_of`] (public for the test of its plan).
pub const STEPS_OF: &str =
    "SELECT s.run_id, s.name, s.position, s.step_type, s.status, s.attempt, s.started_at,
            s.completed_at, s.output, s.error, s.wake_at, s.child_run_id
     FROM unnest($1::text[]) AS b(id)
     CROSS JOIN LATERAL (SELECT * FROM step_runs WHERE run_id = b.id OFFSET 0) s";

/// The step rows of `run_ids`, by run, each run's in position order: one statement.
///
/// Each run's rows are looked up on their own (a lateral join on `run_id = b.id`), not with
/// `run_id = ANY($1)`: a plan PostgreSQL made once for the statement (prepared, it keeps a
/// generic one) while `step_runs` was small scans the whole table for `ANY` (seen in the bench:
/// 2.2 ms per claim batch, for no rows), while a lookup of one run's rows stays an index probe.
fn load_steps_of(
    conn: &mut PgConnection,
    run_ids: &[&str],
) -> Result<std::collections::HashMap<String, Vec<StepRunRow>>, Error> {
    let mut by_run: std::collections::HashMap<String, Vec<StepRunRow>> = Default::default();
    if run_ids.is_empty() {
        return Ok(by_run);
    }
    let rows: Vec<StepRunRow> = prepared(STEPS_OF)
        .bind::<Array<Text>, _>(run_ids)
        .load(conn)?;
    for row in rows {
        by_run.entry(row.run_id.clone()).or_default().push(row);
    }
    for steps in by_run.values_mut() {
        steps.sort_by_key(|s| s.position);
    }
    Ok(by_run)
}

/// Touch the run while holding its lease: extends the lease and moves `updatedAt`.
fn touch(
    conn: &mut PgConnection,
    run_id: &str,
    me: &LeaseHolder,
    now: DateTime<Utc>,
) -> Result<Fenced, Error> {
    let n = diesel::update(
        runs_table::table
            .find(run_id)
            .filter(runs_table::lease_owner.eq(&me.worker_id)),
    )
    .set((
        runs_table::updated_at.eq(now),
        runs_table::lease_expires_at.eq(me.expires(now)),
    ))
    .execute(conn)?;
    Ok(if n == 1 {
        Fenced::Written
    } else {
        Fenced::LeaseLost
    })
}

/// The heartbeat: keep holding the run during a long step.
pub fn renew_lease(
    conn: &mut PgConnection,
    run_id: &str,
    me: &LeaseHolder,
    now: DateTime<Utc>,
) -> Result<Fenced, Error> {
    let n = diesel::update(
        runs_table::table
            .find(run_id)
            .filter(runs_table::lease_owner.eq(&me.worker_id)),
    )
    .set(runs_table::lease_expires_at.eq(me.expires(now)))
    .execute(conn)?;
    Ok(if n == 1 {
        Fenced::Written
    } else {
        Fenced::LeaseLost
    })
}

/// Which step is being recorded.
#[derive(Debug, Clone)]
pub struct StepRecord {
    pub run_id: String,
    pub name: String,
    pub position: i32,
    pub step_type: &'static str,
}

/// Record an attempt starting: RUNNING, attempt + 1, with its transition and log line.
/// Returns the attempt number.
pub fn start_step(
    conn: &mut PgConnection,
    step: &StepRecord,
    me: &LeaseHolder,
    now: DateTime<Utc>,
) -> Result<Result<i32, Fenced>, Error> {
    conn.transaction(|conn| {
        if touch(conn, &step.run_id, me, now)? == Fenced::LeaseLost {
            return Ok(Err(Fenced::LeaseLost));
        }
        let previous: Option<(String, i32)> = step_runs::table
            .find((&step.run_id, &step.name))
            .select((step_runs::status, step_runs::attempt))
            .first(conn)
            .optional()?;
        let (from, attempt) = match previous {
            Some((status, attempt)) => (status, attempt + 1),
            None => (StepStatus::Pending.as_str().to_string(), 1),
        };
        let mut row = StepRunRow::new(
            &step.run_id,
            &step.name,
            step.position,
            step.step_type,
            StepStatus::Running.as_str(),
        );
        row.attempt = attempt;
        row.started_at = Some(now);
        upsert_step(conn, &row)?;
        runs::insert_events(conn, &start_events(step, &from, attempt, now))?;
        Ok(Ok(attempt))
    })
}

/// What an attempt's start writes to the run's stream: the transition to RUNNING, a warning
/// when the previous attempt was cut off (found RUNNING), and the start line.
fn start_events(
    step: &StepRecord,
    from: &str,
    attempt: i32,
    now: DateTime<Utc>,
) -> Vec<NewRunEvent> {
    let running = StepStatus::Running.as_str();
    let mut events = vec![NewRunEvent::transition(
        &step.run_id,
        now,
        Some(&step.name),
        from,
        running,
    )];
    if from == running {
        let message = format!(
            "attempt {} was cut off before it finished; trying again",
            attempt - 1
        );
        events.push(NewRunEvent::log(
            &step.run_id,
            now,
            Some(&step.name),
            "WARN",
            message,
        ));
    }
    let message = format!("{} step started (attempt {attempt})", step.step_type);
    events.push(NewRunEvent::log(
        &step.run_id,
        now,
        Some(&step.name),
        "INFO",
        message,
    ));
    events
}

/// The fence of a checkpoint batch (public for the test of its plan): the leases of the runs
/// `$3` still held by `$4` extended, and every step row of those runs, or one row with no
/// step for a run that has none yet.
pub const FENCE_STEPS: &str = "WITH held AS (
         UPDATE runs SET updated_at = $1, lease_expires_at = $2
         WHERE id = ANY($3) AND lease_owner = $4
         RETURNING id
     )
     SELECT h.id AS run_id, s.name, s.status, s.attempt
     FROM held h
     LEFT JOIN LATERAL (
         SELECT name, status, attempt FROM step_runs WHERE run_id = h.id OFFSET 0
     ) s ON true";

/// A run the fence found held, with one of its steps' previous state (none when it has no
/// step rows yet).
#[derive(QueryableByName)]
struct HeldStep {
    #[diesel(sql_type = Text)]
    run_id: String,
    #[diesel(sql_type = Nullable<Text>)]
    name: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    status: Option<String>,
    #[diesel(sql_type = Nullable<Int4>)]
    attempt: Option<i32>,
}

/// A pure step's whole attempt (computed, not yet recorded), for [`checkpoint_pure_steps`].
#[derive(Debug, Clone)]
pub struct PureStep {
    pub record: StepRecord,
    pub output: Value,
}

/// Checkpoint the start and the completion of many pure steps, of any of the runs this
/// worker holds, in ONE transaction of two statements whatever their number (group commit):
/// the fence (every run's lease extended, those no longer held left out) returning the held
/// runs' previous step states, then one upsert of every step row with one insert of every
/// event (a CTE). What is written for each
/// step is exactly what [`start_step`] then [`record_step`] with [`StepChange::completed`]
/// would write. Returns, in the order given, whether each step was written or its run's
/// lease was lost (then nothing of it was written).
pub fn checkpoint_pure_steps(
    conn: &mut PgConnection,
    steps: &[PureStep],
    me: &LeaseHolder,
    now: DateTime<Utc>,
) -> Result<Vec<Fenced>, Error> {
    write_batch(conn, steps, &[], me, now).map(|(steps, _)| steps)
}

/// [`checkpoint_pure_steps`] and [`finish_runs`] in ONE transaction: what the
/// [`crate::checkpoints`] writer commits for each batch.
pub fn write_batch(
    conn: &mut PgConnection,
    steps: &[PureStep],
    ends: &[RunFinish],
    me: &LeaseHolder,
    now: DateTime<Utc>,
) -> Result<(Vec<Fenced>, Vec<Fenced>), Error> {
    conn.transaction(|conn| {
        let steps = if steps.is_empty() {
            Vec::new()
        } else {
            pure_steps_in(conn, steps, me, now)?
        };
        let ends = if ends.is_empty() {
            Vec::new()
        } else {
            finish_runs_in(conn, ends, me, now)?
        };
        Ok((steps, ends))
    })
}

/// The body of [`checkpoint_pure_steps`], inside the caller's transaction.
fn pure_steps_in(
    conn: &mut PgConnection,
    steps: &[PureStep],
    me: &LeaseHolder,
    now: DateTime<Utc>,
) -> Result<Vec<Fenced>, Error> {
    let mut ids: Vec<&str> = steps.iter().map(|s| s.record.run_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    // The fence and the previous states of the held runs' steps, in one statement: a held run
    // without steps yet comes back once, with no step.
    let fenced: Vec<HeldStep> = prepared(FENCE_STEPS)
        .bind::<Timestamptz, _>(now)
        .bind::<Timestamptz, _>(me.expires(now))
        .bind::<Array<Text>, _>(&ids)
        .bind::<Text, _>(&me.worker_id)
        .load(conn)?;
    let held: std::collections::HashSet<&str> = fenced.iter().map(|r| r.run_id.as_str()).collect();
    let previous: std::collections::HashMap<(&str, &str), (&str, i32)> = fenced
        .iter()
        .filter_map(|r| {
            let (name, status, attempt) = (r.name.as_deref()?, r.status.as_deref()?, r.attempt?);
            Some(((r.run_id.as_str(), name), (status, attempt)))
        })
        .collect();
    let live: Vec<&PureStep> = steps
        .iter()
        .filter(|s| held.contains(s.record.run_id.as_str()))
        .collect();
    if !live.is_empty() {
        let mut rows = Vec::with_capacity(live.len());
        let mut events = Vec::with_capacity(live.len() * 4);
        for step in &live {
            let rec = &step.record;
            let (from, attempt) = match previous.get(&(rec.run_id.as_str(), rec.name.as_str())) {
                Some((status, attempt)) => (*status, attempt + 1),
                None => (StepStatus::Pending.as_str(), 1),
            };
            let change = StepChange::completed(step.output.clone());
            let mut row = StepRunRow::new(
                &rec.run_id,
                &rec.name,
                rec.position,
                rec.step_type,
                change.to.as_str(),
            );
            row.attempt = attempt;
            row.started_at = Some(now);
            row.completed_at = Some(now);
            row.output = change.output;
            rows.push(row);
            events.extend(start_events(rec, from, attempt, now));
            events.push(NewRunEvent::transition(
                &rec.run_id,
                now,
                Some(&rec.name),
                StepStatus::Running.as_str(),
                change.to.as_str(),
            ));
            events.push(NewRunEvent::log(
                &rec.run_id,
                now,
                Some(&rec.name),
                change.log.0,
                change.log.1,
            ));
        }
        // One statement for any batch: the step rows (as arrays: `$9` on) and the events
        // (`$1` to `$8`). A completed pure step has no error, wake-up or child run, so those
        // columns are cleared.
        runs::with_events(
            concat!(
                "WITH steps AS (
                     INSERT INTO step_runs (run_id, name, position, step_type, status, attempt,
                                            started_at, completed_at, output)
                     SELECT * FROM unnest($9::text[], $10::text[], $11::int4[], $12::text[],
                                          $13::text[], $14::int4[], $15::timestamptz[],
                                          $16::timestamptz[], $17::jsonb[])
                     ON CONFLICT (run_id, name) DO UPDATE SET
                         status = excluded.status, attempt = excluded.attempt,
                         started_at = excluded.started_at, completed_at = excluded.completed_at,
                         output = excluded.output, error = NULL, wake_at = NULL
                 )
                 ",
                shared_models::insert_events_sql!()
            ),
            &events,
        )
        .bind::<Array<Text>, _>(column(&rows, |r| r.run_id.as_str()))
        .bind::<Array<Text>, _>(column(&rows, |r| r.name.as_str()))
        .bind::<Array<Int4>, _>(column(&rows, |r| r.position))
        .bind::<Array<Text>, _>(column(&rows, |r| r.step_type.as_str()))
        .bind::<Array<Text>, _>(column(&rows, |r| r.status.as_str()))
        .bind::<Array<Int4>, _>(column(&rows, |r| r.attempt))
        .bind::<Array<Nullable<Timestamptz>>, _>(column(&rows, |r| r.started_at))
        .bind::<Array<Nullable<Timestamptz>>, _>(column(&rows, |r| r.completed_at))
        .bind::<Array<Nullable<Jsonb>>, _>(column(&rows, |r| r.output.as_ref()))
        .execute(conn)?;
    }
    Ok(steps
        .iter()
        .map(|s| {
            if held.contains(s.record.run_id.as_str()) {
                Fenced::Written
            } else {
                Fenced::LeaseLost
            }
        })
        .collect())
}

/// How a run ends when nothing else goes with its end: no step to cancel, no parent to wake
/// (every other end goes through [`finish_run`]).
#[derive(Debug, Clone)]
pub struct RunFinish {
    pub run_id: String,
    pub status: RunStatus,
    pub output: Option<Value>,
    pub error: Option<String>,
}

impl RunFinish {
    /// `end` of `run`, when it is that simple.
    pub fn simple(run: &RunRow, end: &RunEnd) -> Option<Self> {
        (end.cancelled.is_empty() && run.parent_run_id.is_none()).then(|| Self {
            run_id: run.id.clone(),
            status: end.status,
            output: end.output.clone(),
            error: end.error.clone(),
        })
    }
}

/// End many runs (each as [`finish_run`] would) in one statement (the runs updated and their
/// events inserted, in a CTE), each fenced by its own lease. Returns, in the order given,
/// whether each was written.
pub fn finish_runs(
    conn: &mut PgConnection,
    ends: &[RunFinish],
    me: &LeaseHolder,
    now: DateTime<Utc>,
) -> Result<Vec<Fenced>, Error> {
    write_batch(conn, &[], ends, me, now).map(|(_, ends)| ends)
}

/// The run ends of a checkpoint batch with their events (public for the test of its plan):
/// `$1` to `$8` the events ([`runs::with_events`]), `$9` now, `$10` to `$13` the ends, `$14`
/// this worker. The runs are found by `id = ANY($10)`: joined to the ends' rows only, a plan
/// made while few runs had a lease scans `runs` for the lease's owner.
pub const END_RUNS: &str = "WITH ended AS (
         UPDATE runs AS r SET status = v.status, output = v.output, error = v.error,
                completed_at = $9, updated_at = $9, wake_at = NULL,
                lease_owner = NULL, lease_expires_at = NULL
         FROM unnest($10::text[], $11::text[], $12::jsonb[], $13::text[])
              AS v(id, status, output, error)
         WHERE r.id = ANY($10) AND r.id = v.id AND r.lease_owner = $14
         RETURNING r.id
     )
     INSERT INTO run_events (run_id, at, kind, step, from_status, to_status, level, message)
     SELECT e.run_id, e.at, e.kind, e.step, e.from_status, e.to_status, e.level, e.message
     FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[],
                 $5::text[], $6::text[], $7::text[], $8::text[])
          WITH ORDINALITY AS e(run_id, at, kind, step, from_status, to_status, level,
                               message, position)
     WHERE e.run_id IN (SELECT id FROM ended)
     ORDER BY e.position
     RETURNING run_id AS id";

fn finish_runs_in(
    conn: &mut PgConnection,
    ends: &[RunFinish],
    me: &LeaseHolder,
    now: DateTime<Utc>,
) -> Result<Vec<Fenced>, Error> {
    // The events of every end, written for the runs the update ended only (its fence): one
    // statement. Each ended run has at least its transition, so the events inserted name the
    // runs ended; `ORDER BY` keeps them in the order given (their ids order the stream).
    let errors: Vec<Option<String>> = ends
        .iter()
        .map(|e| e.error.clone().map(text_column))
        .collect();
    let events: Vec<NewRunEvent> = ends
        .iter()
        .zip(&errors)
        .flat_map(|(e, error)| end_events(&e.run_id, e.status, error.as_deref(), now))
        .collect();
    let ended: Vec<Id> = runs::with_events(END_RUNS, &events)
        .bind::<Timestamptz, _>(now)
        .bind::<Array<Text>, _>(column(ends, |e| e.run_id.as_str()))
        .bind::<Array<Text>, _>(column(ends, |e| e.status.as_str()))
        .bind::<Array<Nullable<Jsonb>>, _>(column(ends, |e| e.output.as_ref()))
        .bind::<Array<Nullable<Text>>, _>(column(&errors, |e| e.as_deref()))
        .bind::<Text, _>(&me.worker_id)
        .load(conn)?;
    let ended: std::collections::HashSet<String> = ended.into_iter().map(|r| r.id).collect();
    Ok(ends
        .iter()
        .map(|e| {
            if ended.contains(&e.run_id) {
                Fenced::Written
            } else {
                Fenced::LeaseLost
            }
        })
        .collect())
}

/// The run's own transition out of RUNNING and its last log line.
fn end_events(
    run_id: &str,
    status: RunStatus,
    error: Option<&str>,
    now: DateTime<Utc>,
) -> [NewRunEvent; 2] {
    let message = match error {
        Some(e) => format!("run {}: {e}", status.as_str().to_lowercase()),
        None => format!("run {}", status.as_str().to_lowercase()),
    };
    let level = if status == RunStatus::Completed {
        "INFO"
    } else {
        "ERROR"
    };
    [
        NewRunEvent::transition(
            run_id,
            now,
            None,
            RunStatus::Running.as_str(),
            status.as_str(),
        ),
        NewRunEvent::log(run_id, now, None, level, message),
    ]
}

/// Write a whole step row (insert, or replace everything but the attempt counter when the
/// new row's attempt is 0).
fn upsert_step(conn: &mut PgConnection, row: &StepRunRow) -> Result<(), Error> {
    // Attempt numbers only grow: start_step writes the next one, every other writer passes 0
    // to keep the current one.
    let attempt = diesel::dsl::sql::<diesel::sql_types::Integer>(
        "GREATEST(step_runs.attempt, excluded.attempt)",
    );
    diesel::insert_into(step_runs::table)
        .values(row)
        .on_conflict((step_runs::run_id, step_runs::name))
        .do_update()
        .set((
            step_runs::status.eq(&row.status),
            step_runs::attempt.eq(attempt),
            step_runs::started_at.eq(row.started_at),
            step_runs::completed_at.eq(row.completed_at),
            step_runs::output.eq(&row.output),
            step_runs::error.eq(&row.error),
            step_runs::wake_at.eq(row.wake_at),
            step_runs::child_run_id.eq(&row.child_run_id),
        ))
        .execute(conn)
        .map(|_| ())
}

/// A step's new state, with what goes with it.
#[derive(Debug, Clone)]
pub struct StepChange {
    pub to: StepStatus,
    pub output: Option<Value>,
    pub error: Option<String>,
    /// For WAITING: when to wake (delay end, wait timeout); and the child run waited for.
    pub wake_at: Option<DateTime<Utc>>,
    pub child_run_id: Option<String>,
    pub log: (&'static str, String),
}

impl StepChange {
    pub fn completed(output: Value) -> Self {
        Self {
            to: StepStatus::Completed,
            output: Some(output),
            error: None,
            wake_at: None,
            child_run_id: None,
            log: ("INFO", "step completed".into()),
        }
    }

    pub fn failed(error: String) -> Self {
        let error = text_column(error);
        let log = ("ERROR", format!("step failed: {error}"));
        Self {
            to: StepStatus::Failed,
            output: None,
            error: Some(error),
            wake_at: None,
            child_run_id: None,
            log,
        }
    }

    pub fn skipped(reason: String) -> Self {
        let reason = text_column(reason);
        Self {
            to: StepStatus::Skipped,
            output: None,
            error: None,
            wake_at: None,
            child_run_id: None,
            log: ("INFO", format!("step skipped: {reason}")),
        }
    }

    /// A failed attempt with attempts left: back to PENDING until the next one.
    pub fn retrying(attempt: i32, error: String, pause: Duration) -> Self {
        let error = text_column(error);
        let log = (
            "WARN",
            format!(
                "attempt {attempt} failed: {error}; next attempt in {:.3}s",
                pause.as_secs_f64()
            ),
        );
        Self {
            to: StepStatus::Pending,
            output: None,
            error: Some(error),
            wake_at: None,
            child_run_id: None,
            log,
        }
    }

    pub fn waiting(
        wake_at: Option<DateTime<Utc>>,
        child_run_id: Option<String>,
        message: String,
    ) -> Self {
        let message = text_column(message);
        Self {
            to: StepStatus::Waiting,
            output: None,
            error: None,
            wake_at,
            child_run_id,
            log: ("INFO", message),
        }
    }
}

/// Record a step's change (whatever its state was), with its transition and log line.
pub fn record_step(
    conn: &mut PgConnection,
    step: &StepRecord,
    change: &StepChange,
    me: &LeaseHolder,
    now: DateTime<Utc>,
) -> Result<Fenced, Error> {
    conn.transaction(|conn| {
        if touch(conn, &step.run_id, me, now)? == Fenced::LeaseLost {
            return Ok(Fenced::LeaseLost);
        }
        let previous: Option<StepRunRow> = step_runs::table
            .find((&step.run_id, &step.name))
            .select(StepRunRow::as_select())
            .first(conn)
            .optional()?;
        let from = previous
            .as_ref()
            .map(|p| p.status.clone())
            .unwrap_or_else(|| StepStatus::Pending.as_str().to_string());
        let mut row = StepRunRow::new(
            &step.run_id,
            &step.name,
            step.position,
            step.step_type,
            change.to.as_str(),
        );
        row.started_at = match change.to {
            StepStatus::Waiting => Some(now),
            StepStatus::Skipped => None,
            _ => previous.as_ref().and_then(|p| p.started_at),
        };
        row.completed_at = matches!(
            change.to,
            StepStatus::Completed
                | StepStatus::Failed
                | StepStatus::Skipped
                | StepStatus::Cancelled
        )
        .then_some(now);
        row.output = change.output.clone();
        row.error = change.error.clone();
        row.wake_at = change.wake_at;
        row.child_run_id = change
            .child_run_id
            .clone()
            .or_else(|| previous.as_ref().and_then(|p| p.child_run_id.clone()));
        upsert_step(conn, &row)?;
        let mut events = Vec::new();
        if from != change.to.as_str() {
            events.push(NewRunEvent::transition(
                &step.run_id,
                now,
                Some(&step.name),
                &from,
                change.to.as_str(),
            ));
        }
        events.push(NewRunEvent::log(
            &step.run_id,
            now,
            Some(&step.name),
            change.log.0,
            change.log.1.clone(),
        ));
        runs::insert_events(conn, &events)?;
        Ok(Fenced::Written)
    })
}

/// Start the child run of a `subworkflow` step and record the step WAITING for it, in one
/// transaction and under the lease (so a crash or a cancel cannot leave an orphan child, nor
/// a redelivery start a second one): the child is in the parent's org, at its workflow's
/// current version, and its job is queued (the outbox relay publishes it).
/// [`ChildStart::Refused`] when the child workflow cannot run (unknown, deleted, inactive,
/// or nested too deep), or when the org's quotas leave no room for it ([`child_quota`]);
/// [`ChildStart::TreeBusy`] when another transaction is starting a child of the same tree:
/// nothing was written but the lease's renewal, and the caller tries again later, with no
/// connection held meanwhile.
#[allow(clippy::too_many_arguments)]
pub fn start_child_run(
    conn: &mut PgConnection,
    parent: &RunRow,
    step: &StepRecord,
    workflow_id: &str,
    variables: Value,
    wait_until: Option<DateTime<Utc>>,
    me: &LeaseHolder,
    now: DateTime<Utc>,
) -> Result<Result<ChildStart, Fenced>, Error> {
    conn.transaction(|conn| {
        if touch(conn, &parent.id, me, now)? == Fenced::LeaseLost {
            return Ok(Err(Fenced::LeaseLost));
        }
        // A workflow may start itself; the chain of parents bounds how deep that goes.
        let mut depth = 1;
        let mut ancestor = parent.parent_run_id.clone();
        while let Some(id) = ancestor {
            depth += 1;
            if depth > runs::MAX_CHILD_DEPTH {
                return Ok(Ok(ChildStart::Refused(format!(
                    "subworkflows are nested more than {} deep",
                    runs::MAX_CHILD_DEPTH
                ))));
            }
            ancestor = runs_table::table
                .find(&id)
                .select(runs_table::parent_run_id)
                .first(conn)
                .optional()?
                .flatten();
        }
        let root = parent.root_run_id.as_deref().unwrap_or(&parent.id);
        match child_quota(conn, &parent.org_id, root)? {
            Quota::Room => {}
            Quota::TreeBusy => return Ok(Ok(ChildStart::TreeBusy)),
            Quota::Exceeded(exceeded) => return Ok(Ok(ChildStart::Refused(exceeded.to_string()))),
        }
        let current: Option<(i32, bool)> = workflows::table
            .find((&parent.org_id, workflow_id))
            .filter(workflows::deleted_at.is_null())
            .select((workflows::version, workflows::is_active))
            .first(conn)
            .optional()?;
        let version = match current {
            None => {
                return Ok(Ok(ChildStart::Refused(format!(
                    "workflow '{workflow_id}' was not found"
                ))))
            }
            Some((_, false)) => {
                return Ok(Ok(ChildStart::Refused(format!(
                    "workflow '{workflow_id}' is inactive"
                ))))
            }
            Some((version, true)) => version,
        };
        let child = runs::pending_run(
            NewRun {
                org_id: &parent.org_id,
                workflow_id,
                version,
                variables,
                idempotency_key: None,
                request_hash: None,
                request_id: parent.request_id.clone(),
                parent: Some((&parent.id, &step.name, root)),
            },
            now,
        );
        runs::insert_run(conn, &child)?;
        // A dedupe key lets the relay publish it at once (no grace period).
        runs::enqueue_job(
            conn,
            &child.id,
            &child.org_id,
            child.request_id.clone(),
            Some(&format!("start:{}", child.id)),
        )?;
        let message = format!("started child run {} of {workflow_id}", child.id);
        let waiting = StepChange::waiting(wait_until, Some(child.id.clone()), message);
        if record_step(conn, step, &waiting, me, now)? == Fenced::LeaseLost {
            return Ok(Err(Fenced::LeaseLost));
        }
        Ok(Ok(ChildStart::Started(child.id)))
    })
}

/// What [`start_child_run`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChildStart {
    /// The child run (its id) is queued and the step WAITING for it.
    Started(String),
    /// The child cannot start: the step fails with this reason.
    Refused(String),
    /// Another worker holds the tree's lock: try again shortly.
    TreeBusy,
}

/// What [`child_quota`] found.
enum Quota {
    Room,
    Exceeded(QuotaExceeded),
    TreeBusy,
}

/// Counts the runs of one tree (`root_run_id`), at most `$2`.
const COUNT_DESCENDANTS: &str = "SELECT count(*) AS n FROM (
         SELECT 1 FROM runs WHERE root_run_id = $1 LIMIT $2
     ) q";

/// In [`start_child_run`]'s transaction: the quota a new child run of the tree rooted at
/// `root` would go over, if any.
///
/// - `maxDescendantsPerRun`: the tree's runs (the root not counted), counted under a
///   transaction-scoped advisory lock keyed by the root, so two workers starting children
///   of one tree at once cannot both take its last place (the count, a statement of its own,
///   sees every child committed by the lock's previous holder). An advisory lock rather than
///   the root's row lock: a cancel locks a tree's rows from the root down while this
///   transaction already holds the parent's row, so waiting on the root's row could deadlock.
///   The lock is tried, never waited for ([`Quota::TreeBusy`]): a tree starting many children
///   at once would otherwise hold a worker's every pooled connection waiting on its own lock,
///   and other orgs' runs on that worker would wait for a connection.
/// - `maxQueuedRuns`: the org's PENDING and WAITING runs (the child would be one more).
///   Not serialised: workers starting children of one org at the same moment may each see
///   the last place free, so the org may go over by as many (docs/SECURITY.md).
///
/// Both counts are bounded by the limit, so a tree or a backlog at its limit costs no more
/// than the limit's rows of an index.
fn child_quota(conn: &mut PgConnection, org_id: &str, root: &str) -> Result<Quota, Error> {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    #[derive(QueryableByName)]
    struct Locked {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        locked: bool,
    }
    let quotas = limits::load_effective(conn, org_id, &limits::defaults())?;
    let max = quotas.max_descendants_per_run;
    let descendants = if max > 0 {
        let got = prepared(
            "SELECT pg_try_advisory_xact_lock(hashtextextended('thygon-tree:' || $1, 0)) AS locked",
        )
        .bind::<Text, _>(root)
        .get_result::<Locked>(conn)?;
        if !got.locked {
            return Ok(Quota::TreeBusy);
        }
        prepared(COUNT_DESCENDANTS)
            .bind::<Text, _>(root)
            .bind::<BigInt, _>(i64::from(max))
            .get_result::<Count>(conn)?
            .n
    } else {
        0
    };
    if max > 0 && descendants >= i64::from(max) {
        return Ok(Quota::Exceeded(QuotaExceeded::new(
            "maxDescendantsPerRun",
            max,
            format!("the run tree of {root} has {descendants} runs besides its root"),
        )));
    }
    let max = quotas.max_queued_runs;
    let queued = limits::count_queued(conn, org_id, max)?;
    if max > 0 && queued >= i64::from(max) {
        return Ok(Quota::Exceeded(QuotaExceeded::queued_runs(max, queued)));
    }
    Ok(Quota::Room)
}

/// A child run's status, output and error.
pub type ChildState = (String, Option<Value>, Option<String>);

pub fn child_state(conn: &mut PgConnection, child_id: &str) -> Result<Option<ChildState>, Error> {
    runs_table::table
        .find(child_id)
        .select((runs_table::status, runs_table::output, runs_table::error))
        .first(conn)
        .optional()
}

pub enum Park {
    /// The run is WAITING and holds no worker; a job wakes it.
    Parked,
    /// Something it waits for happened meanwhile (an approval, a child ended, a delay is due):
    /// keep going instead.
    Changed,
    LeaseLost,
}

/// Put a run with nothing executing and something waiting into WAITING, releasing it.
/// The run row is locked first, so an approval committed concurrently is either seen here
/// (Changed) or sees the run WAITING (and queues a job).
pub fn park_run(
    conn: &mut PgConnection,
    run_id: &str,
    waiting: &[String],
    wake_at: Option<DateTime<Utc>>,
    me: &LeaseHolder,
    now: DateTime<Utc>,
) -> Result<Park, Error> {
    conn.transaction(|conn| {
        let held: Option<String> = runs_table::table
            .find(run_id)
            .filter(runs_table::lease_owner.eq(&me.worker_id))
            .select(runs_table::id)
            .for_no_key_update()
            .first(conn)
            .optional()?;
        if held.is_none() {
            return Ok(Park::LeaseLost);
        }
        let rows: Vec<StepRunRow> = step_runs::table
            .filter(step_runs::run_id.eq(run_id))
            .filter(step_runs::name.eq_any(waiting))
            .select(StepRunRow::as_select())
            .load(conn)?;
        for row in &rows {
            if row.status != StepStatus::Waiting.as_str() || row.wake_at.is_some_and(|t| t <= now) {
                return Ok(Park::Changed);
            }
            if let Some(child) = &row.child_run_id {
                let status: Option<String> = runs_table::table
                    .find(child)
                    .select(runs_table::status)
                    .first(conn)
                    .optional()?;
                if status
                    .as_deref()
                    .and_then(RunStatus::parse)
                    .is_none_or(RunStatus::is_terminal)
                {
                    return Ok(Park::Changed);
                }
            }
        }
        diesel::update(runs_table::table.find(run_id))
            .set((
                runs_table::status.eq(RunStatus::Waiting.as_str()),
                runs_table::wake_at.eq(wake_at),
                runs_table::updated_at.eq(now),
                runs_table::lease_owner.eq(None::<String>),
                runs_table::lease_expires_at.eq(None::<DateTime<Utc>>),
            ))
            .execute(conn)?;
        let message = format!("run waiting for: {}", waiting.join(", "));
        runs::insert_events(
            conn,
            &[
                NewRunEvent::transition(
                    run_id,
                    now,
                    None,
                    RunStatus::Running.as_str(),
                    RunStatus::Waiting.as_str(),
                ),
                NewRunEvent::log(run_id, now, None, "INFO", message),
            ],
        )?;
        Ok(Park::Parked)
    })
}

/// How a run ends.
pub struct RunEnd {
    pub status: RunStatus,
    pub output: Option<Value>,
    pub error: Option<String>,
    /// Steps that did not start and now never will (after a failure): recorded CANCELLED.
    pub cancelled: Vec<StepRecord>,
}

/// Finish the run and release its lease, with the cancelled steps and transitions; a child
/// run wakes its parent.
pub fn finish_run(
    conn: &mut PgConnection,
    run: &RunRow,
    end: &RunEnd,
    me: &LeaseHolder,
    now: DateTime<Utc>,
) -> Result<Fenced, Error> {
    let error = end.error.clone().map(text_column);
    conn.transaction(|conn| {
        let n = diesel::update(
            runs_table::table
                .find(&run.id)
                .filter(runs_table::lease_owner.eq(&me.worker_id)),
        )
        .set((
            runs_table::status.eq(end.status.as_str()),
            runs_table::output.eq(&end.output),
            runs_table::error.eq(&error),
            runs_table::completed_at.eq(now),
            runs_table::updated_at.eq(now),
            runs_table::wake_at.eq(None::<DateTime<Utc>>),
            runs_table::lease_owner.eq(None::<String>),
            runs_table::lease_expires_at.eq(None::<DateTime<Utc>>),
        ))
        .execute(conn)?;
        if n == 0 {
            return Ok(Fenced::LeaseLost);
        }
        let mut events = Vec::new();
        let mut children = Vec::new();
        for step in &end.cancelled {
            let existing: Option<(String, Option<String>)> = step_runs::table
                .find((&step.run_id, &step.name))
                .select((step_runs::status, step_runs::child_run_id))
                .first(conn)
                .optional()?;
            let from = match existing {
                Some((status, child)) => {
                    // Keep what the row knows (when it started, which child it waits for).
                    diesel::update(step_runs::table.find((&step.run_id, &step.name)))
                        .set((
                            step_runs::status.eq(StepStatus::Cancelled.as_str()),
                            step_runs::completed_at.eq(now),
                            step_runs::wake_at.eq(None::<DateTime<Utc>>),
                        ))
                        .execute(conn)?;
                    children.extend(child);
                    status
                }
                None => {
                    let mut row = StepRunRow::new(
                        &run.id,
                        &step.name,
                        step.position,
                        step.step_type,
                        StepStatus::Cancelled.as_str(),
                    );
                    row.completed_at = Some(now);
                    upsert_step(conn, &row)?;
                    StepStatus::Pending.as_str().to_string()
                }
            };
            events.push(NewRunEvent::transition(
                &run.id,
                now,
                Some(&step.name),
                &from,
                StepStatus::Cancelled.as_str(),
            ));
        }
        // Children of cancelled subworkflow steps must not run on as orphans.
        runs::cancel_descendants(conn, run, children, now)?;
        events.extend(end_events(&run.id, end.status, error.as_deref(), now));
        runs::insert_events(conn, &events)?;
        if let Some(parent) = &run.parent_run_id {
            runs::enqueue_job(
                conn,
                parent,
                &run.org_id,
                run.request_id.clone(),
                Some(&format!("child-ended:{}", run.id)),
            )?;
        }
        Ok(Fenced::Written)
    })
}

/// Hand the run back at shutdown: the lease ends now (so the redelivered job is taken at
/// once) and the owner is cleared (so this worker's abandoned task can write nothing more).
pub fn release_lease(
    conn: &mut PgConnection,
    run_id: &str,
    me: &LeaseHolder,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    diesel::update(
        runs_table::table
            .find(run_id)
            .filter(runs_table::lease_owner.eq(&me.worker_id)),
    )
    .set((
        runs_table::lease_owner.eq(None::<String>),
        runs_table::lease_expires_at.eq(now),
    ))
    .execute(conn)
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_returned_run_columns_are_those_of_run_row() {
        let select = diesel::debug_query::<diesel::pg::Pg, _>(
            &runs_table::table.select(RunRow::as_select()),
        )
        .to_string();
        let from_diesel: Vec<String> = select
            .trim_start_matches("SELECT ")
            .split(" FROM")
            .next()
            .unwrap_or_default()
            .split(", ")
            .map(|c| {
                c.trim_start_matches("\"runs\".")
                    .trim_matches('"')
                    .to_string()
            })
            .collect();
        let listed: Vec<String> = run_columns!()
            .split(',')
            .map(|c| c.trim().to_string())
            .collect();
        assert_eq!(listed, from_diesel);
    }
}
