//! Publishing a job after the transaction that queued it has committed.

use crate::startup::AppState;
use crate::storage;
use shared_models::db::blocking;
use shared_models::queue::RunJob;

/// Publish a job whose outbox row has committed, then mark the row sent. Never fails the
/// request: committed, the job cannot be lost, and if the broker is down the outbox relay
/// publishes it when the broker returns. Publishing here only saves the relay's delay.
pub async fn publish_committed(state: &AppState, outbox_id: i64, job: &RunJob) {
    match state.publisher.publish(job).await {
        Ok(()) => {
            let sent_at = shared_models::time::now();
            if let Err(e) = blocking(&state.pool, move |conn| {
                storage::mark_outbox_sent(conn, outbox_id, sent_at)
            })
            .await
            {
                log::warn!(
                    "run {}: published but not marked sent ({e}); the relay may publish it again",
                    job.run_id
                );
            }
        }
        Err(e) => log::warn!(
            "run {}: publish failed ({e}); left to the outbox relay",
            job.run_id
        ),
    }
}
