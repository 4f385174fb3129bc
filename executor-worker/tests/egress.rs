//! The egress policy and the bounds of `http` steps, through `Engine::process` on real
//! PostgreSQL. Every server here listens on 127.0.0.1 and every URL aims at loopback: the
//! refused forms are loopback spellings, and the redirects go between loopback ports.

mod common;

use common::*;
use executor_worker::engine::JobOutcome;
use executor_worker::outbound::OutboundSettings;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// One `http` step whose URL is the run's `variables.u`, retried up to three times, so a
/// failure on attempt 1 shows that it was not retried.
fn fetch_definition() -> Value {
    json!({ "steps": [{
        "name": "fetch", "type": "http",
        "request": { "url": "{{ variables.u }}" },
        "retry": { "maxAttempts": 3, "backoffSeconds": 0.01 },
    }] })
}

/// A workflow name not used before in this test binary.
fn fresh_name() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("fetch{}", NEXT.fetch_add(1, Ordering::SeqCst))
}

/// Run a new fetch workflow on `url` with `engine`; the `fetch` step's row.
async fn fetch(
    db: &thygon_testkit::TestDb,
    engine: &executor_worker::engine::Engine,
    url: &str,
) -> shared_models::models::StepRunRow {
    let (_, run_id) = workflow_with_run(
        &db.pool,
        &fresh_name(),
        fetch_definition(),
        json!({ "u": url }),
    )
    .await;
    assert_eq!(engine.process(&run_job(&run_id)).await, JobOutcome::Done);
    let steps = get_steps(&db.pool, &run_id).await;
    find_step(&steps, "fetch").clone()
}

fn assert_failed_at_once(step: &shared_models::models::StepRunRow, url: &str) -> String {
    assert_eq!(
        (step.status.as_str(), step.attempt),
        ("FAILED", 1),
        "{url}: {:?}",
        step.error
    );
    step.error.clone().unwrap_or_default()
}

/// A server counting the requests it gets and answering each with a wiremock 200.
async fn counting_server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("internal secret"))
        .mount(&server)
        .await;
    server
}

async fn requests(server: &MockServer) -> usize {
    server.received_requests().await.map_or(0, |r| r.len())
}

#[tokio::test]
async fn loopback_in_every_spelling_fails_at_once_and_reaches_nothing() {
    let db = test_db().await;
    let target = counting_server().await;
    let port = target.address().port();
    let engine = engine(&db.pool, registry(&[]), CALL_TIMEOUT);
    let cases = [
        (
            format!("http://127.0.0.1:{port}/healthz"),
            format!("127.0.0.1:{port}"),
            "loopback",
        ),
        (
            format!("http://2130706433:{port}/healthz"),
            format!("127.0.0.1:{port}"),
            "loopback",
        ),
        (
            format!("http://0x7f.1:{port}/"),
            format!("127.0.0.1:{port}"),
            "loopback",
        ),
        (
            format!("http://0.0.0.0:{port}/"),
            format!("0.0.0.0:{port}"),
            "unspecified",
        ),
        (
            format!("http://[::1]:{port}/"),
            format!("[::1]:{port}"),
            "loopback",
        ),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/"),
            format!("127.0.0.1:{port}"),
            "loopback",
        ),
    ];
    for (url, target_text, range) in cases {
        let step = fetch(&db, &engine, &url).await;
        let error = assert_failed_at_once(&step, &url);
        assert_eq!(
            error,
            format!("egress to {target_text} refused ({range}); EGRESS_ALLOW lists exceptions"),
            "{url}"
        );
    }
    // A name is decided on the addresses it resolves to.
    let url = format!("http://localhost:{port}/healthz");
    let step = fetch(&db, &engine, &url).await;
    let error = assert_failed_at_once(&step, &url);
    assert!(
        error.starts_with("egress to localhost (")
            && error.ends_with(") refused (loopback); EGRESS_ALLOW lists exceptions"),
        "{error}"
    );
    assert_eq!(requests(&target).await, 0, "the target got no request");
}

