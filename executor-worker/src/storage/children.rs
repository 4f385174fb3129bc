//! Child runs of `subworkflow` steps and of agents' workflow tools: started under the lease
//! and the org's quotas, and their state read back.

use super::lease::touch;
use super::steps::record_step;
use super::{Fenced, LeaseHolder, StepChange, StepRecord};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
use diesel::sql_types::{BigInt, Text};
use serde_json::Value;
use shared_models::limits::{self, QuotaExceeded};
use shared_models::models::RunRow;
use shared_models::prepared::prepared;
use shared_models::runs::{self, NewRun};
use shared_models::schema::{runs as runs_table, workflows};
use shared_models::status::RunStatus;

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
pub(crate) fn start_child_run(
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
        let started = insert_child(conn, parent, &step.name, workflow_id, variables, now)?;
        let ChildStart::Started(child) = &started else {
            return Ok(Ok(started));
        };
        let message = format!("started child run {child} of {workflow_id}");
        let waiting = StepChange::waiting(wait_until, Some(child.clone()), message);
        if record_step(conn, step, &waiting, me, now)? == Fenced::LeaseLost {
            return Ok(Err(Fenced::LeaseLost));
        }
        Ok(Ok(started))
    })
}

/// Which tool call of which agent step starts a child run.
pub struct ToolCallAt<'a> {
    pub step: &'a str,
    pub turn: i32,
    pub call_id: &'a str,
}

/// Start the child run of a workflow tool's call and note it in the call's turn (its result
/// is `{"childRunId": ...}` until the child ends), in one transaction under the lease: a
/// redelivered job finds the note and waits for that child instead of starting another.
/// Refused and busy as [`start_child_run`].
pub(crate) fn start_tool_run(
    conn: &mut PgConnection,
    parent: &RunRow,
    at: ToolCallAt<'_>,
    workflow_id: &str,
    variables: Value,
    me: &LeaseHolder,
    now: DateTime<Utc>,
) -> Result<Result<ChildStart, Fenced>, Error> {
    conn.transaction(|conn| {
        if touch(conn, &parent.id, me, now)? == Fenced::LeaseLost {
            return Ok(Err(Fenced::LeaseLost));
        }
        let started = insert_child(conn, parent, at.step, workflow_id, variables, now)?;
        if let ChildStart::Started(child) = &started {
            diesel::sql_query(
                "UPDATE agent_turns SET tool_results = tool_results || jsonb_build_object($4::text, jsonb_build_object('childRunId', $5::text))
                 WHERE run_id = $1 AND step = $2 AND turn = $3",
            )
            .bind::<Text, _>(&parent.id)
            .bind::<Text, _>(at.step)
            .bind::<diesel::sql_types::Integer, _>(at.turn)
            .bind::<Text, _>(at.call_id)
            .bind::<Text, _>(child)
            .execute(conn)?;
        }
        Ok(Ok(started))
    })
}

/// In the caller's transaction, under its lease: insert and queue a child run of `parent`
/// for its step `step`, or say why not.
fn insert_child(
    conn: &mut PgConnection,
    parent: &RunRow,
    step: &str,
    workflow_id: &str,
    variables: Value,
    now: DateTime<Utc>,
) -> Result<ChildStart, Error> {
    // A workflow may start itself; the chain of parents bounds how deep that goes.
    let mut depth = 1;
    let mut ancestor = parent.parent_run_id.clone();
    while let Some(id) = ancestor {
        depth += 1;
        if depth > runs::MAX_CHILD_DEPTH {
            return Ok(ChildStart::Refused(format!(
                "subworkflows are nested more than {} deep",
                runs::MAX_CHILD_DEPTH
            )));
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
        Quota::TreeBusy => return Ok(ChildStart::TreeBusy),
        Quota::Exceeded(exceeded) => return Ok(ChildStart::Refused(exceeded.to_string())),
    }
    let current: Option<(i32, bool)> = workflows::table
        .find((&parent.org_id, workflow_id))
        .filter(workflows::deleted_at.is_null())
        .select((workflows::version, workflows::is_active))
        .first(conn)
        .optional()?;
    let version = match current {
        None => {
            return Ok(ChildStart::Refused(format!(
                "workflow '{workflow_id}' was not found"
            )))
        }
        Some((_, false)) => {
            return Ok(ChildStart::Refused(format!(
                "workflow '{workflow_id}' is inactive"
            )))
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
            parent: Some((&parent.id, step, root)),
            budget: None,
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
        Some(&runs::keys::child_start(&child.id)),
    )?;
    Ok(ChildStart::Started(child.id))
}

/// What [`start_child_run`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ChildStart {
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
const COUNT_DESCENDANTS: &str = include_str!("sql/count_descendants.sql");

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
pub(crate) type ChildState = (RunStatus, Option<Value>, Option<String>);

pub(crate) fn child_state(
    conn: &mut PgConnection,
    child_id: &str,
) -> Result<Option<ChildState>, Error> {
    runs_table::table
        .find(child_id)
        .select((runs_table::status, runs_table::output, runs_table::error))
        .first(conn)
        .optional()
}
