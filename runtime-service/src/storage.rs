//! Plain diesel functions over `&mut PgConnection`. This service creates `runs` and owns
//! `outbox`; it reads workflows (owned by workflow-service) and progress (written by the
//! worker), and writes progress only for run control ([`control`]: cancel, retry, approval),
//! under the same run row lock the worker takes.
//!
//! - [`control`]: cancel, retry and approval decisions, each one transaction.
//! - [`events`]: a run's events after a given id, for its event stream.
//! - [`wakeups`]: jobs for WAITING runs, and PENDING runs held back by their org's running
//!   cap, whose `wake_at` has come.
//! - [`reaper`]: jobs for RUNNING runs whose lease expired (their worker is gone).
//! - [`sweeper`]: jobs for PENDING runs that have none in flight (the broker lost it).
//! - [`redrive`]: what the redrive of dead letters needs to know of their runs.
//! - [`counters`]: the deployment-wide counts of the operators' view (`ops_counters`).
//! - [`workers`]: the workers' presence rows and the runs each holds (read only).

pub mod control;
pub mod counters;
pub mod events;
pub mod redrive;
pub mod sweeper;
pub mod workers;

use crate::domain::{ListRuns, RunRequest};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
use diesel::sql_types::{BigInt, Double, Jsonb};
use serde_json::{Map, Value};
use shared_models::ids::WorkflowId;
use shared_models::limits::{self, QuotaExceeded};
use shared_models::models::{RunEventRow, RunRow, StepRunRow};
use shared_models::prepared::prepared;
use shared_models::queue::RunJob;
use shared_models::runs::{self, NewRun};
use shared_models::schema::{
    outbox, run_events, runs as runs_table, step_runs, workflow_versions, workflows,
};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub enum CreateOutcome {
    /// A new run, and the outbox row of its job.
    Created {
        run: RunRow,
        job: RunJob,
        outbox_id: i64,
    },
    /// The same Idempotency-Key with the same body: the first run again.
    Replayed(RunRow),
    KeyReused,
    WorkflowNotFound,
    WorkflowInactive,
    /// The org's `maxQueuedRuns` is reached: nothing was written.
    QuotaExceeded(QuotaExceeded),
}

/// In ONE transaction: read the workflow's current version, check the org's `maxQueuedRuns`
/// (`max_queued`, 0 = none), insert the run (PENDING) and its outbox row. Publishing happens
/// after commit, so a crash in between loses nothing. A replay of an Idempotency-Key is
/// answered whatever the quota (it creates nothing).
#[allow(clippy::too_many_arguments)]
pub fn create_run(
    conn: &mut PgConnection,
    org_id: &str,
    req: &RunRequest,
    workflow_id: &WorkflowId,
    request_id: Option<&str>,
    max_queued: u32,
    now: DateTime<Utc>,
) -> Result<CreateOutcome, Error> {
    let fingerprint = req.fingerprint();
    conn.transaction(|conn| {
        if let Some(key) = &req.idempotency_key {
            if let Some(outcome) = replay(conn, org_id, key, &fingerprint)? {
                return Ok(outcome);
            }
        }
        let current: Option<(i32, bool)> = workflows::table
            .find((org_id, workflow_id.as_str()))
            .filter(workflows::deleted_at.is_null())
            .select((workflows::version, workflows::is_active))
            .first(conn)
            .optional()?;
        let version = match current {
            None => return Ok(CreateOutcome::WorkflowNotFound),
            Some((_, false)) => return Ok(CreateOutcome::WorkflowInactive),
            Some((version, true)) => version,
        };
        if max_queued > 0 {
            let queued = limits::count_queued(conn, org_id, max_queued)?;
            if queued >= i64::from(max_queued) {
                return Ok(CreateOutcome::QuotaExceeded(QuotaExceeded::queued_runs(
                    max_queued, queued,
                )));
            }
        }
        let run = runs::pending_run(
            NewRun {
                org_id,
                workflow_id: workflow_id.as_str(),
                version,
                variables: Value::Object(req.variables.clone()),
                idempotency_key: req.idempotency_key.clone(),
                request_hash: req.idempotency_key.as_ref().map(|_| fingerprint.clone()),
                request_id: request_id.map(str::to_string),
                parent: None,
            },
            now,
        );
        // Two requests racing with one key: the loser inserts nothing and replays the winner.
        if !runs::insert_run(conn, &run)? {
            let key = req.idempotency_key.as_deref().ok_or(Error::NotFound)?;
            return replay(conn, org_id, key, &fingerprint)?.ok_or(Error::NotFound);
        }
        let (outbox_id, job) =
            runs::enqueue_job(conn, &run.id, org_id, run.request_id.clone(), None)?
                .ok_or(Error::NotFound)?;
        Ok(CreateOutcome::Created {
            run,
            job,
            outbox_id,
        })
    })
}

