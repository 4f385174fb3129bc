//! HTTP in and out: one file per resource.

mod control;
mod dead_letters;
pub mod events;
mod health;
pub mod openapi;
mod ops;
mod publish;
mod runs;
mod trigger;
mod ui;
mod usage;
mod views;

use actix_web::web;
use shared_models::http::{method_not_allowed, route_not_found, AllowedMethods};

/// Every route but `/metrics`, which [`crate::startup`] adds where `METRICS_ADDR` says.
pub fn configure(cfg: &mut web::ServiceConfig) {
    // The `Allow` of each route's 405, from the description this service's tests hold equal
    // to the routes below.
    cfg.app_data(web::Data::new(AllowedMethods::from_description(
        &openapi::openapi(),
    )));
    cfg.route("/healthz", web::get().to(shared_models::http::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route(
            "/openapi/runtime-service.json",
            web::get().to(openapi::own_part),
        )
        .service(
            web::resource("/workflows/runs")
                .route(web::get().to(runs::list_runs))
                .route(web::post().to(trigger::create_run))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/workflows/runs/{id}")
                .route(web::get().to(runs::get_run))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/workflows/runs/{id}/cancel")
                .route(web::post().to(control::cancel_run))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/workflows/runs/{id}/retry")
                .route(web::post().to(control::retry_run))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/workflows/runs/{id}/steps/{step}/approve")
                .route(web::post().to(control::approve_step))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/workflows/runs/{id}/events")
                .route(web::get().to(events::stream_run_events))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/usage")
                .route(web::get().to(usage::get_usage))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/ops/queues")
                .route(web::get().to(ops::queues))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/ops/dead-letters/redrive")
                .route(web::post().to(dead_letters::redrive_dead_letters))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/ops/workers")
                .route(web::get().to(ops::workers))
                .default_service(web::to(method_not_allowed)),
        )
        .route("/ui", web::get().to(ui::root))
        .route("/ui/", web::get().to(ui::index))
        .route("/ui/{file}", web::get().to(ui::asset))
        .service(
            web::resource("/workflows/{id}/trigger")
                .route(web::post().to(trigger::trigger_run))
                .default_service(web::to(method_not_allowed)),
        )
        .default_service(web::to(route_not_found));
}
