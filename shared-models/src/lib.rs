//! Everything the three Thygon deployables must agree on. Services never import each
//! other's crates; they meet here, in the database and on the queue. By layer:
//!
//! - **Domain** (no I/O): [`ids`] (parsed identifiers), [`time`] (the one timestamp format),
//!   [`status`] (run and step states), [`graph`] (parsing, validating and compiling workflow
//!   definitions), [`template`] (MiniJinja templates and conditions), [`body`] (a JSON object
//!   reader that collects every problem with its path), [`pagination`] (cursors, `limit`).
//! - **Database**: [`schema`], [`models`] (the diesel schema and rows), [`db`] (pools, the
//!   embedded migrations, the schema check), [`prepared`] (statements parsed once per
//!   connection), [`limits`] (per-org quotas).
//! - **HTTP edge**: [`envelope`] (the JSON envelope and the error type), [`auth`] (keys, the
//!   admin key, rate limits), [`http`] (body and query parsing, 404/405, limits), [`openapi`]
//!   (the shared parts of the description), [`metrics`] (Prometheus, `/metrics`), [`logctx`]
//!   (request and run ids in log lines).
//! - **Queue** (feature `queue`: runtime-service and the worker): [`queue`] (topology, the
//!   versioned job message `RunJob`, connections) and [`runs`], the run lifecycle: every
//!   transition of runs, steps, events and outbox rows, its tables at its top.
//! - **Egress** (feature `egress`: the worker): the policy for calls whose target a tenant
//!   decides.
//! - **Process**: [`config`] (environment variables, logging), [`cli`] (the subcommands of
//!   every binary), [`service`] (the one `main` of every binary).
//!
//! Every deployable uses the database and the HTTP edge (the worker serves its health and
//! metrics), so only the queue and egress layers are features; workflow-service builds
//! without lapin.

pub mod agent_journal;
pub mod auth;
pub mod body;
pub mod budget;
pub mod cli;
pub mod config;
pub mod db;
#[cfg(feature = "egress")]
pub mod egress;
pub mod envelope;
pub mod graph;
pub mod http;
pub mod ids;
pub mod json_schema;
pub mod limits;
pub mod logctx;
pub mod metrics;
pub mod models;
pub mod openapi;
pub mod pagination;
pub mod prepared;
#[cfg(feature = "queue")]
pub mod queue;
#[cfg(feature = "queue")]
pub mod runs;
pub mod schema;
pub mod service;
pub mod status;
pub mod template;
pub mod time;
