//! `POST /ops/dead-letters/redrive`: moves dead letters back to the job queue.
//!
//! A call takes letters from the dead-letter queue one at a time, oldest first, up to the
//! filter's `limit` and never more than the queue held when it began (so none is looked at
//! twice), and settles each ([`judge`]) as:
//! - **redriven**: its job is published to the job queue and confirmed by the broker, and only
//!   then is the letter acked (a crash in between leaves both: a duplicate job, which the
//!   worker's claim makes harmless; never neither);
//! - **skipped**: it matches the filter but its run has ended: acked, so dropped;
//! - **kept**: it does not match the filter, cannot be decoded, or names no run: put back at
//!   the tail of the dead-letter queue for an operator ([`DeadLetterChannel::put_back`]).
//!
//! Letters are handled in chunks: their runs read in one query, their jobs published
//! together. Counted in `thygon_dead_letters_redriven_total` and, for the operators' view,
//! `ops_counters`.

use crate::dead_letters::{DeadLetterChannel, Letter};
use crate::domain::RedriveFilter;
use crate::metrics::DEAD_LETTERS_REDRIVEN;
use crate::publisher::{in_run_context, JobPublisher};
use crate::storage::counters::{self, DEAD_LETTERS_REDRIVEN as REDRIVEN_COUNTER};
use crate::storage::redrive::{runs_of_letters, RunFacts};
use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use shared_models::db::{blocking, PgPool, StorageError};
use shared_models::queue::RunJob;
use std::collections::HashMap;

/// Letters taken before their runs are read and their jobs published.
const CHUNK: usize = 100;

