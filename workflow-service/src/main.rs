use workflow_service::config::{Settings, DEFAULT_HTTP_ADDR};
use workflow_service::startup::Application;

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    shared_models::config::init_logging();
    // `healthcheck`, `prestop` (shared); `migrate` below.
    if let Some(done) = shared_models::cli::dispatch(DEFAULT_HTTP_ADDR, &["migrate"]) {
        return done;
    }
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            log::error!("configuration: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // `workflow-service migrate`: apply migrations and exit (compose and Kubernetes jobs).
    let migrate_only = std::env::args().nth(1).as_deref() == Some("migrate");
    match shared_models::db::run_migrations(&settings.common.database_url) {
        Ok(n) => log::info!("migrations: {n} applied"),
        Err(e) => {
            log::error!("migrations: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    if migrate_only {
        return std::process::ExitCode::SUCCESS;
    }
    let app = match Application::build(&settings) {
        Ok(app) => app,
        Err(e) => {
            log::error!("cannot start: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    log::info!("workflow-service listening on {}", settings.http_addr);
    match app.run_until_stopped().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            log::error!("server error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
