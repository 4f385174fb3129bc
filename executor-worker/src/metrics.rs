//! The worker's Prometheus metrics, served with the process's at `GET /metrics` on the health
//! server ([`crate::startup::health_server`]).
//!
//! - `thygon_step_duration_seconds{type,status}`: each step attempt this worker recorded, by
//!   step type; `status` is how the attempt ended (`COMPLETED`, `FAILED`: a failed attempt
//!   counts whether or not another follows). Waiting steps (delay, approval, subworkflow)
//!   are timed from their start to the settlement this worker records (a delay that is due,
//!   a child run that ended, a wait past its timeout); an approval decided through the API
//!   is settled by runtime-service and not timed here.
//! - `thygon_jobs_in_flight`: jobs this process is executing now.
//! - `thygon_jobs_total{outcome}`: jobs settled, by outcome: `done` (executed until the run
//!   ended or waits), `lease_lost` (cancelled or taken over meanwhile), `duplicate`, `held`
//!   (its org at its running cap), `retry` (requeued after a transient failure), `poison`.
//! - `thygon_runs_finished_total{status}`: runs this worker ended, by final status.
//! - `thygon_checkpoint_batch_size`: pure-step checkpoints written per transaction (group
//!   commit, see [`crate::checkpoints`]).
//! - `thygon_agent_tokens_total{agent,kind}`: tokens of the model turns this worker
//!   journaled, by agent (an id of the agents file) and kind (`input`, `output`, `cached`).
//! - `thygon_agent_cost_usd_total{agent}`: their cost, from the agent's `pricing`.
//! - `thygon_agent_turns_total{agent}`: the model turns themselves.

use prometheus::{
    register_counter_vec, register_histogram, register_histogram_vec, register_int_counter_vec,
    register_int_gauge, CounterVec, Histogram, HistogramVec, IntCounterVec, IntGauge,
};
use std::sync::LazyLock;

pub static STEP_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "thygon_step_duration_seconds",
        "Duration of each recorded step attempt, by step type and how it ended",
        &["type", "status"],
        vec![0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0]
    )
    .expect("register thygon_step_duration_seconds")
});

pub static JOBS_IN_FLIGHT: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "thygon_jobs_in_flight",
        "Jobs this worker process is executing now"
    )
    .expect("register thygon_jobs_in_flight")
});

pub static JOBS_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "thygon_jobs_total",
        "Jobs settled by this worker, by outcome",
        &["outcome"]
    )
    .expect("register thygon_jobs_total")
});

pub static RUNS_FINISHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "thygon_runs_finished_total",
        "Runs this worker ended, by final status",
        &["status"]
    )
    .expect("register thygon_runs_finished_total")
});

pub static AGENT_TOKENS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "thygon_agent_tokens_total",
        "Tokens of the model turns this worker journaled, by agent and kind (input, output, cached)",
        &["agent", "kind"]
    )
    .expect("register thygon_agent_tokens_total")
});

pub static AGENT_COST: LazyLock<CounterVec> = LazyLock::new(|| {
    register_counter_vec!(
        "thygon_agent_cost_usd_total",
        "Cost in USD of the model turns this worker journaled, by agent (from its pricing)",
        &["agent"]
    )
    .expect("register thygon_agent_cost_usd_total")
});

pub static AGENT_TURNS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "thygon_agent_turns_total",
        "Model turns this worker journaled, by agent",
        &["agent"]
    )
    .expect("register thygon_agent_turns_total")
});

/// Count one journaled model turn of `agent`.
pub fn agent_turn(agent: &str, usage: &crate::agents::model::Usage, cost_picos: i64) {
    AGENT_TURNS.with_label_values(&[agent]).inc();
    for (kind, n) in [
        ("input", usage.input_tokens),
        ("output", usage.output_tokens),
        ("cached", usage.cached_tokens),
    ] {
        AGENT_TOKENS
            .with_label_values(&[agent, kind])
            .inc_by(n.max(0) as u64);
    }
    AGENT_COST
        .with_label_values(&[agent])
        .inc_by(cost_picos.max(0) as f64 / crate::agents::model::PICOS_PER_USD);
}

pub static CHECKPOINT_BATCH: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "thygon_checkpoint_batch_size",
        "Pure-step checkpoints written per transaction (group commit across runs)",
        vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]
    )
    .expect("register thygon_checkpoint_batch_size")
});

pub static CLAIM_BATCH: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "thygon_claim_batch_size",
        "Jobs claimed per statement (group commit of the claims that arrive together)",
        vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]
    )
    .expect("register thygon_claim_batch_size")
});

/// Register every metric above, so a scrape shows them before their first sample.
pub fn register() {
    LazyLock::force(&STEP_DURATION);
    LazyLock::force(&JOBS_IN_FLIGHT);
    LazyLock::force(&JOBS_TOTAL);
    LazyLock::force(&RUNS_FINISHED);
    LazyLock::force(&CHECKPOINT_BATCH);
    LazyLock::force(&CLAIM_BATCH);
}
