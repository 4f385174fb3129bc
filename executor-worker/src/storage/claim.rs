//! Claims: taking a run for execution (PENDING or WAITING -> RUNNING, a takeover, a
//! redelivery), one job or a batch of them, under the org's running cap.

use super::steps::load_steps;
use super::steps::load_steps_of;
use super::LeaseHolder;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
use diesel::sql_types::{Array, BigInt, Text, Timestamptz};
use serde_json::Value;
use shared_models::models::{NewRunEvent, RunRow, StepRunRow};
use shared_models::prepared::{column, prepared};
use shared_models::runs::{self};
use shared_models::schema::{runs as runs_table, workflow_versions};
use shared_models::status::RunStatus;
use std::time::Duration;

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
    /// This claim started the run (it was never RUNNING before): no step row of it exists,
    /// so its pure steps are first attempts ([`super::PureStep::first`]).
    pub first_claim: bool,
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
    // Set RUNNING for the first time by this claim: it set `started_at` (only ever set once)
    // to `now`. No step row exists before a run's first claim (the worker writes them, after
    // claiming), so only the runs started before (requeued, retried) have steps to read; a
    // batch of first claims, what triggers make, reads none.
    let started_here = |run: &RunRow| run.started_at == Some(now);
    let ids: Vec<&str> = pending
        .iter()
        .filter(|r| !started_here(r))
        .map(|r| r.id.as_str())
        .collect();
    let mut steps = if ids.is_empty() {
        Default::default()
    } else {
        load_steps_of(conn, &ids)?
    };
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
            first_claim: started_here(&run),
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
        let status = run.status;
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
        let claimed_row: RunRow = prepared(CLAIM_LOCKED)
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
/// (see docs/PERFORMANCE.md, "Plans cached on empty tables").
pub const CLAIM_PENDING: &str = include_str!("sql/claim_pending.sql");

/// The statement of [`claim_locked`]: the run, its row locked, RUNNING under this worker's lease.
const CLAIM_LOCKED: &str = include_str!("sql/claim_locked.sql");

/// The cap of an org's RUNNING runs and, when it has one, their count, under the org's lock
/// (see [`hold_for_slot`]).
const RUNNING_CAP: &str = include_str!("sql/running_cap.sql");

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
    let Running { cap, running } = prepared(RUNNING_CAP)
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

#[cfg(test)]
mod tests {
    use super::{CLAIM_LOCKED, CLAIM_PENDING};
    use diesel::prelude::*;
    use shared_models::models::RunRow;
    use shared_models::schema::runs as runs_table;

    /// The columns a statement returns: those of its `RETURNING`, up to the end of its CTE.
    fn returned(statement: &str) -> Vec<String> {
        let (_, after) = statement
            .split_once("RETURNING ")
            .expect("the statement returns rows");
        let list = after.split("\n)").next().unwrap_or_default();
        list.split(',').map(|c| c.trim().to_string()).collect()
    }

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
        assert_eq!(returned(CLAIM_PENDING), from_diesel);
        assert_eq!(returned(CLAIM_LOCKED), from_diesel);
    }
}
