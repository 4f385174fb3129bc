//! Creating runs: one with its Idempotency-Key, or a batch of plain triggers, each under
//! its org's `maxQueuedRuns`.

use crate::domain::RunRequest;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
use serde_json::{Map, Value};
use shared_models::ids::WorkflowId;
use shared_models::limits::{self, QuotaExceeded};
use shared_models::models::RunRow;
use shared_models::queue::RunJob;
use shared_models::runs::{self, NewRun};
use shared_models::schema::{runs as runs_table, workflows};
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
                budget: req.budget_json(),
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
    /// The trigger's `budget` override, as stored with the run.
    pub budget: Option<Value>,
    pub request_id: Option<String>,
    /// The run's `created_at`, taken when the request arrived.
    pub now: DateTime<Utc>,
    /// The org's `maxQueuedRuns` (0 = none), from the caller's key lookup.
    pub max_queued: u32,
}

/// [`create_run`] for many triggers without an Idempotency-Key, in two statements whatever
/// their number: one SELECT of the current versions of every workflow named, then ONE
/// statement that inserts the runs and their outbox rows together (atomic on its own: no
/// transaction, so no `BEGIN` and `COMMIT` round trips; the read gains nothing from sharing a
/// transaction with the insert at READ COMMITTED, where it locks nothing either way).
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
                        budget: t.budget.clone(),
                    },
                    t.now,
                ));
            }
        }
    }
    if new_runs.is_empty() {
        return Ok(outcomes.into_iter().flatten().collect());
    }

    let mut jobs = Vec::with_capacity(new_runs.len());
    let mut payloads = Vec::with_capacity(new_runs.len());
    for run in &new_runs {
        let job = RunJob::new(&run.id, &run.org_id, run.request_id.clone());
        payloads.push(serde_json::to_value(&job).map_err(|e| Error::SerializationError(e.into()))?);
        jobs.push(job);
    }
    let rows: Vec<(&str, &Value)> = jobs
        .iter()
        .zip(&payloads)
        .map(|(job, payload)| (job.run_id.as_str(), payload))
        .collect();
    // Each inserted run with its job's outbox row: the statement writes both or neither.
    let outbox_ids: HashMap<String, Option<i64>> =
        runs::insert_runs_with_jobs(conn, &new_runs, &rows)?
            .into_iter()
            .collect();
    let mut created = new_runs.into_iter().zip(jobs);
    let mut result = Vec::with_capacity(outcomes.len());
    for outcome in outcomes {
        if let Some(outcome) = outcome {
            result.push(outcome);
            continue;
        }
        let (run, job) = created.next().ok_or(Error::NotFound)?;
        result.push(match outbox_ids.get(&run.id).copied().flatten() {
            Some(outbox_id) => Ok(CreateOutcome::Created {
                run,
                job,
                outbox_id,
            }),
            // As `create_run`: a run that was not inserted, without a key to replay.
            None => Err(Error::NotFound),
        });
    }
    Ok(result)
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
    pub(crate) const RECOUNT_AFTER: Duration = Duration::from_secs(1);
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
