//! Builds the HTTP server. The listener is bound here (port 0 in tests) so callers can ask
//! for the port before the server runs.

use crate::config::Settings;
use crate::routes;
use actix_web::dev::Server;
use actix_web::{web, HttpServer};
use shared_models::auth::{AuthConfig, Authenticator};
use shared_models::db::{self, PgPool};
use std::net::TcpListener;

pub struct Application {
    port: u16,
    server: Server,
}

impl Application {
    pub fn build(settings: &Settings) -> std::io::Result<Self> {
        let pool = db::pool(&settings.common.database_url, settings.common.db_pool_size);
        let listener = TcpListener::bind(&settings.http_addr)?;
        Self::with_parts(listener, pool, &settings.auth)
    }

    pub fn with_parts(
        listener: TcpListener,
        pool: PgPool,
        auth: &AuthConfig,
    ) -> std::io::Result<Self> {
        let port = listener.local_addr()?.port();
        let auth = web::Data::new(Authenticator::new(pool.clone(), auth));
        let pool = web::Data::new(pool);
        let server = HttpServer::new(move || {
            shared_models::http::app(auth.clone())
                .app_data(pool.clone())
                .configure(routes::configure)
        })
        .listen(listener)?
        .shutdown_timeout(10)
        .run();
        Ok(Self { port, server })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs until SIGINT/SIGTERM; actix then stops accepting and drains in-flight requests.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }

    pub fn server_handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }
}
