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
    // `workflow-service migrate`: apply the migrations through MIGRATION_DATABASE_URL and
    // exit (the compose `migrate` service and the Kubernetes migrate Job).
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        return match shared_models::db::run_migrations(&settings.common.migration_database_url) {
            Ok(n) => {
                log::info!("migrations: {n} applied");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                log::error!("migrations: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    if let Err(e) = shared_models::db::prepare_schema(&settings.common) {
        log::error!("migrations: {e}");
        return std::process::ExitCode::FAILURE;
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
