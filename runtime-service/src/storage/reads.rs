//! Reads of runs for the API and the metrics.

use crate::domain::ListRuns;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
use serde_json::Value;
use shared_models::models::{RunEventRow, RunRow, StepRunRow};
use shared_models::schema::{
    run_events, run_usage, runs as runs_table, step_runs, workflow_versions,
};

/// A run's usage (`run_usage`): input, output and cached tokens, and cost in pico-USD.
pub(crate) type UsageRow = (i64, i64, i64, i64);

/// A run of a list, with its usage (none before its first agent turn).
pub(crate) type RunWithUsage = (RunRow, Option<UsageRow>);

/// The columns of a [`UsageRow`].
type UsageColumns = (
    run_usage::input_tokens,
    run_usage::output_tokens,
    run_usage::cached_tokens,
    run_usage::cost_picos,
);
const USAGE: UsageColumns = (
    run_usage::input_tokens,
    run_usage::output_tokens,
    run_usage::cached_tokens,
    run_usage::cost_picos,
);

/// Newest first, each with its usage (none before its first agent turn); one more than the
/// limit tells whether another page exists.
pub(crate) fn list_runs(
    conn: &mut PgConnection,
    org_id: &str,
    q: &ListRuns,
) -> Result<(Vec<RunWithUsage>, bool), Error> {
    let mut query = runs_table::table
        .left_join(run_usage::table)
        .filter(runs_table::org_id.eq(org_id))
        .select((RunRow::as_select(), USAGE.nullable()))
        .order(runs_table::id.desc())
        .limit(q.limit + 1)
        .into_boxed();
    if let Some(wf) = &q.workflow_id {
        query = query.filter(runs_table::workflow_id.eq(wf));
    }
    if let Some(status) = q.status {
        query = query.filter(runs_table::status.eq(status.as_str()));
    }
    if let Some(before) = &q.before_id {
        query = query.filter(runs_table::id.lt(before));
    }
    let mut rows = query.load(conn)?;
    let more = rows.len() as i64 > q.limit;
    rows.truncate(q.limit as usize);
    Ok((rows, more))
}

/// A run with everything its detail view shows.
pub(crate) struct RunDetail {
    pub run: RunRow,
    /// Steps that have started, in definition order.
    pub steps: Vec<StepRunRow>,
    pub events: Vec<RunEventRow>,
    /// The run's version of the definition, to list steps that have not started.
    pub definition: Value,
    pub usage: Option<UsageRow>,
    /// The turns of its agent steps, by step and turn.
    pub turns: Vec<TurnRow>,
}

pub(crate) use shared_models::agent_journal::TurnRow;

pub(crate) fn get_run(
    conn: &mut PgConnection,
    org_id: &str,
    run_id: &str,
) -> Result<Option<RunRow>, Error> {
    runs_table::table
        .find(run_id)
        .filter(runs_table::org_id.eq(org_id))
        .select(RunRow::as_select())
        .first(conn)
        .optional()
}

pub(crate) fn get_run_detail(
    conn: &mut PgConnection,
    org_id: &str,
    run_id: &str,
) -> Result<Option<RunDetail>, Error> {
    let Some(run) = get_run(conn, org_id, run_id)? else {
        return Ok(None);
    };
    let steps = step_runs::table
        .filter(step_runs::run_id.eq(run_id))
        .select(StepRunRow::as_select())
        .order(step_runs::position)
        .load(conn)?;
    let events = run_events::table
        .filter(run_events::run_id.eq(run_id))
        .select(RunEventRow::as_select())
        .order(run_events::id)
        .load(conn)?;
    let definition = workflow_versions::table
        .find((&run.org_id, &run.workflow_id, run.workflow_version))
        .select(workflow_versions::definition)
        .first(conn)?;
    let usage = run_usage::table
        .find(run_id)
        .select(USAGE)
        .first(conn)
        .optional()?;
    let turns = shared_models::agent_journal::load_turns(conn, run_id, None)?;
    Ok(Some(RunDetail {
        run,
        steps,
        events,
        definition,
        usage,
        turns,
    }))
}

/// When the oldest PENDING run that is due (no `wake_at`, or one that has come) was
/// created; `None` when there is none. Read by the metrics and by the queue sampler.
pub(crate) fn oldest_due_pending(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, Error> {
    runs_table::table
        .filter(runs_table::status.eq(shared_models::status::RunStatus::Pending.as_str()))
        .filter(
            runs_table::wake_at
                .is_null()
                .or(runs_table::wake_at.le(now)),
        )
        .select(diesel::dsl::min(runs_table::created_at))
        .first(conn)
}
