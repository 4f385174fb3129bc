use crate::startup::{AppState, READY_TIMEOUT};
use actix_web::{web, HttpResponse};
use shared_models::db;

/// `GET /readyz`: the database answers and a job could be published now.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let pool = state.pool.clone();
    let database = tokio::task::spawn_blocking(move || db::ping(&pool))
        .await
        .unwrap_or(false);
    let broker = tokio::time::timeout(READY_TIMEOUT, state.publisher.ready())
        .await
        .unwrap_or(false);
    shared_models::http::readiness(&[("database", database), ("broker", broker)])
}
