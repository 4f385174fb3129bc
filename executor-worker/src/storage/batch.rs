//! Group-commit writes: the pure steps and the simple run ends of many runs, in one
//! transaction of a few statements whatever their number ([`crate::checkpoints`]).

use super::finish::end_events;
use super::steps::start_events;
use super::{Fenced, LeaseHolder, RunEnd, StepChange, StepRecord};
use crate::limits::text_column;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
use diesel::sql_types::{Array, Int4, Jsonb, Nullable, Text, Timestamptz};
use serde_json::Value;
use shared_models::models::{NewRunEvent, RunRow, StepRunRow};
use shared_models::prepared::{column, prepared, Id};
use shared_models::runs;
use shared_models::status::{RunStatus, StepStatus};

/// The fence of a checkpoint batch (public for the test of its plan): the leases of the runs
/// `$3` still held by `$4` extended, and every step row of those runs, or one row with no
/// step for a run that has none yet.
pub const FENCE_STEPS: &str = include_str!("sql/fence_steps.sql");

/// The writes of a checkpoint batch's pure steps: every step row upserted (as arrays, `$9`
/// on) with every event inserted (`$1` to `$8`, [`runs::with_events`]), in one statement.
const CHECKPOINT_STEPS: &str = include_str!("sql/checkpoint_steps.sql");

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

/// The checkpoint batch of first attempts, in one statement (public for the test of its
/// plan): see the file's head.
pub const CHECKPOINT_FRESH: &str = include_str!("sql/checkpoint_fresh.sql");

/// A pure step's whole attempt (computed, not yet recorded), for [`checkpoint_pure_steps`].
#[derive(Debug, Clone)]
pub struct PureStep {
    pub record: StepRecord,
    pub output: Value,
    /// No row of this step can exist yet: its run was claimed for the first time by this
    /// job ([`super::ClaimedRun::first_claim`]), and a pure step is checkpointed once per
    /// job. Its attempt is then the first, from PENDING, and needs no reading.
    pub first: bool,
}

