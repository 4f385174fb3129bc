//! A run's end, on its own transaction: its status, its cancelled steps, its cancelled child
//! runs, and its parent woken.

use super::steps::upsert_step;
use super::{Fenced, LeaseHolder, StepRecord};
use crate::limits::text_column;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
use serde_json::Value;
use shared_models::models::{NewRunEvent, RunRow, StepRunRow};
use shared_models::runs::{self};
use shared_models::schema::{runs as runs_table, step_runs};
use shared_models::status::{RunStatus, StepStatus};

/// How a run ends.
#[derive(Clone)]
pub(crate) struct RunEnd {
    pub status: RunStatus,
    pub output: Option<Value>,
    pub error: Option<String>,
    /// Steps that did not start and now never will (after a failure): recorded CANCELLED.
    pub cancelled: Vec<StepRecord>,
}

/// Finish the run and release its lease, with the cancelled steps and transitions; a child
/// run wakes its parent.
pub(crate) fn finish_run(
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
                    if step.step_type == "agent" {
                        children.extend(runs::tool_runs(conn, run, &step.name)?);
                    }
                    status
                }
                None => {
                    let mut row = StepRunRow::new(
                        &run.id,
                        &step.name,
                        step.position,
                        step.step_type,
                        StepStatus::Cancelled,
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
                Some(&runs::keys::child_ended(&run.id)),
            )?;
        }
        Ok(Fenced::Written)
    })
}

/// The run's own transition out of RUNNING and its last log line.
pub(super) fn end_events(
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
