//! Publishing jobs after the transaction that queued them has committed.

use crate::publisher::publish_jobs;
use crate::startup::AppState;
use shared_models::queue::RunJob;

/// Publish one job whose outbox row has committed, then mark the row sent: see
/// [`publish_jobs`].
pub async fn publish_committed(state: &AppState, outbox_id: i64, job: &RunJob) {
    publish_jobs(&state.pool, state.publisher.as_ref(), &[(outbox_id, job)]).await;
}
