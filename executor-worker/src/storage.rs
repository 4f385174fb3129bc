//! Plain diesel functions over `&mut PgConnection`. The worker owns `step_runs` and
//! `run_events`, and a run's status once the run exists.
//!
//! Every write is fenced by the lease: it happens only while `runs.lease_owner` is this
//! worker. A worker that lost its run (lease expired, another worker took over) finds out at
//! its next write ([`Fenced::LeaseLost`]) and stops touching it.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
use serde_json::Value;
use shared_models::models::{NewRunEvent, RunRow, StepRunRow};
use shared_models::schema::{run_events, runs, step_runs, workflow_versions};
use shared_models::status::{RunStatus, StepStatus};
use std::time::Duration;

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
    pub definition: Value,
    pub steps: Vec<StepRunRow>,
}

#[derive(Debug)]
pub enum Claim {
    Claimed(Box<ClaimedRun>),
    /// Already ended: a duplicate delivery.
    Ended,
    /// Another live worker holds it: a duplicate delivery.
    HeldElsewhere,
    /// No such run (in that org): a poison message.
    Missing,
}

/// Outcome of a fenced write.
#[derive(Debug, PartialEq, Eq)]
pub enum Fenced {
    Written,
    LeaseLost,
}

/// Take the run: PENDING -> RUNNING, or resume a RUNNING run whose lease expired (its
/// worker died) or that this worker already holds (a redelivery to the same worker).
pub fn claim_run(
    conn: &mut PgConnection,
    run_id: &str,
    org_id: &str,
    me: &LeaseHolder,
    now: DateTime<Utc>,
) -> Result<Claim, Error> {
    conn.transaction(|conn| {
        let run: Option<RunRow> = runs::table
            .find(run_id)
            .filter(runs::org_id.eq(org_id))
            .select(RunRow::as_select())
            .for_update()
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
        if status != RunStatus::Pending && lease_live && !mine {
            return Ok(Claim::HeldElsewhere);
        }
        diesel::update(runs::table.find(run_id))
            .set((
                runs::status.eq(RunStatus::Running.as_str()),
                runs::started_at.eq(run.started_at.unwrap_or(now)),
                runs::updated_at.eq(now),
                runs::lease_owner.eq(&me.worker_id),
                runs::lease_expires_at.eq(me.expires(now)),
            ))
            .execute(conn)?;
        if status == RunStatus::Pending {
            insert_events(
                conn,
                vec![
                    NewRunEvent::transition(
                        run_id,
                        now,
                        None,
                        RunStatus::Pending.as_str(),
                        RunStatus::Running.as_str(),
                    ),
                    NewRunEvent::log(
                        run_id,
                        now,
                        None,
                        "INFO",
                        format!("run started on worker {}", me.worker_id),
                    ),
                ],
            )?;
        } else if !mine {
            let message = format!(
                "run resumed on worker {} after {} stopped holding it",
                me.worker_id,
                run.lease_owner.as_deref().unwrap_or("another worker")
            );
            insert_events(
                conn,
                vec![NewRunEvent::log(run_id, now, None, "WARN", message)],
            )?;
        }
        let run = runs::table
            .find(run_id)
            .select(RunRow::as_select())
            .first(conn)?;
        let definition = workflow_versions::table
            .find((&run.org_id, &run.workflow_id, run.workflow_version))
            .select(workflow_versions::definition)
            .first(conn)?;
        let steps = step_runs::table
            .filter(step_runs::run_id.eq(run_id))
            .select(StepRunRow::as_select())
            .order(step_runs::position)
            .load(conn)?;
        Ok(Claim::Claimed(Box::new(ClaimedRun {
            run,
            definition,
            steps,
        })))
    })
}

fn insert_events(conn: &mut PgConnection, events: Vec<NewRunEvent>) -> Result<(), Error> {
    diesel::insert_into(run_events::table)
        .values(events)
        .execute(conn)
        .map(|_| ())
}

