//! The worker's two HTTP clients and the bounds of the calls made through them.
//!
//! - The tenant client carries `http` steps, whose URL a tenant's definition decides: it
//!   obeys the egress policy ([`shared_models::egress`]): names resolved through the
//!   filtering resolver, every redirect hop checked, no proxy from the environment.
//! - The operator client carries agent calls: their endpoints come from `AGENTS_FILE` or
//!   `AGENT_BASE_URL`, which only the operator writes (the example agent listens on
//!   127.0.0.1), so nothing there is filtered. A step names an agent by id; it never
//!   supplies the agent's URL, so no templated part of a step reaches this client.

use shared_models::config::{env_parse, env_seconds};
use shared_models::egress::{self, EgressPolicy};
use std::sync::Arc;
use std::time::Duration;

/// `HTTP_MAX_RESPONSE_BYTES` when unset: the step output cap is 1 MiB too.
pub const DEFAULT_HTTP_MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// `HTTP_MAX_REDIRECTS` when unset.
pub const DEFAULT_HTTP_MAX_REDIRECTS: usize = 5;
/// `MAX_STEP_TIMEOUT_SECONDS` when unset.
pub const DEFAULT_MAX_STEP_TIMEOUT_SECONDS: f64 = 300.0;

/// What the clients are built from (settings of the worker).
#[derive(Debug, Clone)]
pub struct OutboundSettings {
    /// Exceptions to the refused ranges (`EGRESS_ALLOW`, default none).
    pub egress: Arc<EgressPolicy>,
    /// An `http` step's answer larger than this fails the step (`HTTP_MAX_RESPONSE_BYTES`).
    pub max_response_bytes: usize,
    /// Redirects an `http` step follows, each hop checked (`HTTP_MAX_REDIRECTS`).
    pub max_redirects: usize,
    /// A step's `timeoutSeconds` longer than this is cut to it (`MAX_STEP_TIMEOUT_SECONDS`):
    /// an `http` or `agent` call holds a worker slot while it waits.
    pub max_step_timeout: Duration,
}

impl Default for OutboundSettings {
    fn default() -> Self {
        Self {
            egress: Arc::default(),
            max_response_bytes: DEFAULT_HTTP_MAX_RESPONSE_BYTES,
            max_redirects: DEFAULT_HTTP_MAX_REDIRECTS,
            max_step_timeout: Duration::from_secs_f64(DEFAULT_MAX_STEP_TIMEOUT_SECONDS),
        }
    }
}

impl OutboundSettings {
    pub fn from_env() -> Result<Self, String> {
        let max_response_bytes =
            env_parse("HTTP_MAX_RESPONSE_BYTES", DEFAULT_HTTP_MAX_RESPONSE_BYTES)?;
        if max_response_bytes == 0 {
            return Err("HTTP_MAX_RESPONSE_BYTES must be at least 1".into());
        }
        let max_step_timeout =
            env_seconds("MAX_STEP_TIMEOUT_SECONDS", DEFAULT_MAX_STEP_TIMEOUT_SECONDS)?;
        if max_step_timeout.is_zero() {
            return Err("MAX_STEP_TIMEOUT_SECONDS must be more than 0".into());
        }
        Ok(Self {
            egress: Arc::new(EgressPolicy::from_env().map_err(|e| e.to_string())?),
            max_response_bytes,
            max_redirects: env_parse("HTTP_MAX_REDIRECTS", DEFAULT_HTTP_MAX_REDIRECTS)?,
            max_step_timeout,
        })
    }

    /// These settings with `EGRESS_ALLOW` = `allow` (tests).
    pub fn allowing(allow: &str) -> Result<Self, String> {
        Ok(Self {
            egress: Arc::new(EgressPolicy::parse(allow).map_err(|e| e.to_string())?),
            ..Self::default()
        })
    }
}

/// The clients and the bounds every executor sees.
pub struct Outbound {
    /// For `http` steps: the egress policy on.
    pub tenant: reqwest::Client,
    /// For agents (`AGENTS_FILE`, `AGENT_BASE_URL`): the operator's own endpoints.
    pub operator: reqwest::Client,
    pub settings: OutboundSettings,
}

fn user_agent() -> &'static str {
    concat!("thygon-executor-worker/", env!("CARGO_PKG_VERSION"))
}

impl Outbound {
    pub fn new(settings: OutboundSettings) -> Result<Self, String> {
        let tenant = egress::client_builder(settings.egress.clone(), settings.max_redirects)
            .user_agent(user_agent())
            .build()
            .map_err(|e| format!("cannot build the HTTP client of http steps: {e}"))?;
        let operator = reqwest::Client::builder()
            .user_agent(user_agent())
            .build()
            .map_err(|e| format!("cannot build the HTTP client of agents: {e}"))?;
        Ok(Self {
            tenant,
            operator,
            settings,
        })
    }

    /// The egress policy of the tenant client.
    pub fn policy(&self) -> &EgressPolicy {
        &self.settings.egress
    }

    /// A step's own `timeoutSeconds`, cut to `MAX_STEP_TIMEOUT_SECONDS`.
    pub fn step_timeout(&self, timeout: Option<Duration>) -> Option<Duration> {
        timeout.map(|t| t.min(self.settings.max_step_timeout))
    }

    /// "timed out after 300s", naming `MAX_STEP_TIMEOUT_SECONDS` when `limit` is that cap.
    pub fn timed_out(&self, limit: Duration) -> String {
        let secs = limit.as_secs_f64();
        if limit >= self.settings.max_step_timeout {
            format!("timed out after {secs}s (MAX_STEP_TIMEOUT_SECONDS)")
        } else {
            format!("timed out after {secs}s")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_timeout_is_cut_to_the_maximum() {
        let outbound = Outbound::new(OutboundSettings::default()).expect("clients");
        assert_eq!(outbound.step_timeout(None), None);
        assert_eq!(
            outbound.step_timeout(Some(Duration::from_secs(10))),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            outbound.step_timeout(Some(Duration::from_secs(3600))),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            outbound.timed_out(Duration::from_secs(300)),
            "timed out after 300s (MAX_STEP_TIMEOUT_SECONDS)"
        );
        assert_eq!(
            outbound.timed_out(Duration::from_millis(2500)),
            "timed out after 2.5s"
        );
    }

    #[test]
    fn a_bad_allow_list_is_named() {
        let err = OutboundSettings::allowing("10.0.0.0/99").expect_err("refused");
        assert!(err.starts_with("EGRESS_ALLOW: '10.0.0.0/99'"), "{err}");
    }
}