#[tokio::test]
async fn a_redirect_from_an_allowed_server_to_another_port_is_refused_at_the_hop() {
    let db = test_db().await;
    let inside = counting_server().await;
    let inside_port = inside.address().port();
    let allowed = MockServer::start().await;
    for (route, location) in [
        ("/literal", format!("http://127.0.0.1:{inside_port}/secret")),
        ("/named", format!("http://localhost:{inside_port}/secret")),
    ] {
        Mock::given(method("GET"))
            .and(path(route))
            .respond_with(ResponseTemplate::new(302).insert_header("location", location.as_str()))
            .mount(&allowed)
            .await;
    }
    let engine = engine_allowing(
        &db.pool,
        registry(&[]),
        CALL_TIMEOUT,
        &allow_server(&allowed),
    );

    let url = format!("{}/literal", allowed.uri());
    let error = assert_failed_at_once(&fetch(&db, &engine, &url).await, &url);
    assert_eq!(
        error,
        format!(
            "egress to 127.0.0.1:{inside_port} refused (loopback); EGRESS_ALLOW lists exceptions"
        )
    );
    let url = format!("{}/named", allowed.uri());
    let error = assert_failed_at_once(&fetch(&db, &engine, &url).await, &url);
    assert!(
        error.starts_with("egress to localhost (") && error.contains("refused (loopback)"),
        "{error}"
    );
    assert_eq!(
        requests(&allowed).await,
        2,
        "one request per run to the allowed server"
    );
    assert_eq!(
        requests(&inside).await,
        0,
        "the redirect target got nothing"
    );
}

#[tokio::test]
async fn a_redirect_chain_stops_at_the_cap() {
    let db = test_db().await;
    let looping = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("location", format!("{}/again", looping.uri()).as_str()),
        )
        .mount(&looping)
        .await;
    let engine = engine_allowing(
        &db.pool,
        registry(&[]),
        CALL_TIMEOUT,
        &allow_server(&looping),
    );
    let url = format!("{}/start", looping.uri());
    let error = assert_failed_at_once(&fetch(&db, &engine, &url).await, &url);
    assert_eq!(error, "stopped after 5 redirects (HTTP_MAX_REDIRECTS)");
    assert_eq!(
        requests(&looping).await,
        6,
        "the first request and five hops"
    );
}

#[tokio::test]
async fn a_listed_target_is_reached() {
    let db = test_db().await;
    let target = counting_server().await;
    let port = target.address().port();
    // Address and port: the URL must write the address.
    let engine = engine_allowing(
        &db.pool,
        registry(&[]),
        CALL_TIMEOUT,
        &format!("127.0.0.1:{port}"),
    );
    let step = fetch(&db, &engine, &format!("http://127.0.0.1:{port}/x")).await;
    assert_eq!(step.status, "COMPLETED", "{:?}", step.error);
    assert_eq!(
        step.output.expect("output")["body"],
        json!("internal secret")
    );
    // Address on every port: a name resolving to it is let through too.
    let engine = engine_allowing(&db.pool, registry(&[]), CALL_TIMEOUT, "127.0.0.1");
    let step = fetch(&db, &engine, &format!("http://localhost:{port}/x")).await;
    assert_eq!(step.status, "COMPLETED", "{:?}", step.error);
    assert_eq!(requests(&target).await, 2);
}

/// A server on 127.0.0.1 that answers every request with `chunks` chunks of `size` bytes,
/// chunked, without a `Content-Length`; and how many requests it got.
async fn chunked_server(chunks: usize, size: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind on loopback");
    let addr = listener.local_addr().expect("its address");
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if !read_request_head(&mut socket).await {
                    return;
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = format!("{size:x}\r\n{}\r\n", "x".repeat(size));
                for _ in 0..chunks {
                    // The client hangs up once it has had enough.
                    if socket.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                }
                let _ = socket.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    (addr, seen)
}

fn small_bodies(allow: &str) -> OutboundSettings {
    OutboundSettings {
        max_response_bytes: 10_000,
        ..OutboundSettings::allowing(allow).expect("a valid EGRESS_ALLOW")
    }
}

#[tokio::test]
async fn an_answer_over_the_size_cap_fails_the_step_naming_the_setting() {
    let db = test_db().await;
    let big = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("y".repeat(20_000)))
        .mount(&big)
        .await;
    let (chunked, chunked_requests) = chunked_server(100, 1000).await;
    let (small, _) = chunked_server(5, 1000).await;
    let allow = format!("{},{chunked},{small}", allow_server(&big));
    let engine = engine_with(
        &db.pool,
        registry(&[]),
        CALL_TIMEOUT,
        executor_worker::config::DEFAULT_MAX_RUNNING_PER_ORG,
        small_bodies(&allow),
    );
    // Content-Length over the cap: refused before reading.
    let url = format!("{}/big?token=abc", big.uri());
    let error = assert_failed_at_once(&fetch(&db, &engine, &url).await, &url);
    assert_eq!(
        error,
        format!(
            "the answer of {}/big is larger than HTTP_MAX_RESPONSE_BYTES (10000 bytes)",
            big.uri()
        )
    );
    // No length: stopped as the chunks arrive.
    let url = format!("http://{chunked}/stream");
    let error = assert_failed_at_once(&fetch(&db, &engine, &url).await, &url);
    assert!(
        error.contains("larger than HTTP_MAX_RESPONSE_BYTES (10000 bytes)"),
        "{error}"
    );
    assert_eq!(chunked_requests.load(Ordering::SeqCst), 1, "not retried");
    // Under the cap, chunked: read whole.
    let step = fetch(&db, &engine, &format!("http://{small}/stream")).await;
    assert_eq!(step.status, "COMPLETED", "{:?}", step.error);
    assert_eq!(
        step.output.expect("output")["body"],
        json!("x".repeat(5000))
    );
}

