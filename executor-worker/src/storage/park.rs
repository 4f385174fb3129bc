//! Parking: a run with nothing executing and something waiting goes WAITING and releases
//! its worker.

use super::LeaseHolder;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
use shared_models::models::{NewRunEvent, StepRunRow};
use shared_models::runs::{self};
use shared_models::schema::{runs as runs_table, step_runs};
use shared_models::status::{RunStatus, StepStatus};

pub(crate) enum Park {
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
pub(crate) fn park_run(
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
            if row.status != StepStatus::Waiting || row.wake_at.is_some_and(|t| t <= now) {
                return Ok(Park::Changed);
            }
            if let Some(child) = &row.child_run_id {
                let status: Option<RunStatus> = runs_table::table
                    .find(child)
                    .select(runs_table::status)
                    .first(conn)
                    .optional()?;
                if status.is_none_or(RunStatus::is_terminal) {
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
