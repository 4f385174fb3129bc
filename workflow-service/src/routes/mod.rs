//! HTTP in and out: one file per resource.

mod admin;
mod health;
pub mod openapi;
mod validate;
mod versions;
mod workflows;

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
        .route("/openapi.json", web::get().to(openapi::merged))
        .route(
            "/openapi/workflow-service.json",
            web::get().to(openapi::own_part),
        )
        .route("/docs", web::get().to(openapi::docs_redirect))
        .service(openapi::swagger_ui())
        .service(
            web::resource("/workflows")
                .route(web::get().to(workflows::list_workflows))
                .route(web::post().to(workflows::create_workflow))
                .default_service(web::to(method_not_allowed)),
        )
        // Before `/workflows/{id}`, so "validate" is never taken as a workflow id.
        .service(
            web::resource("/workflows/validate")
                .route(web::post().to(validate::validate_definition))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/workflows/{id}")
                .route(web::get().to(workflows::get_workflow))
                .route(web::put().to(workflows::update_workflow))
                .route(web::delete().to(workflows::delete_workflow))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/workflows/{id}/versions")
                .route(web::get().to(versions::list_versions))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/workflows/{id}/versions/{version}")
                .route(web::get().to(versions::get_version))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/admin/orgs")
                .route(web::get().to(admin::list_orgs))
                .route(web::post().to(admin::create_org))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/admin/orgs/{orgId}/keys")
                .route(web::get().to(admin::list_keys))
                .route(web::post().to(admin::create_key))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/admin/orgs/{orgId}/limits")
                .route(web::get().to(admin::get_limits))
                .route(web::put().to(admin::put_limits))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/admin/keys/{id}")
                .route(web::delete().to(admin::revoke_key))
                .default_service(web::to(method_not_allowed)),
        )
        .default_service(web::to(route_not_found));
}
