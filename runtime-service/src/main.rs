use runtime_service::config::{Settings, DEFAULT_HTTP_ADDR};
use runtime_service::startup::Application;

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    shared_models::config::init_logging();
    // `healthcheck`, `prestop`.
    if let Some(done) = shared_models::cli::dispatch(DEFAULT_HTTP_ADDR, &[]) {
        return done;
    }
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            log::error!("configuration: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
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
    log::info!("runtime-service listening on {}", settings.http_addr);
    match app.run_until_stopped().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            log::error!("server error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
