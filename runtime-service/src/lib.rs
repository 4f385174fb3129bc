//! Runtime Service: creates runs, queues them on RabbitMQ, and serves their progress.
//!
//! - [`config`]: settings from the environment.
//! - [`startup`]: builds the actix `App`, binds its listener, starts the trigger batcher,
//!   the outbox relay and the scheduler.
//! - [`routes`]: HTTP in and out (trigger, runs, run control, event streams, health);
//!   [`openapi()`] describes them.
//! - [`domain`]: request bodies and queries parsed into known-good values (no I/O).
//! - [`storage`]: plain diesel functions; this service owns `runs` (creation, control) and
//!   `outbox`.
//! - [`batcher`]: group commit of triggers: concurrent triggers' runs written in one
//!   transaction, their jobs published together.
//! - [`publisher`]: the broker behind a small trait, so the HTTP layer is testable alone.
//! - [`relay`]: publishes what the request path could not (broker down, crash after commit),
//!   and wake-ups.
//! - [`scheduler`]: queues jobs for WAITING runs whose wake-up time has come, reaps expired
//!   leases, runs the [`sweeper`] and prunes the outbox.
//! - [`sweeper`]: queues PENDING runs that have no job in flight (the broker lost it) again.
//! - [`dead_letters`], [`redrive`]: `POST /ops/dead-letters/redrive` moves dead letters
//!   back to the job queue.
//! - [`error`]: the one error enum of this service.
//! - [`metrics`]: runs by status, the oldest due PENDING run, the unsent outbox, read in the
//!   background every `METRICS_REFRESH_SECONDS` for `GET /metrics`.
//! - [`queue_stats`]: samples the queues' depth and consumers for `GET /ops/queues`.

pub mod batcher;
pub mod config;
pub mod dead_letters;
pub mod domain;
pub mod error;
pub mod metrics;
pub mod publisher;
pub mod queue_stats;
pub mod redrive;
pub mod relay;
pub mod routes;
pub mod scheduler;
pub mod startup;
pub mod storage;
pub mod sweeper;

pub use routes::openapi::openapi;
