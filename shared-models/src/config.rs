//! Twelve-factor configuration: every setting is an environment variable with a local default.

use std::time::Duration;

pub const DEFAULT_DATABASE_URL: &str = "postgres://thygon:thygon@127.0.0.1:5432/thygon";
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The value of `name`, or `default` when it is unset or empty.
pub fn env_or(name: &str, default: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => default.to_string(),
    }
}

/// A parsed variable, or `default`; a value that does not parse is an error naming the variable,
/// so a typo in deployment config stops the process instead of being ignored.
pub fn env_parse<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| format!("environment variable {name}={v:?} is not valid")),
        _ => Ok(default),
    }
}

pub fn env_seconds(name: &str, default_secs: f64) -> Result<Duration, String> {
    let secs: f64 = env_parse(name, default_secs)?;
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!(
            "environment variable {name} must be a non-negative number of seconds"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Settings every process shares: where the database and the broker are, which queue.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    pub database_url: String,
    pub amqp_url: String,
    /// Prefix of every queue and exchange name; tests give each test its own.
    pub queue_prefix: String,
    pub db_pool_size: u32,
}

impl CommonConfig {
    pub fn from_env() -> Result<Self, String> {
        Ok(Self {
            database_url: env_or("DATABASE_URL", DEFAULT_DATABASE_URL),
            amqp_url: env_or("AMQP_URL", DEFAULT_AMQP_URL),
            queue_prefix: env_or("QUEUE_PREFIX", crate::queue::DEFAULT_PREFIX),
            db_pool_size: env_parse("DB_POOL_SIZE", 10)?,
        })
    }
}

/// Logging for every binary: `RUST_LOG` when set, else `info` (without lapin's span chatter).
pub fn init_logging() {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,tracing::span=warn"),
    )
    .init();
}
