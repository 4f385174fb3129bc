use shared_models::config::{env_or, CommonConfig};

#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonConfig,
    /// Where this service listens (`HTTP_ADDR`, default 127.0.0.1:8081).
    pub http_addr: String,
}

impl Settings {
    pub fn from_env() -> Result<Self, String> {
        Ok(Self {
            common: CommonConfig::from_env()?,
            http_addr: env_or("HTTP_ADDR", "127.0.0.1:8081"),
        })
    }
}
