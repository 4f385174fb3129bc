use actix_web::{web, HttpResponse};
use shared_models::db::{self, PgPool};

/// `GET /readyz`: this service needs only the database (it never touches the broker).
pub async fn readyz(pool: web::Data<PgPool>) -> HttpResponse {
    let pool = pool.get_ref().clone();
    let database = tokio::task::spawn_blocking(move || db::ping(&pool))
        .await
        .unwrap_or(false);
    shared_models::http::readiness(&[("database", database)])
}