#[tokio::test]
async fn no_error_carries_the_query_or_the_userinfo() {
    let db = test_db().await;
    let failing = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(500).set_body_string("no"))
        .mount(&failing)
        .await;
    // A loopback port nobody listens on: connection refused.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind on loopback");
        listener.local_addr().expect("its address")
    };
    let secrets = "user-s3cret:pass-s3cret@";
    let query = "?token=query-s3cret&x=1";
    let allow = format!("{},{closed}", allow_server(&failing));
    let engine = engine_allowing(&db.pool, registry(&[]), CALL_TIMEOUT, &allow);
    let blocked = counting_server().await;
    let cases = [
        // Answered 500.
        format!("http://{secrets}{}/a{query}", failing.address()),
        // Could not connect.
        format!("http://{secrets}{closed}/b{query}"),
        // Refused by the policy.
        format!("http://{secrets}{}/c{query}", blocked.address()),
        format!(
            "http://{secrets}localhost:{}/d{query}",
            blocked.address().port()
        ),
    ];
    for url in cases {
        let (_, run_id) = workflow_with_run(
            &db.pool,
            &fresh_name(),
            fetch_definition(),
            json!({ "u": url }),
        )
        .await;
        assert_eq!(engine.process(&run_job(&run_id)).await, JobOutcome::Done);
        let steps = get_steps(&db.pool, &run_id).await;
        let step = find_step(&steps, "fetch");
        assert_eq!(step.status, "FAILED", "{url}");
        let error = step.error.clone().unwrap_or_default();
        assert!(!error.is_empty(), "{url}");
        let run = get_run(&db.pool, &run_id).await;
        let events = get_events(&db.pool, &run_id).await;
        let everything = format!("{error} {:?} {events:?}", run.error);
        for secret in ["s3cret", "token="] {
            assert!(
                !everything.contains(secret),
                "{url} leaked {secret}: {everything}"
            );
        }
    }
    assert_eq!(requests(&blocked).await, 0);
}

#[tokio::test]
async fn an_operator_agent_on_loopback_works_with_no_exceptions() {
    let db = test_db().await;
    let agent = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/classify"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "output": { "ok": true } })))
        .expect(1)
        .mount(&agent)
        .await;
    let definition = json!({ "steps": [{
        "name": "ask", "type": "agent", "agentId": "classifier", "instructions": "go",
    }] });
    let (_, run_id) = workflow_with_run(&db.pool, "agent", definition, json!({})).await;
    // EGRESS_ALLOW empty: the agent's URL is the operator's (AGENTS_FILE), not filtered.
    let engine = engine(
        &db.pool,
        registry(&[("classifier", format!("{}/classify", agent.uri()))]),
        CALL_TIMEOUT,
    );
    assert_eq!(engine.process(&run_job(&run_id)).await, JobOutcome::Done);
    let steps = get_steps(&db.pool, &run_id).await;
    let step = find_step(&steps, "ask");
    assert_eq!(step.status, "COMPLETED", "{:?}", step.error);
    assert_eq!(step.output, Some(json!({ "ok": true })));
    agent.verify().await;
}

#[tokio::test]
async fn a_step_timeout_over_the_maximum_is_cut_to_it() {
    let db = test_db().await;
    let slow = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
        .mount(&slow)
        .await;
    let definition = json!({ "steps": [{
        "name": "fetch", "type": "http", "timeoutSeconds": 3600,
        "request": { "url": format!("{}/slow", slow.uri()) },
    }] });
    let (_, run_id) = workflow_with_run(&db.pool, "slow", definition, json!({})).await;
    let outbound = OutboundSettings {
        max_step_timeout: Duration::from_millis(300),
        ..OutboundSettings::allowing(&allow_server(&slow)).expect("a valid EGRESS_ALLOW")
    };
    let engine = engine_with(
        &db.pool,
        registry(&[]),
        CALL_TIMEOUT,
        executor_worker::config::DEFAULT_MAX_RUNNING_PER_ORG,
        outbound,
    );
    let started = Instant::now();
    assert_eq!(engine.process(&run_job(&run_id)).await, JobOutcome::Done);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let steps = get_steps(&db.pool, &run_id).await;
    let step = find_step(&steps, "fetch");
    assert_eq!(step.status, "FAILED");
    let error = step.error.clone().unwrap_or_default();
    assert!(
        error.starts_with("timed out after 0.3s (MAX_STEP_TIMEOUT_SECONDS)"),
        "{error}"
    );
}
