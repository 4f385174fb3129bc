//! Group-commit writes: the pure steps and the simple run ends of many runs, in one
//! statement whatever their number, or a transaction of two when some steps are later
//! attempts ([`crate::checkpoints`]).

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

/// A checkpoint batch's writes in one statement (public for the test of its plan): the runs
/// fenced, the runs ended, the step rows and every event, for the runs so fenced only (see
/// the file's head).
pub const CHECKPOINT_BATCH: &str = include_str!("sql/checkpoint_batch.sql");

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
/// worker holds, whatever their number (group commit): see [`write_batch`]. What is written
/// for each step is exactly what `start_step` then `record_step` with
/// `StepChange::completed` would write. Returns, in the order given, whether each step was
/// written or its run's lease was lost (then nothing of it was written).
pub fn checkpoint_pure_steps(
    conn: &mut PgConnection,
    steps: &[PureStep],
    me: &LeaseHolder,
    now: DateTime<Utc>,
) -> Result<Vec<Fenced>, Error> {
    write_batch(conn, steps, &[], me, now).map(|(steps, _)| steps)
}

/// [`checkpoint_pure_steps`] and [`finish_runs`] together: what the [`crate::checkpoints`]
/// writer commits for each batch. When every step is a first attempt ([`PureStep::first`]),
/// their previous states are known (none) and the batch is ONE statement without a
/// transaction of its own ([`CHECKPOINT_BATCH`]): the runs whose steps go without their end
/// fenced (lease extended), the ending runs ended (their update is their fence), and the
/// step rows and every event written for the runs so fenced only. Otherwise it is a
/// transaction: the fence reads the held runs' previous step states first ([`FENCE_STEPS`]),
/// then the same statement writes.
pub(crate) fn write_batch(
    conn: &mut PgConnection,
    steps: &[PureStep],
    ends: &[RunFinish],
    me: &LeaseHolder,
    now: DateTime<Utc>,
) -> Result<(Vec<Fenced>, Vec<Fenced>), Error> {
    let fenced = |live: &std::collections::HashSet<String>, run_id: &str| {
        if live.contains(run_id) {
            Fenced::Written
        } else {
            Fenced::LeaseLost
        }
    };
    let live = if steps.iter().all(|s| s.first) {
        let all: Vec<&PureStep> = steps.iter().collect();
        write_fenced(
            conn,
            &all,
            |_| (StepStatus::Pending.as_str(), 1),
            ends,
            me,
            now,
        )?
    } else {
        conn.transaction(|conn| later_attempts(conn, steps, ends, me, now))?
    };
    Ok((
        steps
            .iter()
            .map(|s| fenced(&live, &s.record.run_id))
            .collect(),
        ends.iter().map(|e| fenced(&live, &e.run_id)).collect(),
    ))
}

/// A batch with later attempts, inside the caller's transaction: the fence returns the held
/// runs' previous step states (a held run without steps yet comes back once, with no step),
/// then [`write_fenced`] writes the held runs' steps from them, and the ends. Returns the
/// runs written.
fn later_attempts(
    conn: &mut PgConnection,
    steps: &[PureStep],
    ends: &[RunFinish],
    me: &LeaseHolder,
    now: DateTime<Utc>,
) -> Result<std::collections::HashSet<String>, Error> {
    let mut ids: Vec<&str> = steps.iter().map(|s| s.record.run_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
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
    write_fenced(
        conn,
        &live,
        |rec| match previous.get(&(rec.run_id.as_str(), rec.name.as_str())) {
            Some((status, attempt)) => (*status, attempt + 1),
            None => (StepStatus::Pending.as_str(), 1),
        },
        ends,
        me,
        now,
    )
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

/// Write `steps` (each started as `from` says) and `ends` in ONE statement
/// ([`CHECKPOINT_BATCH`]), each run fenced by its lease; returns the runs written (nothing
/// is written for the others).
fn write_fenced<'f>(
    conn: &mut PgConnection,
    steps: &[&PureStep],
    from: impl Fn(&StepRecord) -> (&'f str, i32),
    ends: &[RunFinish],
    me: &LeaseHolder,
    now: DateTime<Utc>,
) -> Result<std::collections::HashSet<String>, Error> {
    if steps.is_empty() && ends.is_empty() {
        return Ok(Default::default());
    }
    let ending: std::collections::HashSet<&str> = ends.iter().map(|e| e.run_id.as_str()).collect();
    let mut fence: Vec<&str> = steps
        .iter()
        .map(|s| s.record.run_id.as_str())
        .filter(|id| !ending.contains(id))
        .collect();
    fence.sort_unstable();
    fence.dedup();
    let (rows, mut events) = completed(steps, now, from);
    let (errors, end_events) = ended(ends, now);
    // A run's step events before its end's: their ids order the stream.
    events.extend(end_events);
    // A completed pure step has no error, wake-up or child run: the upsert clears them.
    let live: Vec<Id> = runs::with_events(CHECKPOINT_BATCH, &events)
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
    Ok(live.into_iter().map(|r| r.id).collect())
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
/// events inserted, [`CHECKPOINT_BATCH`]), each fenced by its own lease. Returns, in the order
/// given, whether each was written.
pub fn finish_runs(
    conn: &mut PgConnection,
    ends: &[RunFinish],
    me: &LeaseHolder,
    now: DateTime<Utc>,
) -> Result<Vec<Fenced>, Error> {
    write_batch(conn, &[], ends, me, now).map(|(_, ends)| ends)
}