/// Checkpoint the start and the completion of many pure steps, of any of the runs this
/// worker holds, in ONE transaction of two statements whatever their number (group commit):
/// the fence (every run's lease extended, those no longer held left out) returning the held
/// runs' previous step states, then one upsert of every step row with one insert of every
/// event (a CTE). What is written for each
/// step is exactly what `start_step` then `record_step` with `StepChange::completed`
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
pub(crate) fn write_batch(
    conn: &mut PgConnection,
    steps: &[PureStep],
    ends: &[RunFinish],
    me: &LeaseHolder,
    now: DateTime<Utc>,
) -> Result<(Vec<Fenced>, Vec<Fenced>), Error> {
    if steps.iter().all(|s| s.first) {
        return write_first(conn, steps, ends, me, now);
    }
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
        let (rows, events) = completed(&live, now, |rec| {
            match previous.get(&(rec.run_id.as_str(), rec.name.as_str())) {
                Some((status, attempt)) => (*status, attempt + 1),
                None => (StepStatus::Pending.as_str(), 1),
            }
        });
        // One statement for any batch ([`CHECKPOINT_STEPS`]). A completed pure step has no
        // error, wake-up or child run, so those columns are cleared.
        runs::with_events(CHECKPOINT_STEPS, &events)
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

/// The rows and events of completed pure steps, each started as `from` says (the status it
/// leaves and its attempt number).
fn completed<'f>(
    steps: &[&PureStep],
    now: DateTime<Utc>,
    from: impl Fn(&StepRecord) -> (&'f str, i32),
) -> (Vec<StepRunRow>, Vec<NewRunEvent>) {
    let mut rows = Vec::with_capacity(steps.len());
    let mut events = Vec::with_capacity(steps.len() * 4);
    for step in steps {
        let rec = &step.record;
        let (from, attempt) = from(rec);
        let change = StepChange::completed(step.output.clone());
        let mut row = StepRunRow::new(
            &rec.run_id,
            &rec.name,
            rec.position,
            rec.step_type,
            change.to,
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
    (rows, events)
}

/// The error texts (as stored) and the events of run ends.
fn ended(ends: &[RunFinish], now: DateTime<Utc>) -> (Vec<Option<String>>, Vec<NewRunEvent>) {
    let errors: Vec<Option<String>> = ends
        .iter()
        .map(|e| e.error.clone().map(text_column))
        .collect();
    let events = ends
        .iter()
        .zip(&errors)
        .flat_map(|(e, error)| end_events(&e.run_id, e.status, error.as_deref(), now))
        .collect();
    (errors, events)
}

/// A batch whose steps are all first attempts ([`PureStep::first`]), and its ends, in ONE
/// statement without a transaction of its own ([`CHECKPOINT_FRESH`]): the runs whose steps go
/// without their end fenced (lease extended), the ending runs ended (their update is their
/// fence), and the step rows and every event written for the runs so fenced only. What is
/// written is what [`pure_steps_in`] and [`finish_runs_in`] write in their transaction;
/// one round trip instead of four or five.
fn write_first(
    conn: &mut PgConnection,
    steps: &[PureStep],
    ends: &[RunFinish],
    me: &LeaseHolder,
    now: DateTime<Utc>,
) -> Result<(Vec<Fenced>, Vec<Fenced>), Error> {
    let ending: std::collections::HashSet<&str> = ends.iter().map(|e| e.run_id.as_str()).collect();
    let mut fence: Vec<&str> = steps
        .iter()
        .map(|s| s.record.run_id.as_str())
        .filter(|id| !ending.contains(id))
        .collect();
    fence.sort_unstable();
    fence.dedup();
    let all: Vec<&PureStep> = steps.iter().collect();
    let (rows, mut events) = completed(&all, now, |_| (StepStatus::Pending.as_str(), 1));
    let (errors, end_events) = ended(ends, now);
    // A run's step events before its end's: their ids order the stream.
    events.extend(end_events);
    let live: Vec<Id> = runs::with_events(CHECKPOINT_FRESH, &events)
        .bind::<Timestamptz, _>(now)
        .bind::<Timestamptz, _>(me.expires(now))
        .bind::<Array<Text>, _>(&fence)
        .bind::<Text, _>(&me.worker_id)
        .bind::<Array<Text>, _>(column(&rows, |r| r.run_id.as_str()))
        .bind::<Array<Text>, _>(column(&rows, |r| r.name.as_str()))
        .bind::<Array<Int4>, _>(column(&rows, |r| r.position))
        .bind::<Array<Text>, _>(column(&rows, |r| r.step_type.as_str()))
        .bind::<Array<Text>, _>(column(&rows, |r| r.status.as_str()))
        .bind::<Array<Int4>, _>(column(&rows, |r| r.attempt))
        .bind::<Array<Nullable<Timestamptz>>, _>(column(&rows, |r| r.started_at))
        .bind::<Array<Nullable<Timestamptz>>, _>(column(&rows, |r| r.completed_at))
        .bind::<Array<Nullable<Jsonb>>, _>(column(&rows, |r| r.output.as_ref()))
        .bind::<Array<Text>, _>(column(ends, |e| e.run_id.as_str()))
        .bind::<Array<Text>, _>(column(ends, |e| e.status.as_str()))
        .bind::<Array<Nullable<Jsonb>>, _>(column(ends, |e| e.output.as_ref()))
        .bind::<Array<Nullable<Text>>, _>(column(&errors, |e| e.as_deref()))
        .load(conn)?;
    let live: std::collections::HashSet<String> = live.into_iter().map(|r| r.id).collect();
    let fenced = |run_id: &str| {
        if live.contains(run_id) {
            Fenced::Written
        } else {
            Fenced::LeaseLost
        }
    };
    Ok((
        steps.iter().map(|s| fenced(&s.record.run_id)).collect(),
        ends.iter().map(|e| fenced(&e.run_id)).collect(),
    ))
}

/// How a run ends when nothing else goes with its end: no step to cancel, no parent to wake
/// (every other end goes through `finish_run`).
#[derive(Debug, Clone)]
pub struct RunFinish {
    pub run_id: String,
    pub status: RunStatus,
    pub output: Option<Value>,
    pub error: Option<String>,
}

impl RunFinish {
    /// `end` of `run`, when it is that simple.
    pub(crate) fn simple(run: &RunRow, end: &RunEnd) -> Option<Self> {
        (end.cancelled.is_empty() && run.parent_run_id.is_none()).then(|| Self {
            run_id: run.id.clone(),
            status: end.status,
            output: end.output.clone(),
            error: end.error.clone(),
        })
    }
}

/// End many runs (each as `finish_run` would) in one statement (the runs updated and their
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
pub const END_RUNS: &str = include_str!("sql/end_runs.sql");

fn finish_runs_in(
    conn: &mut PgConnection,
    ends: &[RunFinish],
    me: &LeaseHolder,
    now: DateTime<Utc>,
) -> Result<Vec<Fenced>, Error> {
    // The events of every end, written for the runs the update ended only (its fence): one
    // statement. Each ended run has at least its transition, so the events inserted name the
    // runs ended; `ORDER BY` keeps them in the order given (their ids order the stream).
    let (errors, events) = ended(ends, now);
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