/// One trigger without an Idempotency-Key, already validated: what [`create_runs`] needs.
#[derive(Debug, Clone)]
pub struct PlainTrigger {
    pub org_id: String,
    pub workflow_id: WorkflowId,
    pub variables: Map<String, Value>,
    pub request_id: Option<String>,
    /// The run's `created_at`, taken when the request arrived.
    pub now: DateTime<Utc>,
    /// The org's `maxQueuedRuns` (0 = none), from the caller's key lookup.
    pub max_queued: u32,
}

/// [`create_run`] for many triggers without an Idempotency-Key, in ONE transaction of three
/// statements whatever their number: one SELECT of the current versions of every workflow
/// named, one multi-row INSERT of the runs, one multi-row INSERT of their outbox rows.
///
/// Each trigger gets, in order, exactly what [`create_run`] would have given it alone: a
/// missing or inactive workflow is that trigger's outcome and does not touch the others; a
/// run whose insert did nothing (an id collision, which `create_run` also refuses) is that
/// trigger's `Err(NotFound)` with nothing written for it. An `Err` of the whole function
/// means nothing was written at all.
///
/// `maxQueuedRuns`: each org of the batch has its PENDING + WAITING runs counted once (a
/// bounded count, [`limits::count_queued`]; far below the quota, the figure `known` keeps
/// stands in for it, see [`QueuedCounts`]), and only as many of its triggers as fit are
/// written, in order; the others are [`CreateOutcome::QuotaExceeded`]. Batches of one org
/// written at the same moment count without seeing each other, so together they may go over
/// the quota by up to one batch ([`crate::batcher::MAX_BATCH`] runs; docs/SECURITY.md).
pub fn create_runs(
    conn: &mut PgConnection,
    triggers: &[PlainTrigger],
    known: &QueuedCounts,
) -> Result<Vec<Result<CreateOutcome, Error>>, Error> {
    conn.transaction(|conn| {
        // The same text for any batch (`= ANY` of two arrays), so diesel prepares it once per
        // connection. With several orgs it may also read another org's workflow of a name
        // asked for: only exact (org, id) matches are looked up below.
        let orgs: HashSet<&str> = triggers.iter().map(|t| t.org_id.as_str()).collect();
        let ids: HashSet<&str> = triggers.iter().map(|t| t.workflow_id.as_str()).collect();
        let current: HashMap<(String, String), (i32, bool)> = workflows::table
            .filter(workflows::org_id.eq_any(orgs))
            .filter(workflows::id.eq_any(ids))
            .filter(workflows::deleted_at.is_null())
            .select((
                workflows::org_id,
                workflows::id,
                workflows::version,
                workflows::is_active,
            ))
            .load::<(String, String, i32, bool)>(conn)?
            .into_iter()
            .map(|(org_id, id, version, active)| ((org_id, id), (version, active)))
            .collect();

        // What each trigger becomes; `None` for the runs still to insert.
        let mut outcomes: Vec<Option<Result<CreateOutcome, Error>>> =
            Vec::with_capacity(triggers.len());
        let mut new_runs: Vec<RunRow> = Vec::new();
        let mut room = QueueRoom::new(known);
        for t in triggers {
            let key = (t.org_id.clone(), t.workflow_id.as_str().to_string());
            match current.get(&key) {
                None => outcomes.push(Some(Ok(CreateOutcome::WorkflowNotFound))),
                Some((_, false)) => outcomes.push(Some(Ok(CreateOutcome::WorkflowInactive))),
                Some((version, true)) => {
                    if let Some(exceeded) = room.take(conn, &t.org_id, t.max_queued)? {
                        outcomes.push(Some(Ok(CreateOutcome::QuotaExceeded(exceeded))));
                        continue;
                    }
                    outcomes.push(None);
                    new_runs.push(runs::pending_run(
                        NewRun {
                            org_id: &t.org_id,
                            workflow_id: t.workflow_id.as_str(),
                            version: *version,
                            variables: Value::Object(t.variables.clone()),
                            idempotency_key: None,
                            request_hash: None,
                            request_id: t.request_id.clone(),
                            parent: None,
                        },
                        t.now,
                    ));
                }
            }
        }
        if new_runs.is_empty() {
            return Ok(outcomes.into_iter().flatten().collect());
        }

        let inserted: HashSet<String> = runs::insert_pending_runs(conn, &new_runs)?
            .into_iter()
            .collect();
        let mut jobs = Vec::with_capacity(inserted.len());
        let mut payloads = Vec::with_capacity(inserted.len());
        for run in new_runs.iter().filter(|r| inserted.contains(&r.id)) {
            let job = RunJob::new(&run.id, &run.org_id, run.request_id.clone());
            payloads
                .push(serde_json::to_value(&job).map_err(|e| Error::SerializationError(e.into()))?);
            jobs.push(job);
        }
        let mut outbox_ids: HashMap<String, i64> = if jobs.is_empty() {
            HashMap::new()
        } else {
            let rows: Vec<(&str, &Value)> = jobs
                .iter()
                .zip(&payloads)
                .map(|(job, payload)| (job.run_id.as_str(), payload))
                .collect();
            runs::enqueue_jobs(conn, &rows)?.into_iter().collect()
        };

        let mut jobs: HashMap<String, RunJob> =
            jobs.into_iter().map(|j| (j.run_id.clone(), j)).collect();
        let mut new_runs = new_runs.into_iter();
        let mut result = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            if let Some(outcome) = outcome {
                result.push(outcome);
                continue;
            }
            let run = new_runs.next().ok_or(Error::NotFound)?;
            if !inserted.contains(&run.id) {
                // As `create_run`: a run that was not inserted, without a key to replay.
                result.push(Err(Error::NotFound));
                continue;
            }
            // Every inserted run has its outbox row, or nothing commits: a run without a job
            // would never be executed.
            let (Some(outbox_id), Some(job)) = (outbox_ids.remove(&run.id), jobs.remove(&run.id))
            else {
                return Err(Error::NotFound);
            };
            result.push(Ok(CreateOutcome::Created {
                run,
                job,
                outbox_id,
            }));
        }
        Ok(result)
    })
}