/// Touch the run while holding its lease: extends the lease and moves `updatedAt`.
fn touch(
    conn: &mut PgConnection,
    run_id: &str,
    me: &LeaseHolder,
    now: DateTime<Utc>,
) -> Result<Fenced, Error> {
    let n = diesel::update(
        runs::table
            .find(run_id)
            .filter(runs::lease_owner.eq(&me.worker_id)),
    )
    .set((
        runs::updated_at.eq(now),
        runs::lease_expires_at.eq(me.expires(now)),
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
        runs::table
            .find(run_id)
            .filter(runs::lease_owner.eq(&me.worker_id)),
    )
    .set(runs::lease_expires_at.eq(me.expires(now)))
    .execute(conn)?;
    Ok(if n == 1 {
        Fenced::Written
    } else {
        Fenced::LeaseLost
    })
}

/// What is being recorded about one step.
pub struct StepRecord<'a> {
    pub run_id: &'a str,
    pub name: &'a str,
    pub position: i32,
    pub step_type: &'a str,
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
        if touch(conn, step.run_id, me, now)? == Fenced::LeaseLost {
            return Ok(Err(Fenced::LeaseLost));
        }
        let previous: Option<(String, i32)> = step_runs::table
            .find((step.run_id, step.name))
            .select((step_runs::status, step_runs::attempt))
            .first(conn)
            .optional()?;
        let (from, attempt) = match previous {
            Some((status, attempt)) => (status, attempt + 1),
            None => (StepStatus::Pending.as_str().to_string(), 1),
        };
        let row = StepRunRow {
            run_id: step.run_id.to_string(),
            name: step.name.to_string(),
            position: step.position,
            step_type: step.step_type.to_string(),
            status: StepStatus::Running.as_str().to_string(),
            attempt,
            started_at: Some(now),
            completed_at: None,
            output: None,
            error: None,
        };
        diesel::insert_into(step_runs::table)
            .values(&row)
            .on_conflict((step_runs::run_id, step_runs::name))
            .do_update()
            .set((
                step_runs::status.eq(&row.status),
                step_runs::attempt.eq(attempt),
                step_runs::started_at.eq(now),
                step_runs::completed_at.eq(None::<DateTime<Utc>>),
                step_runs::output.eq(None::<Value>),
                step_runs::error.eq(None::<String>),
            ))
            .execute(conn)?;
        let mut events = vec![NewRunEvent::transition(
            step.run_id,
            now,
            Some(step.name),
            &from,
            StepStatus::Running.as_str(),
        )];
        if from == StepStatus::Running.as_str() {
            events.push(NewRunEvent::log(
                step.run_id,
                now,
                Some(step.name),
                "WARN",
                format!(
                    "attempt {} was cut off before it finished; trying again",
                    attempt - 1
                ),
            ));
        }
        events.push(NewRunEvent::log(
            step.run_id,
            now,
            Some(step.name),
            "INFO",
            format!("{} step started (attempt {attempt})", step.step_type),
        ));
        insert_events(conn, events)?;
        Ok(Ok(attempt))
    })
}

/// Record how an attempt ended: COMPLETED with its output, or FAILED with its error.
pub fn finish_step(
    conn: &mut PgConnection,
    step: &StepRecord,
    result: &Result<Value, String>,
    me: &LeaseHolder,
    now: DateTime<Utc>,
) -> Result<Fenced, Error> {
    conn.transaction(|conn| {
        if touch(conn, step.run_id, me, now)? == Fenced::LeaseLost {
            return Ok(Fenced::LeaseLost);
        }
        let (status, output, error, level, message) = match result {
            Ok(output) => (
                StepStatus::Completed,
                Some(output.clone()),
                None,
                "INFO",
                "step completed".to_string(),
            ),
            Err(e) => (
                StepStatus::Failed,
                None,
                Some(e.clone()),
                "ERROR",
                format!("step failed: {e}"),
            ),
        };
        diesel::update(step_runs::table.find((step.run_id, step.name)))
            .set((
                step_runs::status.eq(status.as_str()),
                step_runs::completed_at.eq(now),
                step_runs::output.eq(output),
                step_runs::error.eq(error),
            ))
            .execute(conn)?;
        insert_events(
            conn,
            vec![
                NewRunEvent::transition(
                    step.run_id,
                    now,
                    Some(step.name),
                    StepStatus::Running.as_str(),
                    status.as_str(),
                ),
                NewRunEvent::log(step.run_id, now, Some(step.name), level, message),
            ],
        )?;
        Ok(Fenced::Written)
    })
}

