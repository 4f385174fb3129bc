//! `GET /ops/queues` and `GET /ops/workers`: the admin key only; the queue numbers are the
//! broker's (messages published into this test's own queues); workers come from their rows,
//! with the RUNNING runs they hold, live or stale by their last heartbeat.

use crate::helpers::{
    amqp_url, assert_error, broker, build_app_configured, seconds_from_now, spawn_app,
    spawn_app_sampling, TestApp, ORG,
};
use diesel::prelude::*;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use serde_json::{json, Value};
use shared_models::models::WorkerRow;
use shared_models::queue::{self, QueueNames};
use shared_models::schema::{runs, workers};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Poll `GET /ops/queues` until `done` holds for its data (10 s at most).
async fn queues_until(app: &TestApp, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = app.get_as_admin("/ops/queues").await;
        if r.status == 200 && done(&r.body["data"]) {
            return r.body["data"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "/ops/queues never showed {what}: {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn queue<'a>(data: &'a Value, kind: &str) -> &'a Value {
    data.as_array()
        .and_then(|qs| qs.iter().find(|q| q["kind"] == kind))
        .unwrap_or_else(|| panic!("no {kind} queue in {data}"))
}

/// Publish `n` messages straight into `queue_name` (declared with the service's topology).
async fn publish(channel: &lapin::Channel, queue_name: &str, n: usize) {
    for i in 0..n {
        channel
            .basic_publish(
                "".into(),
                queue_name.into(),
                BasicPublishOptions::default(),
                format!("{{\"n\":{i}}}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }
}

#[tokio::test]
async fn ops_routes_need_the_admin_key() {
    let app = spawn_app_sampling().await;
    for path in ["/ops/queues", "/ops/workers"] {
        let r = app.send_auth(None, "GET", path, None, &[]).await;
        assert_error(&r, 401, "UNAUTHORIZED", &format!("{path} without a key"));
        let r = app.get(path).await;
        assert_error(&r, 403, "FORBIDDEN", &format!("{path} with an org key"));
        let r = app.send("POST", path, None, &[]).await;
        assert_eq!(r.status, 405, "{path}: {}", r.body);
    }
    let r = app.get_as_admin("/ops/workers").await;
    assert_eq!((r.status, &r.body["data"]), (200, &json!([])), "{}", r.body);
    // No one declared this test's queues yet: they show as not there, with nothing in them.
    let data = queues_until(&app, "a first sample", |_| true).await;
    assert_eq!(
        data.as_array().unwrap().len(),
        2,
        "the job and dead-letter queues: {data}"
    );
    for q in data.as_array().unwrap() {
        assert_eq!(
            (
                &q["exists"],
                &q["messages"],
                &q["consumers"],
                &q["reachable"]
            ),
            (&json!(false), &json!(0), &json!(0), &json!(true)),
            "{q}"
        );
    }
}

#[tokio::test]
async fn queue_numbers_are_what_the_broker_holds() {
    let app = spawn_app_sampling().await;
    let (conn, channel, names) = app.queues().await;
    publish(&channel, &names.jobs, 3).await;
    publish(&channel, &names.dead_letter_queue, 2).await;
    // A PENDING run created 40 s ago, one held back until later (not due), and a RUNNING one.
    let wf = app.workflow("ops", true);
    let old = app.run_in(&wf, "PENDING");
    let held = app.run_in(&wf, "PENDING");
    app.run_in(&wf, "RUNNING");
    diesel::update(runs::table.find(&old))
        .set(runs::created_at.eq(seconds_from_now(-40)))
        .execute(&mut app.conn())
        .unwrap();
    diesel::update(runs::table.find(&held))
        .set((
            runs::created_at.eq(seconds_from_now(-400)),
            runs::wake_at.eq(Some(seconds_from_now(60))),
        ))
        .execute(&mut app.conn())
        .unwrap();

    let data = queues_until(&app, "3 jobs and 2 dead letters", |d| {
        queue(d, "jobs")["messages"] == 3 && queue(d, "dead-letter")["messages"] == 2
    })
    .await;
    let jobs = queue(&data, "jobs");
    assert_eq!(jobs["name"], names.jobs.as_str());
    assert_eq!(jobs["consumers"], 0);
    assert_eq!(
        (&jobs["reachable"], &jobs["exists"]),
        (&json!(true), &json!(true))
    );
    let age = jobs["oldestPendingRunAgeSeconds"]
        .as_f64()
        .expect("a number");
    assert!(
        (40.0..100.0).contains(&age),
        "oldest due pending run age {age}"
    );
    assert!(jobs["sampledAt"].as_str().unwrap().ends_with('Z'));
    let history = jobs["history"].as_array().unwrap();
    assert!(!history.is_empty());
    let last = history.last().unwrap();
    assert_eq!(
        (&last["messages"], &last["consumers"], &last["at"]),
        (&json!(3), &json!(0), &jobs["sampledAt"])
    );
    let dead = queue(&data, "dead-letter");
    assert_eq!(dead["name"], names.dead_letter_queue.as_str());
    assert_eq!(dead["oldestPendingRunAgeSeconds"], json!(null));
    assert_eq!(data.as_array().unwrap().len(), 2);

    // A consumer appears; the messages it takes (unacked, prefetch 2) are no longer ready.
    let consumer_channel = conn.create_channel().await.expect("channel");
    consumer_channel
        .basic_qos(2, BasicQosOptions::default())
        .await
        .unwrap();
    let _consumer = consumer_channel
        .basic_consume(
            names.jobs.as_str().into(),
            "test-ops-consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let data = queues_until(&app, "one consumer with 1 ready message", |d| {
        queue(d, "jobs")["consumers"] == 1 && queue(d, "jobs")["messages"] == 1
    })
    .await;
    let history = queue(&data, "jobs")["history"].as_array().unwrap().clone();
    assert!(history.iter().any(|p| p["messages"] == 3));
    assert!(history
        .windows(2)
        .all(|w| w[0]["at"].as_str() <= w[1]["at"].as_str()));

    // The Prometheus gauges carry the same numbers, labelled by queue name.
    let text = prometheus_text();
    assert_eq!(
        gauge(&text, "thygon_queue_consumers", &names.jobs),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        gauge(&text, "thygon_queue_messages", &names.dead_letter_queue),
        Some(2.0)
    );
    let _ = conn.close(200, "done".into()).await;
}

fn prometheus_text() -> String {
    let mut out = Vec::new();
    prometheus::Encoder::encode(
        &prometheus::TextEncoder::new(),
        &prometheus::gather(),
        &mut out,
    )
    .unwrap();
    String::from_utf8(out).unwrap()
}

fn gauge(text: &str, name: &str, queue: &str) -> Option<f64> {
    let series = format!("{name}{{queue=\"{queue}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
}

#[tokio::test]
async fn an_unreachable_broker_is_a_503_until_a_sample_succeeded() {
    // The sampler's broker is a relay the test opens when it chooses; it does not run on
    // its own: the test samples.
    let open = Arc::new(AtomicBool::new(false));
    let relay = relay_to_broker_while(open.clone()).await;
    let (mut built, app) = build_app_configured(|s| {
        s.common.broker = queue::Broker::new(&relayed_url(relay.port)).expect("url");
        s.ops_sample_interval = Duration::from_secs(3600);
    });
    let mut sampler = built.take_sampler().expect("the sampler, not running");
    tokio::spawn(built.run_until_stopped());
    let r = app.get_as_admin("/ops/queues").await;
    assert_error(&r, 503, "UNAVAILABLE", "/ops/queues, nothing sampled yet");

    // The sampler tried, and the broker could not be reached.
    sampler.sample_once().await;
    let tried = sampler.stats().read().expect("the stats").clone();
    assert!(tried.attempted_at.is_some(), "the sampler tried");
    assert!(!tried.reachable, "the broker was not reached");
    let r = app.get_as_admin("/ops/queues").await;
    assert_error(&r, 503, "UNAVAILABLE", "/ops/queues, broker never reached");

    // Once a sample succeeds, the numbers are shown.
    open.store(true, Ordering::SeqCst);
    sampler.sample_once().await;
    let r = app.get_as_admin("/ops/queues").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(queue(&r.body["data"], "jobs")["reachable"], true);
    relay.task.abort();
}

/// `AMQP_URL` with its host and port replaced by a relay's on 127.0.0.1.
fn relayed_url(port: u16) -> String {
    let url = amqp_url();
    let (creds, rest) = url.split_once('@').unwrap_or(("amqp://guest:guest", &url));
    let vhost = rest.split_once('/').map_or("%2f", |(_, v)| v);
    format!("{creds}@127.0.0.1:{port}/{vhost}")
}

/// A TCP relay to the broker that the test can cut.
struct Relay {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

async fn relay_to_broker() -> Relay {
    relay_to_broker_while(Arc::new(AtomicBool::new(true))).await
}

/// [`relay_to_broker`] that drops every connection while `open` is false.
async fn relay_to_broker_while(open: Arc<AtomicBool>) -> Relay {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = amqp_url();
    let after_at = url.split_once('@').map_or(url.as_str(), |(_, rest)| rest);
    let target = after_at.split('/').next().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut links = tokio::task::JoinSet::new();
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            if !open.load(Ordering::SeqCst) {
                drop(inbound);
                continue;
            }
            let target = target.clone();
            links.spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    Relay { port, task }
}

#[tokio::test]
async fn when_the_broker_goes_away_the_last_numbers_stay_marked_unreachable() {
    let relay = relay_to_broker().await;
    let relayed = relayed_url(relay.port);
    // The sampler does not run: the test samples when it chooses.
    let (mut built, app) = build_app_configured(|s| {
        s.common.broker = queue::Broker::new(&relayed).expect("url");
        s.ops_sample_interval = Duration::from_secs(3600);
    });
    let mut sampler = built.take_sampler().expect("the sampler, not running");
    tokio::spawn(built.run_until_stopped());

    let names = QueueNames::new(&app.prefix);
    let conn = queue::connect(&broker(), "test-ops-publisher")
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    queue::declare_topology(&channel, &names).await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    publish(&channel, &names.jobs, 4).await;

    sampler.sample_once().await;
    let r = app.get_as_admin("/ops/queues").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let jobs = queue(&r.body["data"], "jobs").clone();
    assert_eq!(
        (&jobs["messages"], &jobs["reachable"]),
        (&json!(4), &json!(true))
    );

    relay.task.abort();
    assert!(relay
        .task
        .await
        .expect_err("the relay was stopped")
        .is_cancelled());
    sampler.sample_once().await;
    let r = app.get_as_admin("/ops/queues").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["data"].as_array().unwrap().len(), 2, "{}", r.body);
    for q in r.body["data"].as_array().unwrap() {
        assert_eq!(q["reachable"], false, "{q}");
    }
    let after = queue(&r.body["data"], "jobs");
    assert_eq!(after["messages"], 4);
    assert_eq!(after["sampledAt"], jobs["sampledAt"]);
    assert_eq!(after["history"].as_array().unwrap().len(), 1);
    let _ = conn.close(200, "done".into()).await;
}

fn worker(id: &str, heartbeat_secs_ago: i64) -> WorkerRow {
    WorkerRow {
        id: id.into(),
        hostname: "host-a".into(),
        pid: 4242,
        started_at: seconds_from_now(-heartbeat_secs_ago - 600),
        last_heartbeat_at: seconds_from_now(-heartbeat_secs_ago),
        concurrency: 8,
        in_flight: 2,
    }
}

#[tokio::test]
async fn workers_show_their_running_runs_and_stale_ones_are_marked() {
    // Live for 3 s after a heartbeat (the sampling app's 1 s interval).
    let app = spawn_app_sampling().await;
    diesel::insert_into(workers::table)
        .values(vec![
            worker("w-live", 0),
            worker("w-stale", 30),
            worker("w-gone", 2 * 3600),
        ])
        .execute(&mut app.conn())
        .unwrap();
    let wf = app.workflow("ops", true);
    let mut held = Vec::new();
    for (status, owner) in [
        ("RUNNING", "w-live"),
        ("RUNNING", "w-live"),
        ("COMPLETED", "w-live"),
        ("RUNNING", "w-stale"),
        ("RUNNING", "w-other"),
    ] {
        let id = app.run_of(ORG, &wf, status);
        diesel::update(runs::table.find(&id))
            .set(runs::lease_owner.eq(owner))
            .execute(&mut app.conn())
            .unwrap();
        held.push(id);
    }

    let r = app.get_as_admin("/ops/workers").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let data = r.body["data"].as_array().unwrap();
    let ids: Vec<&str> = data.iter().map(|w| w["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        ["w-live", "w-stale"],
        "newest heartbeat first; an hour-old one is gone"
    );
    let live = &data[0];
    assert_eq!(live["live"], true);
    assert_eq!(live["runs"], json!([held[0], held[1]]));
    for (key, value) in [
        ("hostname", json!("host-a")),
        ("pid", json!(4242)),
        ("concurrency", json!(8)),
        ("inFlight", json!(2)),
    ] {
        assert_eq!(live[key], value, "{key}");
    }
    for key in ["startedAt", "lastHeartbeatAt"] {
        assert!(live[key].as_str().unwrap().ends_with('Z'), "{key}");
    }
    let stale = &data[1];
    assert_eq!(
        (&stale["live"], &stale["runs"]),
        (&json!(false), &json!([held[3]]))
    );
}

#[tokio::test]
async fn without_a_sampler_the_queues_are_unavailable_not_empty() {
    let app = spawn_app().await;
    let r = app.get_as_admin("/ops/queues").await;
    assert_error(&r, 503, "UNAVAILABLE", "/ops/queues before any sample");
}

#[tokio::test]
async fn the_dashboard_pages_load_without_a_key_with_their_content_types() {
    let app = spawn_app().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (path, content_type, marker) in [
        ("/ui/", "text/html; charset=utf-8", "data-page=\"runs\""),
        (
            "/ui/index.html",
            "text/html; charset=utf-8",
            "data-page=\"runs\"",
        ),
        (
            "/ui/run.html",
            "text/html; charset=utf-8",
            "data-page=\"run\"",
        ),
        (
            "/ui/queues.html",
            "text/html; charset=utf-8",
            "data-page=\"queues\"",
        ),
        (
            "/ui/app.js",
            "text/javascript; charset=utf-8",
            "Authorization",
        ),
        ("/ui/style.css", "text/css; charset=utf-8", ".badge"),
    ] {
        let res = client
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let headers = res.headers().clone();
        assert_eq!(headers["content-type"], content_type, "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert!(headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'"));
        assert!(res.text().await.unwrap().contains(marker), "{path}");
    }
    let res = client
        .get(format!("{}/ui", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (res.status().as_u16(), &res.headers()["location"]),
        (
            308,
            &"/ui/".parse::<reqwest::header::HeaderValue>().unwrap()
        )
    );
    let r = app
        .send_auth(None, "GET", "/ui/secrets.txt", None, &[])
        .await;
    assert_error(&r, 404, "NOT_FOUND", "an unknown dashboard file");
    let r = app
        .send_auth(None, "GET", "/ui/../workflows/runs", None, &[])
        .await;
    assert_eq!(r.status, 401, "outside /ui/ a key is needed: {}", r.body);
}

/// The run page has its agent-turns section and usage, and the script builds every page from
/// text nodes: tenants and models write the strings it shows (e2e/tests/dashboard.rs checks
/// the rendered page in a browser).
#[tokio::test]
async fn the_run_page_shows_usage_and_turns_and_the_script_never_writes_markup() {
    let app = spawn_app().await;
    let page = |path: &'static str| {
        let url = format!("{}{path}", app.address);
        async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
    };
    let html = page("/ui/run.html").await;
    assert!(html.contains("id=\"turns\""), "{html}");
    let script = page("/ui/app.js").await;
    for hook in [
        "function renderTurns(",
        "renderTurns(run.steps)",
        "usage-tokens",
        "usage-cost",
        "tool-error",
        "data-turn",
        "toolResults",
        // the live answers, from the event stream
        "agent.delta",
        "agent.reset",
        "Last-Event-ID",
        "AbortController",
    ] {
        assert!(script.contains(hook), "app.js lacks {hook}");
    }
    for markup in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
    ] {
        assert!(!script.contains(markup), "app.js uses {markup}");
    }
}