/// Far below an org's `maxQueuedRuns`, counting its queued runs for every batch costs more
/// than the quota protects (the count reads up to `maxQueuedRuns` index entries, and a trigger
/// flood makes one batch every millisecond or two). So each process keeps the last exact count
/// of each org, with what it admitted since: while that stays under half the quota and is at
/// most [`QueuedCounts::RECOUNT_AFTER`] old, a batch is admitted against it without counting;
/// nearer the quota, every batch counts exactly. The kept figure only errs high (runs that
/// ended since are still in it; an admission whose batch rolled back too), which makes the
/// next exact count come sooner, never later. Other replicas' admissions are not in it: they
/// would have to admit half the quota within a second to take an org past it
/// (docs/SECURITY.md, "Known limits").
#[derive(Default)]
pub struct QueuedCounts {
    known: Mutex<HashMap<String, KnownQueue>>,
    /// Exact counts made so far (for tests and a glance at how often the quota costs one).
    counts: std::sync::atomic::AtomicU64,
}

#[derive(Clone, Copy)]
struct KnownQueue {
    counted_at: Instant,
    /// Queued runs at `counted_at`, plus every run admitted since.
    queued: i64,
}

impl QueuedCounts {
    /// How long a count is trusted far below the quota.
    pub const RECOUNT_AFTER: Duration = Duration::from_secs(1);
    /// Orgs remembered at most; the map is emptied past it.
    const CAPACITY: usize = 10_000;

    /// The kept figure of `org_id` if it may stand in for a count against `max`.
    fn trusted(&self, org_id: &str, max: u32) -> Option<i64> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known
            .get(org_id)
            .filter(|k| k.counted_at.elapsed() < Self::RECOUNT_AFTER)
            .filter(|k| 2 * (k.queued + 1) <= i64::from(max))
            .map(|k| k.queued)
    }

    /// How many exact counts were made so far.
    pub fn counts(&self) -> u64 {
        self.counts.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn counted(&self, org_id: &str, queued: i64) {
        self.counts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= Self::CAPACITY {
            known.clear();
        }
        known.insert(
            org_id.to_string(),
            KnownQueue {
                counted_at: Instant::now(),
                queued,
            },
        );
    }

    fn admitted(&self, org_id: &str) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = known.get_mut(org_id) {
            k.queued += 1;
        }
    }
}

