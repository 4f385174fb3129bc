//! Builds the HTTP server. The listener is bound here (port 0 in tests) so callers can ask
//! for the port before the server runs.

use crate::config::Settings;
use crate::routes;
use crate::routes::openapi::MergedSpec;
use actix_web::dev::Server;
use actix_web::{web, HttpServer};
use shared_models::auth::Authenticator;
use shared_models::db;
use shared_models::metrics::{Endpoint, Exposition, MetricsServer};
use std::net::TcpListener;

pub struct Application {
    port: u16,
    server: Server,
    /// `/metrics` on `METRICS_ADDR`, when set (then not on the main port).
    metrics: MetricsServer,
}

impl Application {
    /// The server on `HTTP_ADDR` (port 0: any free port, see [`Application::port`]), and
    /// `/metrics` on `METRICS_ADDR` when set; `/openapi.json` fetches runtime-service's part
    /// from `RUNTIME_SERVICE_URL`.
    pub fn build(settings: &Settings) -> std::io::Result<Self> {
        shared_models::metrics::set_service_name("workflow-service");
        let pool = db::pool_with(&settings.common.database_url, &settings.common.pool);
        db::pool_metrics::register(&pool);
        let listener = TcpListener::bind(&settings.http_addr)?;
        let port = listener.local_addr()?.port();
        let metrics = Endpoint::bind(settings.common.metrics_addr)?;
        let auth = web::Data::new(Authenticator::new(pool.clone(), &settings.auth));
        let pool = web::Data::new(pool);
        let spec = web::Data::new(MergedSpec::new(&settings.runtime_service_url));
        let exposition = Exposition::default();
        let metrics_on_main = metrics.on_main();
        let metrics = metrics.serve(exposition.clone())?;
        let server = HttpServer::new(move || {
            shared_models::http::app(auth.clone())
                .app_data(pool.clone())
                .app_data(spec.clone())
                .configure(|cfg| exposition.route_if(metrics_on_main, cfg))
                .configure(routes::configure)
        })
        .listen(listener)?
        .shutdown_timeout(10)
        .run();
        Ok(Self {
            port,
            server,
            metrics,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of `/metrics` when it has one of its own (`METRICS_ADDR`).
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics.port()
    }

    /// Runs until SIGINT/SIGTERM; actix then stops accepting and drains in-flight requests.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.metrics.run_beside(self.server).await
    }

    pub fn server_handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }
}

/// The workflow service process, for the shared `main` ([`shared_models::service::main`]);
/// it also answers `migrate`, the one migrate step.
pub struct WorkflowService;

impl shared_models::service::Service for WorkflowService {
    const NAME: &'static str = "workflow-service";
    const DEFAULT_HTTP_ADDR: &'static str = crate::config::DEFAULT_HTTP_ADDR;
    const MIGRATE: bool = true;
    const RUNTIME: shared_models::service::Runtime = shared_models::service::Runtime::Actix;
    type Settings = Settings;

    fn settings() -> Result<Settings, String> {
        Settings::from_env()
    }

    fn common(settings: &Settings) -> &shared_models::config::CommonConfig {
        &settings.common
    }

    async fn serve(settings: Settings) -> Result<(), String> {
        let app = Application::build(&settings).map_err(|e| format!("cannot start: {e}"))?;
        log::info!("workflow-service listening on {}", settings.http_addr);
        app.run_until_stopped()
            .await
            .map_err(|e| format!("server error: {e}"))
    }
}
