use crate::limits::WorkLimits;
use crate::outbound::OutboundSettings;
use shared_models::config::{env_or, env_parse, env_seconds, CommonConfig};
use shared_models::template;
use std::time::Duration;

/// This process's share of the connection budget (`DB_POOL_SIZE`; docs/DEPLOY.md "Sizing").
/// Claims and checkpoints are written in batches, so a worker needs a few connections,
/// not one per job in flight (WORKER_CONCURRENCY).
pub const DEFAULT_DB_POOL_SIZE: u32 = 4;

#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonConfig,
    /// Health and readiness address (`HTTP_ADDR`, default 127.0.0.1:8083).
    pub http_addr: String,
    /// Jobs executed at once by this process, and the broker prefetch (`WORKER_CONCURRENCY`).
    pub concurrency: usize,
    /// How long a claim holds a run without a heartbeat (`LEASE_SECONDS`).
    pub lease: Duration,
    /// Per-attempt agent timeout when the agent's entry sets none (`AGENT_TIMEOUT_SECONDS`).
    pub agent_timeout: Duration,
    /// How long SIGTERM waits for in-flight jobs before handing them back (`SHUTDOWN_GRACE_SECONDS`).
    pub shutdown_grace: Duration,
    /// This process's name in leases and logs (`WORKER_ID`, default host-pid).
    pub worker_id: String,
    /// At most this many runs of one org RUNNING at once, across all workers
    /// (`MAX_RUNNING_PER_ORG`, default [`DEFAULT_MAX_RUNNING_PER_ORG`]; 0 = no cap). A job that
    /// would start one more leaves its run PENDING (or WAITING) and is tried again about a
    /// second later, when the runtime's scheduler queues it again.
    pub max_running_per_org: u32,
    /// How often this worker writes its row in `workers` (`WORKER_HEARTBEAT_SECONDS`,
    /// default 5): the ops view calls a worker live while its last beat is at most three
    /// intervals old.
    pub heartbeat: Duration,
    /// The egress policy and the bounds of `http` and `agent` calls (`EGRESS_ALLOW`,
    /// `HTTP_MAX_RESPONSE_BYTES`, `HTTP_MAX_REDIRECTS`, `MAX_STEP_TIMEOUT_SECONDS`).
    pub outbound: OutboundSettings,
    /// What one step or run may spend ([`crate::limits`]).
    pub limits: WorkLimits,
    /// What one render may spend (`TEMPLATE_FUEL`, `TEMPLATE_MAX_OUTPUT_BYTES`).
    pub templates: template::Limits,
}

/// `HTTP_ADDR` (the health server) when unset.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8083";

/// `WORKER_CONCURRENCY` when unset: runs in flight share their claim and checkpoint commits,
/// so a worker's rate grows with them until the cores are busy (see docs/PERFORMANCE.md for
/// the figures behind this default).
pub const DEFAULT_WORKER_CONCURRENCY: usize = 64;

/// `MAX_RUNNING_PER_ORG` when unset.
pub const DEFAULT_MAX_RUNNING_PER_ORG: u32 = 100;

impl Settings {
    pub fn from_env() -> Result<Self, String> {
        let concurrency: usize = env_parse("WORKER_CONCURRENCY", DEFAULT_WORKER_CONCURRENCY)?;
        if !(1..=1000).contains(&concurrency) {
            return Err("WORKER_CONCURRENCY must be from 1 to 1000".into());
        }
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "worker".into());
        let (limits, templates) = WorkLimits::from_env()?;
        // The quota defaults (`shared_models::limits`), read once per process: a bad value
        // stops the worker here.
        shared_models::limits::OrgLimits::from_env()?;
        Ok(Self {
            common: CommonConfig::from_env(DEFAULT_DB_POOL_SIZE)?,
            http_addr: env_or("HTTP_ADDR", DEFAULT_HTTP_ADDR),
            concurrency,
            lease: env_seconds("LEASE_SECONDS", 30.0)?.max(Duration::from_secs(1)),
            agent_timeout: env_seconds("AGENT_TIMEOUT_SECONDS", 60.0)?,
            shutdown_grace: env_seconds("SHUTDOWN_GRACE_SECONDS", 30.0)?,
            worker_id: env_or("WORKER_ID", &format!("{host}-{}", std::process::id())),
            max_running_per_org: env_parse("MAX_RUNNING_PER_ORG", DEFAULT_MAX_RUNNING_PER_ORG)?,
            heartbeat: env_seconds("WORKER_HEARTBEAT_SECONDS", 5.0)?,
            outbound: OutboundSettings::from_env()?,
            limits,
            templates,
        })
    }
}