/// What one call did (the answer's `data`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RedriveReport {
    /// Letters whose jobs are back on the job queue (each acked only after the broker
    /// confirmed its job).
    pub redriven: u32,
    /// Letters that matched but whose run has ended: dropped.
    pub skipped: u32,
    /// Letters left in the dead-letter queue: outside the filter, undecodable, or naming no
    /// run.
    pub kept: u32,
    /// Letters ready in the dead-letter queue after the call.
    pub remaining: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    /// The broker could not be reached or refused something; letters not settled stay in
    /// the dead-letter queue. What was done before stays done.
    #[error("the broker: {0}")]
    Broker(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What becomes of one letter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// Back to the job queue.
    Redrive(RunJob),
    /// It matches, but its run has ended (with this status): dropped.
    Skip(String),
    /// Left in the dead-letter queue, for this reason.
    Keep(&'static str),
}

/// The fate of a letter with `body`, dead-lettered at `dead_lettered_at` (unknown: taken as
/// old), given the runs its chunk names.
pub(crate) fn judge(
    body: &[u8],
    dead_lettered_at: Option<DateTime<Utc>>,
    runs: &HashMap<String, RunFacts>,
    filter: &RedriveFilter,
    now: DateTime<Utc>,
) -> Verdict {
    let Ok(job) = RunJob::decode(body) else {
        return Verdict::Keep("not a job message this version reads");
    };
    if filter.org_id.as_deref().is_some_and(|o| o != job.org_id) {
        return Verdict::Keep("another org");
    }
    let too_recent = match (filter.older_than, dead_lettered_at) {
        (Some(age), Some(at)) => chrono::Duration::from_std(age).is_ok_and(|age| now - at < age),
        _ => false,
    };
    if too_recent {
        return Verdict::Keep("dead-lettered too recently");
    }
    let Some(run) = runs.get(&job.run_id).filter(|r| r.org_id == job.org_id) else {
        return Verdict::Keep("names no run of its org");
    };
    if filter
        .workflow_id
        .as_ref()
        .is_some_and(|w| w.as_str() != run.workflow_id)
    {
        return Verdict::Keep("another workflow");
    }
    if run.status.is_terminal() {
        return Verdict::Skip(run.status.to_string());
    }
    Verdict::Redrive(job)
}

/// Redrive what `filter` selects; see the module docs.
pub(crate) async fn redrive(
    pool: &PgPool,
    publisher: &dyn JobPublisher,
    filter: &RedriveFilter,
) -> Result<RedriveReport, RedriveError> {
    let dlq = publisher
        .dead_letters()
        .await
        .map_err(|e| RedriveError::Broker(e.to_string()))?;
    let result = take_and_settle(&dlq, pool, publisher, filter).await;
    // Letters not settled (after a failure) go back to the queue with the channel.
    dlq.close().await;
    if let Ok(r) = &result {
        log::info!(
            "redrive of dead letters: {} redriven, {} skipped (run ended), {} kept; {} left in the queue",
            r.redriven,
            r.skipped,
            r.kept,
            r.remaining
        );
    }
    result
}

async fn take_and_settle(
    dlq: &DeadLetterChannel,
    pool: &PgPool,
    publisher: &dyn JobPublisher,
    filter: &RedriveFilter,
) -> Result<RedriveReport, RedriveError> {
    let budget = dlq
        .ready()
        .await
        .map_err(RedriveError::Broker)?
        .min(filter.limit);
    let mut report = RedriveReport::default();
    let mut taken = 0;
    let mut drained = false;
    while taken < budget && !drained {
        let mut letters = Vec::new();
        while letters.len() < CHUNK && taken < budget {
            match dlq.next().await.map_err(RedriveError::Broker)? {
                Some(letter) => {
                    letters.push(letter);
                    taken += 1;
                }
                None => {
                    drained = true;
                    break;
                }
            }
        }
        settle(dlq, pool, publisher, filter, &letters, &mut report).await?;
    }
    report.remaining = dlq.ready().await.map_err(RedriveError::Broker)?;
    Ok(report)
}

/// Settle one chunk of letters: redrives first (published together, each acked once
/// confirmed), then drops, then put-backs.
async fn settle(
    dlq: &DeadLetterChannel,
    pool: &PgPool,
    publisher: &dyn JobPublisher,
    filter: &RedriveFilter,
    letters: &[Letter],
    report: &mut RedriveReport,
) -> Result<(), RedriveError> {
    if letters.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = letters
        .iter()
        .filter_map(|l| RunJob::decode(l.body()).ok())
        .map(|job| job.run_id)
        .collect();
    let runs = blocking(pool, move |conn| runs_of_letters(conn, &ids)).await?;
    let now = shared_models::time::now();
    let verdicts: Vec<Verdict> = letters
        .iter()
        .map(|l| judge(l.body(), l.dead_lettered_at(), &runs, filter, now))
        .collect();

    let redrives: Vec<(&Letter, &RunJob)> = letters
        .iter()
        .zip(&verdicts)
        .filter_map(|(l, v)| match v {
            Verdict::Redrive(job) => Some((l, job)),
            _ => None,
        })
        .collect();
    let confirms = join_all(redrives.iter().map(|(_, job)| publisher.publish(job))).await;
    let mut redriven = 0;
    let mut failure = None;
    for ((letter, job), confirm) in redrives.iter().zip(confirms) {
        // Not confirmed: the letter stays held, and goes back to the queue with the channel.
        if let Err(e) = confirm {
            failure.get_or_insert_with(|| format!("publishing a redriven job: {e}"));
            continue;
        }
        if let Err(e) = dlq.ack(letter).await {
            failure.get_or_insert(e);
            continue;
        }
        redriven += 1;
        in_run_context(&job.run_id, job.request_id.as_deref(), || {
            log::info!(
                "run {}: its dead letter went back to the job queue",
                job.run_id
            )
        });
    }
    count_redriven(pool, redriven).await;
    report.redriven += redriven;
    if let Some(e) = failure {
        return Err(RedriveError::Broker(e));
    }

    for (letter, verdict) in letters.iter().zip(&verdicts) {
        if let Verdict::Skip(status) = verdict {
            dlq.ack(letter).await.map_err(RedriveError::Broker)?;
            report.skipped += 1;
            log::info!("dropped a dead letter whose run has ended ({status})");
        }
    }

    let keeps: Vec<&Letter> = letters
        .iter()
        .zip(&verdicts)
        .filter(|(_, v)| matches!(v, Verdict::Keep(_)))
        .map(|(l, _)| l)
        .collect();
    for put_back in join_all(keeps.iter().map(|l| dlq.put_back(l))).await {
        put_back.map_err(RedriveError::Broker)?;
        report.kept += 1;
    }
    Ok(())
}

/// Add to the redrive's counts; a count that cannot be written is only logged (the letters
/// are moved whatever the count says).
async fn count_redriven(pool: &PgPool, n: u32) {
    if n == 0 {
        return;
    }
    DEAD_LETTERS_REDRIVEN.inc_by(u64::from(n));
    if let Err(e) = blocking(pool, move |conn| {
        counters::add(conn, REDRIVEN_COUNTER, i64::from(n))
    })
    .await
    {
        log::warn!("{n} redriven dead letter(s) not counted in ops_counters: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_models::ids::WorkflowId;
    use std::time::Duration;

    fn filter() -> RedriveFilter {
        RedriveFilter {
            org_id: None,
            workflow_id: None,
            limit: 1000,
            older_than: None,
        }
    }

    fn runs(status: &str) -> HashMap<String, RunFacts> {
        HashMap::from([(
            "run_a".to_string(),
            RunFacts {
                org_id: "org_a".into(),
                workflow_id: "wf_triage".into(),
                status: shared_models::status::RunStatus::parse(status).expect("a run status"),
            },
        )])
    }

    fn letter(org: &str) -> Vec<u8> {
        RunJob::new("run_a", org, None).encode()
    }

    #[test]
    fn a_letter_of_a_live_run_matching_the_filter_is_redriven() {
        let now = Utc::now();
        let mut f = filter();
        f.org_id = Some("org_a".into());
        f.workflow_id = WorkflowId::parse("wf_triage");
        f.older_than = Some(Duration::from_secs(60));
        let old = Some(now - chrono::Duration::minutes(5));
        for status in ["PENDING", "WAITING", "RUNNING"] {
            assert_eq!(
                judge(&letter("org_a"), old, &runs(status), &f, now),
                Verdict::Redrive(RunJob::new("run_a", "org_a", None)),
                "{status}"
            );
        }
        // No time on the letter: taken as old.
        assert!(matches!(
            judge(&letter("org_a"), None, &runs("PENDING"), &f, now),
            Verdict::Redrive(_)
        ));
    }

    #[test]
    fn a_letter_of_an_ended_run_is_skipped_only_when_it_matches() {
        let now = Utc::now();
        for status in ["COMPLETED", "FAILED", "CANCELLED"] {
            assert_eq!(
                judge(&letter("org_a"), None, &runs(status), &filter(), now),
                Verdict::Skip(status.into())
            );
        }
        let mut f = filter();
        f.org_id = Some("org_b".into());
        assert!(matches!(
            judge(&letter("org_a"), None, &runs("COMPLETED"), &f, now),
            Verdict::Keep(_)
        ));
    }

    #[test]
    fn letters_outside_the_filter_or_unreadable_or_without_a_run_are_kept() {
        let now = Utc::now();
        let live = runs("PENDING");
        let keep = |body: &[u8], at, f: &RedriveFilter, runs: &HashMap<String, RunFacts>| {
            matches!(judge(body, at, runs, f, now), Verdict::Keep(_))
        };
        assert!(keep(b"{not json", None, &filter(), &live));
        assert!(keep(&letter("org_a"), None, &filter(), &HashMap::new()));
        // A job naming the run under another org names no run of its org.
        assert!(keep(&letter("org_b"), None, &filter(), &live));
        let mut f = filter();
        f.workflow_id = WorkflowId::parse("wf_other");
        assert!(keep(&letter("org_a"), None, &f, &live));
        let mut f = filter();
        f.older_than = Some(Duration::from_secs(3600));
        let recent = Some(now - chrono::Duration::minutes(5));
        assert!(keep(&letter("org_a"), recent, &f, &live));
    }
}