/// The places left under `maxQueuedRuns` for each org of one batch: the org's queued runs
/// (counted, or trusted from [`QueuedCounts`]) and the places taken in this batch.
struct QueueRoom<'a> {
    known: &'a QueuedCounts,
    orgs: HashMap<String, Room>,
}

struct Room {
    queued: i64,
    taken: i64,
    /// Whether `queued` was counted in this batch (else trusted from the kept figure).
    exact: bool,
}

impl<'a> QueueRoom<'a> {
    fn new(known: &'a QueuedCounts) -> Self {
        Self {
            known,
            orgs: HashMap::new(),
        }
    }

    /// Take a place for one more run of `org_id`, or the quota it would go over.
    fn take(
        &mut self,
        conn: &mut PgConnection,
        org_id: &str,
        max: u32,
    ) -> Result<Option<QuotaExceeded>, Error> {
        if max == 0 {
            return Ok(None);
        }
        if !self.orgs.contains_key(org_id) {
            let room = match self.known.trusted(org_id, max) {
                Some(queued) => Room {
                    queued,
                    taken: 0,
                    exact: false,
                },
                None => self.count(conn, org_id, max)?,
            };
            self.orgs.insert(org_id.to_string(), room);
        }
        let near = {
            let room = &self.orgs[org_id];
            !room.exact && 2 * (room.queued + room.taken + 1) > i64::from(max)
        };
        if near {
            let taken = self.orgs[org_id].taken;
            let mut room = self.count(conn, org_id, max)?;
            room.taken = taken;
            self.orgs.insert(org_id.to_string(), room);
        }
        let room = self.orgs.get_mut(org_id).ok_or(Error::NotFound)?;
        if room.queued + room.taken >= i64::from(max) {
            return Ok(Some(QuotaExceeded::queued_runs(
                max,
                room.queued + room.taken,
            )));
        }
        room.taken += 1;
        self.known.admitted(org_id);
        Ok(None)
    }

    /// Count `org_id`'s queued runs now (bounded by `max`), and keep the figure.
    fn count(&self, conn: &mut PgConnection, org_id: &str, max: u32) -> Result<Room, Error> {
        let queued = limits::count_queued(conn, org_id, max)?;
        self.known.counted(org_id, queued);
        Ok(Room {
            queued,
            taken: 0,
            exact: true,
        })
    }
}

fn replay(
    conn: &mut PgConnection,
    org_id: &str,
    key: &str,
    fingerprint: &str,
) -> Result<Option<CreateOutcome>, Error> {
    let existing: Option<RunRow> = runs_table::table
        .filter(runs_table::org_id.eq(org_id))
        .filter(runs_table::idempotency_key.eq(key))
        .select(RunRow::as_select())
        .first(conn)
        .optional()?;
    Ok(existing.map(|run| {
        if run.request_hash.as_deref() == Some(fingerprint) {
            CreateOutcome::Replayed(run)
        } else {
            CreateOutcome::KeyReused
        }
    }))
}

/// Mark outbox rows sent (those not already), in one statement.
pub fn mark_outbox_sent(
    conn: &mut PgConnection,
    outbox_ids: &[i64],
    now: DateTime<Utc>,
) -> Result<(), Error> {
    prepared("UPDATE outbox SET sent_at = $1 WHERE id = ANY($2) AND sent_at IS NULL")
        .bind::<diesel::sql_types::Timestamptz, _>(now)
        .bind::<diesel::sql_types::Array<BigInt>, _>(outbox_ids)
        .execute(conn)
        .map(|_| ())
}

/// Mark one row the relay published sent. A row that waited longer than `grace_secs` (the
/// broker was away, or the request path's process died) got its job to the broker only now:
/// its run, if still PENDING, has `queued_at` set to now, so the PENDING sweeper
/// ([`sweeper`]) counts from now and not from the run's creation.
pub fn mark_relayed(
    conn: &mut PgConnection,
    outbox_id: i64,
    now: DateTime<Utc>,
    grace_secs: f64,
) -> Result<(), Error> {
    prepared(
        "WITH sent AS (
             UPDATE outbox SET sent_at = $1 WHERE id = $2 AND sent_at IS NULL
             RETURNING run_id, created_at)
         UPDATE runs r SET queued_at = $1 FROM sent
         WHERE r.id = sent.run_id AND r.status = 'PENDING'
           AND sent.created_at < $1 - make_interval(secs => $3)",
    )
    .bind::<diesel::sql_types::Timestamptz, _>(now)
    .bind::<BigInt, _>(outbox_id)
    .bind::<Double, _>(grace_secs)
    .execute(conn)
    .map(|_| ())
}

