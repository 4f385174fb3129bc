//! The outbox relay: publishes jobs the request path could not (broker down at trigger
//! time, or the process died between commit and publish), and the scheduler's wake-ups.
//! Every replica runs one; row claims keep them from publishing the same job at once, and a
//! duplicate publish is harmless anyway (the worker's claim of the run is the real guard).

use crate::publisher::JobPublisher;
use crate::storage;
use shared_models::db::{blocking, PgPool, StorageError};
use shared_models::queue::RunJob;
use std::sync::Arc;
use std::time::Duration;

const BATCH: i64 = 200;

/// One pass: claim what waited longer than `grace` (and wake-ups, which no request path
/// publishes, at once), publish it, mark it sent. Stops at the first publish failure (the
/// broker is likely down) and hands the rest back.
pub async fn relay_once(
    pool: &PgPool,
    publisher: &dyn JobPublisher,
    grace: Duration,
) -> Result<usize, StorageError> {
    let grace_secs = grace.as_secs_f64();
    let jobs = blocking(pool, move |conn| {
        storage::claim_unsent(conn, grace_secs, BATCH)
    })
    .await?;
    let mut published = 0;
    for (i, pending) in jobs.iter().enumerate() {
        let job = match serde_json::from_value::<RunJob>(pending.payload.clone()) {
            Ok(job) => job,
            Err(e) => {
                // Written by this service in the same transaction as its run: cannot happen
                // unless the table was edited by hand. Leave it for an operator.
                log::error!("outbox row {} holds an undecodable job: {e}", pending.id);
                continue;
            }
        };
        match publisher.publish(&job).await {
            Ok(()) => {
                let id = pending.id;
                let now = shared_models::time::now();
                blocking(pool, move |conn| {
                    storage::mark_relayed(conn, id, now, grace_secs)
                })
                .await?;
                published += 1;
            }
            Err(e) => {
                log::warn!(
                    "outbox relay: publishing run {} failed ({e}); will retry",
                    job.run_id
                );
                let rest: Vec<i64> = jobs[i..].iter().map(|j| j.id).collect();
                blocking(pool, move |conn| storage::release_claims(conn, &rest)).await?;
                break;
            }
        }
    }
    if published > 0 {
        log::info!("outbox relay published {published} job(s)");
    }
    Ok(published)
}

/// Run passes forever, `interval` apart; the caller aborts the task at shutdown (safe: an
/// interrupted claim simply expires).
pub(crate) async fn run(
    pool: PgPool,
    publisher: Arc<dyn JobPublisher>,
    interval: Duration,
    grace: Duration,
) {
    loop {
        tokio::time::sleep(interval).await;
        if let Err(e) = relay_once(&pool, publisher.as_ref(), grace).await {
            log::warn!("outbox relay pass failed: {e}");
        }
    }
}
