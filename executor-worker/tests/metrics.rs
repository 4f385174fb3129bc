//! The worker's `GET /metrics` on its health server: step durations by type, runs finished,
//! jobs in flight, with the process's metrics.

mod common;

use common::*;
use executor_worker::consumer::WorkerState;
use executor_worker::engine::JobOutcome;
use serde_json::json;
use shared_models::metrics::{sample, Endpoint};
use shared_models::queue::RunJob;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;
use thygon_testkit::http::scrape;

fn value(text: &str, name: &str, labels: &str) -> f64 {
    sample(text, name, labels).unwrap_or(0.0)
}

#[tokio::test]
async fn executed_transform_steps_and_finished_runs_show_on_the_health_server() {
    let db = test_db().await;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = format!("http://{}", listener.local_addr().unwrap());
    let (health, _) = executor_worker::startup::health_server(
        listener,
        Endpoint::Main,
        db.pool.clone(),
        Arc::new(WorkerState::default()),
        "metrics-test".into(),
    )
    .expect("health server");
    tokio::spawn(health);

    let (status, content_type, before) = scrape(&address).await;
    assert_eq!(status, 200, "{before}");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    // (Labelled families show once they have a sample.)
    assert!(
        before.contains("# TYPE thygon_jobs_in_flight gauge"),
        "{before}"
    );
    assert!(sample(&before, "process_resident_memory_bytes", "").is_some());

    let definition = json!({ "steps": [
        { "name": "a", "type": "transform", "value": { "n": 1 } },
        { "name": "b", "type": "transform", "value": { "n": "{{ steps.a.output.n + 1 }}" } },
    ] });
    let (_, run_id) = workflow_with_run(&db.pool, "metered", definition, json!({})).await;
    let engine = engine(&db.pool, registry(&[]), Duration::from_secs(10));
    assert_eq!(
        engine.process(&RunJob::new(&run_id, ORG, None)).await,
        JobOutcome::Done
    );
    assert_eq!(get_run(&db.pool, &run_id).await.status, "COMPLETED");

    let (_, _, after) = scrape(&address).await;
    let transform = r#"status="COMPLETED",type="transform""#;
    let steps = "thygon_step_duration_seconds_count";
    assert_eq!(
        value(&after, steps, transform) - value(&before, steps, transform),
        2.0,
        "{after}"
    );
    let finished = "thygon_runs_finished_total";
    let completed = r#"status="COMPLETED""#;
    assert_eq!(
        value(&after, finished, completed) - value(&before, finished, completed),
        1.0,
        "{after}"
    );
    assert_eq!(sample(&after, "thygon_jobs_in_flight", ""), Some(0.0));
    // The job's claim and its checkpoints went through the group commits.
    for batches in [
        "thygon_claim_batch_size_count",
        "thygon_checkpoint_batch_size_count",
    ] {
        assert!(
            value(&after, batches, "") - value(&before, batches, "") >= 1.0,
            "{batches}: {after}"
        );
    }
}
