//! Everything the three Thygon deployables must agree on. Services never import each
//! other's crates; they meet here, in the database and on the queue.
//!
//! - [`envelope`]: the JSON envelope every response wears, and the error type behind it.
//! - [`auth`]: API keys, the admin key, rate limits; the `Caller` and `Admin` extractors.
//! - [`limits`]: per-org quotas, their defaults (settings) and overrides (`orgs` columns).
//! - [`http`]: actix-web helpers shared by both HTTP services (body and query parsing,
//!   404/405 handlers, limits), so both edges behave the same.
//! - [`body`]: a field-by-field JSON object reader that collects every problem with its path.
//! - [`ids`]: parsed identifiers (`WorkflowName`, `RunId`, ...).
//! - [`time`]: the one timestamp format (RFC 3339, milliseconds, `Z`).
//! - [`status`]: run and step states.
//! - [`graph`]: parsing, validating and compiling workflow definitions (one graph model).
//! - [`template`]: MiniJinja templates and conditions over a run's context.
//! - [`pagination`]: opaque cursors and `limit` rules.
//! - [`openapi`]: the shared parts of the OpenAPI description (envelopes, errors, security).
//! - [`schema`], [`models`]: the diesel schema and row types of the shared database.
//! - [`db`]: connection pools and the embedded migrations (applied under an advisory lock).
//! - [`prepared`]: statements of fixed text, parsed and planned once per connection.
//! - [`queue`]: queue topology and the versioned job message (`RunJob`).
//! - [`runs`]: creating runs and queueing their jobs through the outbox.
//! - [`config`]: environment variables with local defaults; logging (`LOG_FORMAT`).
//! - [`cli`]: the subcommands of every binary (`healthcheck`, `prestop`).
//! - [`service`]: the one `main` of every binary (subcommands, settings, schema check, serve).
//! - [`logctx`]: the request and run ids every log line carries when known.
//! - [`metrics`]: Prometheus metrics, `/metrics` (on `METRICS_ADDR` when set), HTTP request
//!   durations.
//! - [`egress`] (feature `egress`): the egress policy for calls whose target a tenant decides.

pub mod auth;
pub mod body;
pub mod cli;
pub mod config;
pub mod db;
#[cfg(feature = "egress")]
pub mod egress;
pub mod envelope;
pub mod graph;
pub mod http;
pub mod ids;
pub mod limits;
pub mod logctx;
pub mod metrics;
pub mod models;
pub mod openapi;
pub mod pagination;
pub mod prepared;
pub mod queue;
pub mod runs;
pub mod schema;
pub mod service;
pub mod status;
pub mod template;
pub mod time;
