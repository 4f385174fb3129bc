//! One step's writes: an attempt's start, a step's change of state, and the step rows read
//! back.

use super::lease::touch;
use super::{Fenced, LeaseHolder};
use crate::limits::text_column;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
use diesel::sql_types::{Array, Text};
use serde_json::Value;
use shared_models::models::{NewRunEvent, StepRunRow};
use shared_models::prepared::prepared;
use shared_models::runs::{self};
use shared_models::schema::step_runs;
use shared_models::status::StepStatus;
use std::time::Duration;

/// The step rows of one run, in position order.
pub(crate) fn load_steps(conn: &mut PgConnection, run_id: &str) -> Result<Vec<StepRunRow>, Error> {
    Ok(load_steps_of(conn, &[run_id])?
        .remove(run_id)
        .unwrap_or_default())
}

/// The statement of [`load_steps_of`] (public for the test of its plan).
pub const STEPS_OF: &str = include_str!("sql/steps_of.sql");

/// The step rows of `run_ids`, by run, each run's in position order: one statement.
///
/// Each run's rows are looked up on their own (a lateral join on `run_id = b.id`), not with
/// `run_id = ANY($1)`: a plan PostgreSQL made once for the statement (prepared, it keeps a
/// generic one) while `step_runs` was small scans the whole table for `ANY`, even for no rows,
/// while a lookup of one run's rows stays an index probe (see docs/PERFORMANCE.md, "Plans
/// cached on empty tables").
pub(super) fn load_steps_of(
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
pub(crate) fn start_step(
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
            StepStatus::Running,
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
pub(super) fn start_events(
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

/// Write a whole step row (insert, or replace everything but the attempt counter when the
/// new row's attempt is 0).
pub(super) fn upsert_step(conn: &mut PgConnection, row: &StepRunRow) -> Result<(), Error> {
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
pub(crate) struct StepChange {
    pub to: StepStatus,
    pub output: Option<Value>,
    pub error: Option<String>,
    /// For WAITING: when to wake (delay end, wait timeout); and the child run waited for.
    pub wake_at: Option<DateTime<Utc>>,
    pub child_run_id: Option<String>,
    pub log: (&'static str, String),
    /// An agent step's last model turn, journaled in the same transaction (one commit for
    /// the answer and the step's end, [`super::turns`]).
    pub turn: Option<super::NewTurn>,
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
            turn: None,
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
            turn: None,
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
            turn: None,
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
            turn: None,
        }
    }

    /// An attempt told to wait `pause` (not a failure): back to PENDING, tried again after it.
    pub fn deferred(attempt: i32, reason: &str, pause: Duration) -> Self {
        Self {
            to: StepStatus::Pending,
            output: None,
            error: None,
            wake_at: None,
            child_run_id: None,
            log: (
                "INFO",
                text_column(format!(
                    "attempt {attempt}: {reason}; trying again in {:.3}s",
                    pause.as_secs_f64()
                )),
            ),
            turn: None,
        }
    }

    /// A step that waited (deferred past the worker's short wait) is due: ready again.
    pub fn resumed() -> Self {
        Self {
            to: StepStatus::Pending,
            output: None,
            error: None,
            wake_at: None,
            child_run_id: None,
            log: ("INFO", "done waiting; trying again".into()),
            turn: None,
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
            turn: None,
        }
    }
}

/// Record a step's change (whatever its state was), with its transition and log line.
pub(crate) fn record_step(
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
            .map(|p| p.status)
            .unwrap_or(StepStatus::Pending);
        let mut row = StepRunRow::new(
            &step.run_id,
            &step.name,
            step.position,
            step.step_type,
            change.to,
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
        if let Some(turn) = &change.turn {
            shared_models::agent_journal::insert_turn(conn, turn)?;
        }
        let mut events = Vec::new();
        if from != change.to {
            events.push(NewRunEvent::transition(
                &step.run_id,
                now,
                Some(&step.name),
                from,
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