/// Delete the outbox rows sent more than `retention_secs` ago among the `limit` oldest
/// (lowest ids: rows are made in id order and sent soon after); returns how many. The scan
/// is the first `limit` entries of the primary key, whatever the table holds: fewer deleted
/// than `limit` means the old end is pruned (or held by a row not yet sent).
///
/// Safe after an hour (the default): a sent row is never read again except through its
/// `dedupe_key`, which the scheduler and the lease reaper look up (`NOT EXISTS (... outbox
/// o WHERE o.dedupe_key = ...)`, storage/wakeups.rs and storage/reaper.rs) so as to queue a
/// wake-up or an expired lease once. Those keys name the run and its `wake_at` or
/// `lease_expires_at`, and the worker's claim clears `wake_at` and renews the lease; a key
/// can only be seen again after its row is pruned if its run kept that very `wake_at` or
/// expired lease for the whole retention, i.e. the job sent an hour ago never reached a
/// worker. Queueing it again then is what should happen, and a duplicate job is harmless
/// anyway: the worker's claim of the run decides (at-least-once delivery, docs/RELIABILITY.md
/// "Guarantees").
/// Child-start keys (`start:<run>`) are written once, when the child is made.
pub fn prune_sent_outbox(
    conn: &mut PgConnection,
    retention_secs: f64,
    limit: i64,
) -> Result<usize, Error> {
    prepared(
        "DELETE FROM outbox o USING (SELECT id, sent_at FROM outbox ORDER BY id LIMIT $2) oldest
         WHERE o.id = oldest.id
           AND oldest.sent_at IS NOT NULL
           AND oldest.sent_at < now() - make_interval(secs => $1)",
    )
    .bind::<Double, _>(retention_secs)
    .bind::<BigInt, _>(limit)
    .execute(conn)
}

#[derive(QueryableByName, Debug)]
pub struct PendingJob {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Jsonb)]
    pub payload: Value,
}

/// Take up to `limit` unsent jobs for publishing: those older than `grace_secs` (the request
/// path had its chance), and wake-ups (rows with a `dedupe_key`) at once, since no request
/// path publishes those. A claim lasts 30 s; other relays (other replicas) skip claimed
/// rows, and an abandoned claim expires.
pub fn claim_unsent(
    conn: &mut PgConnection,
    grace_secs: f64,
    limit: i64,
) -> Result<Vec<PendingJob>, Error> {
    diesel::sql_query(
        "UPDATE outbox SET claimed_until = now() + interval '30 seconds', attempts = attempts + 1
         WHERE id IN (
             SELECT id FROM outbox
             WHERE sent_at IS NULL
               AND (dedupe_key IS NOT NULL OR created_at < now() - make_interval(secs => $1))
               AND (claimed_until IS NULL OR claimed_until < now())
             ORDER BY id LIMIT $2
             FOR UPDATE SKIP LOCKED)
         RETURNING id, payload",
    )
    .bind::<Double, _>(grace_secs)
    .bind::<BigInt, _>(limit)
    .load(conn)
}

/// Give claimed rows back after a failed publish, so the next pass retries them at once.
pub fn release_claims(conn: &mut PgConnection, ids: &[i64]) -> Result<(), Error> {
    diesel::update(
        outbox::table
            .filter(outbox::id.eq_any(ids))
            .filter(outbox::sent_at.is_null()),
    )
    .set(outbox::claimed_until.eq(None::<DateTime<Utc>>))
    .execute(conn)
    .map(|_| ())
}

/// Newest first; one more than the limit tells whether another page exists.
pub fn list_runs(
    conn: &mut PgConnection,
    org_id: &str,
    q: &ListRuns,
) -> Result<(Vec<RunRow>, bool), Error> {
    let mut query = runs_table::table
        .filter(runs_table::org_id.eq(org_id))
        .select(RunRow::as_select())
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
pub struct RunDetail {
    pub run: RunRow,
    /// Steps that have started, in definition order.
    pub steps: Vec<StepRunRow>,
    pub events: Vec<RunEventRow>,
    /// The run's version of the definition, to list steps that have not started.
    pub definition: Value,
}

pub fn get_run(
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

pub fn get_run_detail(
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
    Ok(Some(RunDetail {
        run,
        steps,
        events,
        definition,
    }))
}

/// When the oldest PENDING run that is due (no `wake_at`, or one that has come) was
/// created; `None` when there is none. Read by the metrics and by the queue sampler.
pub fn oldest_due_pending(
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