/// How a run ends.
pub struct RunEnd<'a> {
    pub status: RunStatus,
    pub output: Option<Value>,
    pub error: Option<String>,
    /// Steps that never started and now never will (after a failure): recorded CANCELLED.
    pub cancelled: Vec<StepRecord<'a>>,
}

/// Finish the run and release its lease, with the cancelled steps and transitions.
pub fn finish_run(
    conn: &mut PgConnection,
    run_id: &str,
    end: &RunEnd,
    me: &LeaseHolder,
    now: DateTime<Utc>,
) -> Result<Fenced, Error> {
    conn.transaction(|conn| {
        let n = diesel::update(
            runs::table
                .find(run_id)
                .filter(runs::lease_owner.eq(&me.worker_id)),
        )
        .set((
            runs::status.eq(end.status.as_str()),
            runs::output.eq(&end.output),
            runs::error.eq(&end.error),
            runs::completed_at.eq(now),
            runs::updated_at.eq(now),
            runs::lease_owner.eq(None::<String>),
            runs::lease_expires_at.eq(None::<DateTime<Utc>>),
        ))
        .execute(conn)?;
        if n == 0 {
            return Ok(Fenced::LeaseLost);
        }
        let mut events = Vec::new();
        for step in &end.cancelled {
            let from: Option<String> = step_runs::table
                .find((step.run_id, step.name))
                .select(step_runs::status)
                .first(conn)
                .optional()?;
            let row = StepRunRow {
                run_id: run_id.to_string(),
                name: step.name.to_string(),
                position: step.position,
                step_type: step.step_type.to_string(),
                status: StepStatus::Cancelled.as_str().to_string(),
                attempt: 0,
                started_at: None,
                completed_at: Some(now),
                output: None,
                error: None,
            };
            diesel::insert_into(step_runs::table)
                .values(&row)
                .on_conflict((step_runs::run_id, step_runs::name))
                .do_update()
                .set((
                    step_runs::status.eq(&row.status),
                    step_runs::completed_at.eq(now),
                ))
                .execute(conn)?;
            let from = from.unwrap_or_else(|| StepStatus::Pending.as_str().to_string());
            events.push(NewRunEvent::transition(
                run_id,
                now,
                Some(step.name),
                &from,
                StepStatus::Cancelled.as_str(),
            ));
        }
        events.push(NewRunEvent::transition(
            run_id,
            now,
            None,
            RunStatus::Running.as_str(),
            end.status.as_str(),
        ));
        let message = match &end.error {
            Some(e) => format!("run {}: {e}", end.status.as_str().to_lowercase()),
            None => format!("run {}", end.status.as_str().to_lowercase()),
        };
        let level = if end.status == RunStatus::Completed {
            "INFO"
        } else {
            "ERROR"
        };
        events.push(NewRunEvent::log(run_id, now, None, level, message));
        insert_events(conn, events)?;
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
        runs::table
            .find(run_id)
            .filter(runs::lease_owner.eq(&me.worker_id)),
    )
    .set((
        runs::lease_owner.eq(None::<String>),
        runs::lease_expires_at.eq(now),
    ))
    .execute(conn)
    .map(|_| ())
}
