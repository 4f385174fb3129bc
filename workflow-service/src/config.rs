use shared_models::auth::AuthConfig;
use shared_models::config::{env_or, CommonConfig};

pub const DEFAULT_RUNTIME_SERVICE_URL: &str = "http://127.0.0.1:8082";
/// `HTTP_ADDR` when unset.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8081";

/// This process's share of the connection budget (`DB_POOL_SIZE`; docs/DEPLOY.md "Sizing").
/// The API answers from a few connections: each request holds one for a query or two.
pub(crate) const DEFAULT_DB_POOL_SIZE: u32 = 4;

#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonConfig,
    /// `ADMIN_API_KEY`, `RATE_LIMIT_PER_SECOND`.
    pub auth: AuthConfig,
    /// Where this service listens (`HTTP_ADDR`, default 127.0.0.1:8081).
    pub http_addr: String,
    /// Where runtime-service answers, for its part of `/openapi.json`
    /// (`RUNTIME_SERVICE_URL`, default http://127.0.0.1:8082).
    pub runtime_service_url: String,
}

impl Settings {
    pub fn from_env() -> Result<Self, String> {
        Ok(Self {
            common: CommonConfig::from_env(DEFAULT_DB_POOL_SIZE)?,
            auth: AuthConfig::from_env()?,
            http_addr: env_or("HTTP_ADDR", DEFAULT_HTTP_ADDR),
            runtime_service_url: env_or("RUNTIME_SERVICE_URL", DEFAULT_RUNTIME_SERVICE_URL),
        })
    }
}
