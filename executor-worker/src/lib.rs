//! Executor worker: consumes run jobs from RabbitMQ and executes workflow graphs, writing
//! every step's state, the transitions and the log lines back through diesel.
//!
//! - [`config`]: settings from the environment.
//! - [`startup`]: wiring of the engine, the consumer and the health endpoints.
//! - [`consumer`]: the queue loop (prefetch, manual ack after commit, reconnects, drain).
//! - [`dead_letters`]: poison jobs to the dead-letter queue, with the reason.
//! - [`presence`]: this worker's row in `workers` (heartbeat, in-flight count) for ops views.
//! - [`engine`]: one job: claim the run, resume from checkpoints, execute ready steps, finish.
//! - [`metrics`]: step durations, jobs in flight and settled, runs finished (`/metrics`).
//! - [`steps`]: one executor per step type.
//! - [`outbound`]: the HTTP clients of `http` steps (egress policy on) and of agents.
//! - [`limits`]: bounded work: output caps, poison runs, steps in flight (settings).
//! - [`render`]: templates rendered on the blocking pool, within a deadline.
//! - [`agents`]: the agent registry and the HTTP and OpenAI-compatible agent protocols.
//! - [`batches`]: group commit: one task writes what many runs hand it, together.
//! - [`claims`]: the claims of the jobs that arrive together, in one statement.
//! - [`checkpoints`]: group commit of pure-step checkpoints across the runs in flight.
//! - [`storage`]: plain diesel functions, every write fenced by the run's lease.

pub mod agents;
pub mod batches;
pub mod checkpoints;
pub mod claims;
pub mod config;
pub mod consumer;
pub mod dead_letters;
pub mod engine;
pub mod limits;
pub mod metrics;
pub mod outbound;
pub mod presence;
pub mod render;
pub mod startup;
pub mod steps;
pub mod storage;
