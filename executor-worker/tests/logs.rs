//! Every line the worker logs while it processes a job carries the job's request and run
//! ids (text format: ` req=<id> run=<id>`), parallel steps, retries and failures included.
//! Its own test binary: it installs the process's logger.

mod common;

use common::*;
use executor_worker::engine::JobOutcome;
use serde_json::json;
use shared_models::config::{logger_builder, LogFormat};
use shared_models::queue::RunJob;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// The lines written since the last call.
    fn take(&self) -> Vec<String> {
        let bytes = std::mem::take(&mut *self.0.lock().unwrap());
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

#[tokio::test]
async fn every_line_logged_while_a_run_is_processed_carries_its_request_and_run_ids() {
    let capture = Capture::default();
    logger_builder(LogFormat::Text)
        .target(env_logger::Target::Pipe(Box::new(capture.clone())))
        .write_style(env_logger::WriteStyle::Never)
        .filter_level(log::LevelFilter::Info)
        .filter_module("executor_worker", log::LevelFilter::Debug)
        .filter_module("shared_models", log::LevelFilter::Debug)
        .try_init()
        .expect("the only logger of this test binary");

    let db = test_db().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/ok"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "ok": true })))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/down"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let engine = engine_allowing(
        &db.pool,
        registry(&[]),
        Duration::from_secs(10),
        &allow_server(&server),
    );

    // Parallel branches that complete, and one that fails after a retry.
    let runs = [
        (
            "fan_out",
            json!({ "steps": [
                { "name": "a", "type": "transform", "value": { "n": 1 } },
                { "name": "b", "type": "http", "dependsOn": ["a"],
                  "request": { "method": "POST", "url": format!("{}/ok", server.uri()) } },
                { "name": "c", "type": "transform", "dependsOn": ["a"], "value": 2 },
                { "name": "d", "type": "transform", "dependsOn": ["b", "c"], "value": 3 },
            ] }),
            "COMPLETED",
        ),
        (
            "failing",
            json!({ "steps": [
                { "name": "call", "type": "http",
                  "request": { "method": "POST", "url": format!("{}/down", server.uri()) },
                  "retry": { "maxAttempts": 2, "backoffSeconds": 0 } },
                { "name": "side", "type": "transform", "value": 1 },
            ] }),
            "FAILED",
        ),
    ];
    for (name, definition, status) in runs {
        let (_, run_id) = workflow_with_run(&db.pool, name, definition, json!({})).await;
        let request_id = format!("req_logs_{name}");
        capture.take();
        let job = RunJob::new(&run_id, ORG, Some(request_id.clone()));
        assert_eq!(engine.process(&job).await, JobOutcome::Done);
        let lines = capture.take();
        assert_eq!(get_run(&db.pool, &run_id).await.status, status);

        assert!(
            lines.len() >= 5,
            "the run was logged (started, completed, failed steps): {lines:#?}"
        );
        let ids = format!(" req={request_id} run={run_id}");
        for line in &lines {
            assert!(line.ends_with(&ids), "without{ids}: {line}");
        }
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("] run {run_id}: {status}"))),
            "{lines:#?}"
        );
    }
}
