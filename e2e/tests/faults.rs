//! Fault tests: break things on purpose and count what survived (docs/RELIABILITY.md).
//!
//! Every scenario runs on its own stack over a private PostgreSQL cluster and RabbitMQ node
//! (e2e/src/private/), never the machine's shared ones, and the scenarios run one at a
//! time (`SERIAL`), each bounded by `SCENARIO_DEADLINE`. Assertions are on correctness;
//! the timings are printed (`cargo test -p thygon-e2e --test faults -- --nocapture`).
//!
//! The workers run with short leases so a dead worker's runs are taken over quickly:
//! `LEASE_SECONDS=3`, `SHUTDOWN_GRACE_SECONDS=10`, and for the runtime's lease reaper
//! `REAPER_GRACE_SECONDS=1`.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thygon_e2e::private::{PrivatePostgres, PrivateRabbit};
use thygon_e2e::{Stack, StackOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One scenario at a time: they kill processes and stop servers, and their figures should
/// not depend on each other's load.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Each scenario, start to end (private servers included), must finish within this.
const SCENARIO_DEADLINE: Duration = Duration::from_secs(120);
/// The workers' `SHUTDOWN_GRACE_SECONDS`.
const SHUTDOWN_GRACE_SECONDS: u64 = 10;
/// How long the runs of a scenario get to finish after the fault.
const SETTLE_WITHIN: Duration = Duration::from_secs(60);

async fn bounded(name: &str, scenario: impl Future<Output = ()>) {
    let _serial = SERIAL.lock().await;
    if tokio::time::timeout(SCENARIO_DEADLINE, scenario)
        .await
        .is_err()
    {
        panic!("fault scenario '{name}' did not finish within {SCENARIO_DEADLINE:?}");
    }
}

/// A private PostgreSQL cluster (with a migrated database) and RabbitMQ node, started at
/// the same time.
async fn private_servers() -> (PrivatePostgres, String, PrivateRabbit) {
    let started = Instant::now();
    let pg = tokio::task::spawn_blocking(|| {
        let t = Instant::now();
        let pg = PrivatePostgres::start();
        let up = t.elapsed();
        let url = pg.create_database();
        (pg, url, up)
    });
    let mq = tokio::task::spawn_blocking(|| {
        let t = Instant::now();
        (PrivateRabbit::start(), t.elapsed())
    });
    let (pg, url, pg_up) = pg.await.expect("private PostgreSQL");
    let (mq, mq_up) = mq.await.expect("private RabbitMQ");
    println!(
        "private servers: PostgreSQL :{} up in {:.1} s, RabbitMQ {} :{} up in {:.1} s ({:.1} s in all)",
        pg.port,
        pg_up.as_secs_f64(),
        mq.node,
        mq.port,
        mq_up.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    (pg, url, mq)
}

async fn fault_stack(workers: usize, concurrency: usize, db: &str, mq: &PrivateRabbit) -> Stack {
    let grace = SHUTDOWN_GRACE_SECONDS.to_string();
    let env = [
        ("LEASE_SECONDS", "3"),
        ("SHUTDOWN_GRACE_SECONDS", grace.as_str()),
        ("REAPER_GRACE_SECONDS", "1"),
        // The slow endpoint's `http` steps: it listens on a loopback port picked later.
        ("EGRESS_ALLOW", "127.0.0.1"),
    ];
    Stack::start_opts(StackOptions {
        workers,
        worker_concurrency: concurrency,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        database_url: Some(db.to_string()),
        amqp_url: Some(mq.url()),
        ..StackOptions::default()
    })
    .await
}

async fn create(stack: &Stack, name: &str, steps: Value) {
    stack.create_workflow(name, json!({ "steps": steps })).await;
}

async fn trigger(stack: &Stack, workflow: &str, n: usize) -> String {
    stack.trigger(workflow, json!({ "n": n })).await
}

/// An endpoint that answers after `delay`, counting calls per `Idempotency-Key`: the http
/// steps that keep runs mid-flight (holding a worker and its lease) for a while.
struct SlowEndpoint {
    url: String,
    calls: Arc<Mutex<HashMap<String, u32>>>,
}

async fn slow_endpoint(delay: Duration) -> SlowEndpoint {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/slow", listener.local_addr().unwrap());
    let calls: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let counted = calls.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                continue;
            };
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request).to_string();
                let key = text
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("idempotency-key")
                            .then(|| value.trim().to_string())
                    })
                    .unwrap_or_default();
                *counted.lock().unwrap().entry(key).or_insert(0) += 1;
                tokio::time::sleep(delay).await;
                let body = r#"{"slow":true}"#;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    SlowEndpoint { url, calls }
}

/// Transforms, short delays (the run waits, holding no worker) and slow http calls (the run
/// holds a worker and its lease): about 3 s a run.
fn long_chain(slow_url: &str) -> Value {
    json!([
        {"name": "a", "type": "transform", "value": {"n": "{{ variables.n }}"}},
        {"name": "pause1", "type": "delay", "seconds": 0.5},
        {"name": "call1", "type": "http", "request": {"url": slow_url}},
        {"name": "b", "type": "transform", "value": "{{ steps.a.output.n }}"},
        {"name": "pause2", "type": "delay", "seconds": 0.5},
        {"name": "call2", "type": "http", "request": {"url": slow_url}},
        {"name": "c", "type": "transform", "value": "{{ steps.b.output }}"}
    ])
}

/// Transforms and short delays only: about 1 s a run.
fn short_chain() -> Value {
    json!([
        {"name": "a", "type": "transform", "value": {"n": "{{ variables.n }}"}},
        {"name": "pause1", "type": "delay", "seconds": 0.3},
        {"name": "b", "type": "transform", "value": "{{ steps.a.output.n }}"},
        {"name": "pause2", "type": "delay", "seconds": 0.3},
        {"name": "c", "type": "transform", "value": "{{ steps.b.output }}"}
    ])
}

fn is_terminal(run: &Value) -> bool {
    ["COMPLETED", "FAILED", "CANCELLED"].contains(&run["status"].as_str().unwrap_or_default())
}

/// Poll every run until all ended or `within` passed; the latest view of each, in order.
/// Errors (an outage) are tolerated and polled through.
async fn settle(stack: &Stack, ids: &[String], within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let mut latest: HashMap<&str, Value> = HashMap::new();
    loop {
        for id in ids {
            if latest.get(id.as_str()).is_some_and(is_terminal) {
                continue;
            }
            if let Ok((200, body)) = stack
                .try_call("GET", &format!("/workflows/runs/{id}"), None)
                .await
            {
                latest.insert(id, body["data"].clone());
            }
        }
        let ended = latest.values().filter(|r| is_terminal(r)).count();
        if ended == ids.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ids.iter()
        .map(|id| latest.get(id.as_str()).cloned().unwrap_or(Value::Null))
        .collect()
}

/// What survived, counted from the runs' steps and transitions.
#[derive(Debug, Default)]
struct Tally {
    runs: usize,
    completed: usize,
    failed: usize,
    /// Runs neither COMPLETED nor FAILED at the end, with their status.
    unfinished: Vec<String>,
    completed_steps: usize,
    /// COMPLETED steps whose `RUNNING -> COMPLETED` transition shows more than once: a
    /// completed step executed again (must be 0).
    completed_steps_rerun: usize,
    /// Attempts beyond the first (an attempt cut off mid-call is run again: allowed).
    extra_attempts: i64,
    /// Runs whose own `-> COMPLETED` transition shows other than once (must be none).
    runs_not_completed_once: Vec<String>,
}

fn tally(runs: &[Value]) -> Tally {
    let mut t = Tally {
        runs: runs.len(),
        ..Tally::default()
    };
    for run in runs {
        match run["status"].as_str().unwrap_or("(unknown)") {
            "COMPLETED" => t.completed += 1,
            "FAILED" => t.failed += 1,
            other => t
                .unfinished
                .push(format!("{} {other}", run["id"].as_str().unwrap_or("?"))),
        }
        let transitions = run["transitions"].as_array().cloned().unwrap_or_default();
        let run_completions = transitions
            .iter()
            .filter(|tr| tr["step"].is_null() && tr["to"] == "COMPLETED")
            .count();
        if run["status"] == "COMPLETED" && run_completions != 1 {
            t.runs_not_completed_once.push(format!(
                "{} ({run_completions} transitions to COMPLETED)",
                run["id"].as_str().unwrap_or("?")
            ));
        }
        for step in run["steps"].as_array().cloned().unwrap_or_default() {
            let name = &step["name"];
            t.extra_attempts += (step["attempt"].as_i64().unwrap_or(0) - 1).max(0);
            if step["status"] != "COMPLETED" {
                continue;
            }
            t.completed_steps += 1;
            let completions = transitions
                .iter()
                .filter(|tr| tr["step"] == *name && tr["to"] == "COMPLETED")
                .count();
            if completions != 1 {
                t.completed_steps_rerun += 1;
                println!(
                    "  run {} step {name}: {completions} transitions to COMPLETED",
                    run["id"]
                );
            }
        }
    }
    t
}

/// Calls per idempotency key must not exceed the step's attempts: a completed call is
/// never made again; a call cut off may be (its retry carries the same key).
fn external_calls(runs: &[Value], slow: &SlowEndpoint) -> (u32, u32) {
    let calls = slow.calls.lock().unwrap().clone();
    let mut repeated = 0;
    for run in runs {
        for step in run["steps"].as_array().cloned().unwrap_or_default() {
            if step["type"] != "http" {
                continue;
            }
            let key = format!(
                "{}:{}",
                run["id"].as_str().unwrap_or_default(),
                step["name"].as_str().unwrap_or_default()
            );
            let made = calls.get(&key).copied().unwrap_or(0);
            let attempts = step["attempt"].as_i64().unwrap_or(0) as u32;
            assert!(
                made <= attempts.max(1),
                "{key}: {made} calls for {attempts} attempt(s)"
            );
            repeated += made.saturating_sub(1);
        }
    }
    (calls.values().sum(), repeated)
}

fn assert_survived(what: &str, t: &Tally, stack: &Stack) {
    assert!(
        t.unfinished.is_empty(),
        "{what}: {} of {} runs did not finish: {:?}\nruntime-service:\n{}",
        t.unfinished.len(),
        t.runs,
        t.unfinished,
        stack.log_tail("runtime-service")
    );
    assert_eq!(t.failed, 0, "{what}: runs FAILED");
    assert_eq!(t.completed, t.runs, "{what}");
    assert_eq!(
        t.completed_steps_rerun, 0,
        "{what}: a completed step ran again"
    );
    assert!(
        t.runs_not_completed_once.is_empty(),
        "{what}: runs not completed exactly once: {:?}",
        t.runs_not_completed_once
    );
}

#[derive(diesel::QueryableByName)]
struct HeldRun {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    lease_takeovers: i32,
}

/// The runs RUNNING under the lease of one of `workers` (`WORKER_ID`s, `e2e-worker-<i>`),
/// read from the database; with `in_a_step`, only those with a step RUNNING (mid-call).
fn held_by(stack: &Stack, workers: &[&str], in_a_step: bool) -> Vec<HeldRun> {
    use diesel::prelude::*;
    let workers: Vec<String> = workers.iter().map(|w| w.to_string()).collect();
    let mut conn = PgConnection::establish(&stack.database_url).expect("database");
    diesel::sql_query(
        "SELECT id, lease_takeovers FROM runs r
         WHERE r.status = 'RUNNING' AND r.lease_owner = ANY($1)
           AND (NOT $2 OR EXISTS (SELECT 1 FROM step_runs s
                                  WHERE s.run_id = r.id AND s.status = 'RUNNING'))
         ORDER BY id",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(workers)
    .bind::<diesel::sql_types::Bool, _>(in_a_step)
    .load(&mut conn)
    .expect("runs held by a worker")
}

/// `lease_takeovers` of each run, read from the database.
fn takeovers(stack: &Stack, ids: &[String]) -> HashMap<String, i32> {
    use diesel::prelude::*;
    let mut conn = PgConnection::establish(&stack.database_url).expect("database");
    diesel::sql_query("SELECT id, lease_takeovers FROM runs WHERE id = ANY($1)")
        .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(ids.to_vec())
        .load::<HeldRun>(&mut conn)
        .expect("takeovers")
        .into_iter()
        .map(|r| (r.id, r.lease_takeovers))
        .collect()
}

async fn snapshot(stack: &Stack, ids: &[String]) -> Vec<Value> {
    let mut runs = Vec::new();
    for id in ids {
        if let Ok((200, body)) = stack
            .try_call("GET", &format!("/workflows/runs/{id}"), None)
            .await
        {
            runs.push(body["data"].clone());
        }
    }
    runs
}

fn count_status(runs: &[Value], status: &str) -> usize {
    runs.iter().filter(|r| r["status"] == status).count()
}

fn has_completed_step(run: &Value) -> bool {
    run["steps"]
        .as_array()
        .is_some_and(|s| s.iter().any(|s| s["status"] == "COMPLETED"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_every_worker_mid_flight_then_start_a_new_one() {
    bounded("kill -9", async {
        let (_pg, db, mq) = private_servers().await;
        let mut stack = fault_stack(2, 8, &db, &mq).await;
        let slow = slow_endpoint(Duration::from_millis(1000)).await;
        create(&stack, "chain", long_chain(&slow.url)).await;
        let mut ids = Vec::new();
        for n in 0..32 {
            ids.push(trigger(&stack, "wf_chain", n).await);
        }
        // Mid-flight: most runs started with some steps done, and many of them RUNNING (in
        // a slow call, holding a worker and its lease), nothing finished yet.
        let deadline = Instant::now() + Duration::from_secs(30);
        let at_kill = loop {
            let runs = snapshot(&stack, &ids).await;
            let started = runs
                .iter()
                .filter(|r| r["status"] == "RUNNING" || r["status"] == "WAITING")
                .filter(|r| has_completed_step(r))
                .count();
            let holding = runs
                .iter()
                .filter(|r| r["status"] == "RUNNING" && has_completed_step(r))
                .count();
            if (started >= 20 && holding >= 8) || Instant::now() > deadline {
                break runs;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (running, waiting, done) = (
            count_status(&at_kill, "RUNNING"),
            count_status(&at_kill, "WAITING"),
            count_status(&at_kill, "COMPLETED"),
        );
        let fault = Instant::now();
        stack.signal_worker(0, "KILL");
        stack.signal_worker(1, "KILL");
        for i in 0..2 {
            assert!(
                stack.wait_worker_exit(i, Duration::from_secs(10)).await.is_some(),
                "worker {i} still runs 10 s after SIGKILL"
            );
        }
        // With both workers dead, nothing can change who holds a run: these are the runs
        // their leases held when they died, which only a takeover can finish.
        let orphaned: Vec<String> = held_by(&stack, &["e2e-worker-0", "e2e-worker-1"], false)
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert!(
            !orphaned.is_empty(),
            "premise: no run was held by a worker's lease when both were killed \
             ({running} RUNNING, {waiting} WAITING, {done} COMPLETED by the API)"
        );
        let next = stack.workers();
        stack.start_worker(next).await;
        let runs = settle(&stack, &ids, SETTLE_WITHIN).await;
        let took = fault.elapsed();
        let t = tally(&runs);
        let (calls, repeated) = external_calls(&runs, &slow);
        let took_over = |r: &Value| {
            r["logs"].as_array().is_some_and(|logs| {
                logs.iter().any(|l| {
                    l["message"].as_str().is_some_and(|m| {
                        m.contains("stopped holding it")
                            && (m.contains("after e2e-worker-0 ") || m.contains("after e2e-worker-1 "))
                    })
                })
            })
        };
        let taken_over = runs.iter().filter(|r| took_over(r)).count();
        let reaped: usize = std::fs::read_to_string(stack.dir.join("runtime-service.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split("lease reaper queued ").nth(1))
            .filter_map(|rest| rest.split_whitespace().next()?.parse::<usize>().ok())
            .sum();
        println!(
            "kill -9: {} runs held by the killed workers' leases; {taken_over} runs taken over from a dead worker's lease ({reaped} jobs queued by the lease reaper)",
            orphaned.len()
        );
        println!(
            "kill -9: killed 2 workers with {running} runs RUNNING, {waiting} WAITING, {done} COMPLETED; \
             {}/{} runs completed, {} failed, {} completed steps re-run ({} completed steps), \
             {} attempts re-run after being cut off, {calls} external calls ({repeated} repeated), \
             all settled {:.1} s after the kill",
            t.completed,
            t.runs,
            t.failed,
            t.completed_steps_rerun,
            t.completed_steps,
            t.extra_attempts,
            took.as_secs_f64()
        );
        // Every run the dead workers held was taken over: counted on the run, and said in
        // its log, naming the dead worker (its job redelivered by RabbitMQ, or queued by the
        // lease reaper once the lease expired: either may come first, so only printed).
        let counted = takeovers(&stack, &orphaned);
        for id in &orphaned {
            assert!(
                counted.get(id).copied().unwrap_or(0) >= 1,
                "run {id}, held by a killed worker, shows no takeover ({counted:?})"
            );
            let run = runs
                .iter()
                .find(|r| r["id"] == id.as_str())
                .expect("an orphaned run is one of the scenario's");
            assert!(
                took_over(run),
                "run {id}: no log of its takeover from a killed worker: {}",
                run["logs"]
            );
        }
        assert_survived("kill -9", &t, &stack);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_triggered_while_rabbitmq_is_down_complete_when_it_returns() {
    bounded("broker down", async {
        let (_pg, db, mut mq) = private_servers().await;
        let stack = fault_stack(2, 8, &db, &mq).await;
        create(&stack, "chain", short_chain()).await;
        tokio::task::block_in_place(|| mq.stop());
        let t0 = Instant::now();
        let mut ids = Vec::new();
        for n in 0..20 {
            ids.push(trigger(&stack, "wf_chain", n).await);
        }
        let triggering = t0.elapsed();
        let runs = snapshot(&stack, &ids).await;
        let pending = count_status(&runs, "PENDING");
        let t1 = Instant::now();
        tokio::task::block_in_place(|| mq.start_again());
        let broker_up = t1.elapsed();
        let runs = settle(&stack, &ids, SETTLE_WITHIN).await;
        let t = tally(&runs);
        println!(
            "broker down: 20/20 triggers answered 201 in {:.1} s with RabbitMQ stopped ({pending} still PENDING \
             while it was down); RabbitMQ back in {:.1} s; {}/{} runs completed, {} failed, {} completed steps re-run, \
             all completed {:.1} s after RabbitMQ was back",
            triggering.as_secs_f64(),
            broker_up.as_secs_f64(),
            t.completed,
            t.runs,
            t.failed,
            t.completed_steps_rerun,
            (t1.elapsed() - broker_up).as_secs_f64()
        );
        assert_eq!(pending, 20, "nothing can run while the broker is down");
        assert_survived("broker down", &t, &stack);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restart_under_light_load() {
    bounded("PostgreSQL restart", async {
        let (mut pg, db, mq) = private_servers().await;
        let stack = Arc::new(fault_stack(2, 8, &db, &mq).await);
        create(&stack, "chain", short_chain()).await;

        // Light load: a trigger every 200 ms until told to stop.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load = {
            let (stack, stop) = (stack.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut accepted, mut refused, mut other) = (Vec::new(), 0usize, Vec::new());
                let (mut n, mut slowest) = (0, Duration::ZERO);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    n += 1;
                    let sent = Instant::now();
                    let answer = stack
                        .try_call(
                            "POST",
                            "/workflows/wf_chain/trigger",
                            Some(json!({"variables": {"n": n}})),
                        )
                        .await;
                    slowest = slowest.max(sent.elapsed());
                    match answer {
                        Ok((201, body)) => {
                            accepted.push(body["data"]["id"].as_str().unwrap().to_string())
                        }
                        Ok((503, _)) => refused += 1,
                        Ok((status, body)) => other.push(format!("{status} {body}")),
                        Err(e) => other.push(e),
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                (accepted, refused, other, slowest)
            })
        };
        tokio::time::sleep(Duration::from_secs(3)).await;
        // Down for 2 s, then back; how long until the API answers again?
        let down = Instant::now();
        tokio::task::block_in_place(|| pg.stop());
        tokio::time::sleep(Duration::from_secs(2)).await;
        tokio::task::block_in_place(|| pg.start_again());
        let back = Instant::now();
        let answered = loop {
            if let Ok((200, _)) = stack.try_call("GET", "/workflows", None).await {
                break back.elapsed();
            }
            assert!(
                back.elapsed() < Duration::from_secs(30),
                "the API did not answer within 30 s after PostgreSQL was back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let outage = down.elapsed();
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (ids, refused, other, slowest) = load.await.expect("load");
        let runs = settle(&stack, &ids, SETTLE_WITHIN).await;
        let t = tally(&runs);
        println!(
            "PostgreSQL restart: down 2 s; GET /workflows answered 200 again {:.2} s after PostgreSQL was back \
             ({:.1} s after it stopped); triggers: {} answered 201, {refused} answered 503, {} other, slowest answer {:.2} s; \
             {}/{} runs answered 201 completed, {} failed, {} completed steps re-run, {} attempts re-run",
            answered.as_secs_f64(),
            outage.as_secs_f64(),
            ids.len(),
            other.len(),
            slowest.as_secs_f64(),
            t.completed,
            t.runs,
            t.failed,
            t.completed_steps_rerun,
            t.extra_attempts
        );
        assert!(
            other.is_empty(),
            "a trigger is answered 201 or 503: {other:?}"
        );
        assert!(!ids.is_empty());
        assert_survived("PostgreSQL restart", &t, &stack);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_a_worker_mid_run() {
    bounded("SIGTERM", async {
        let (_pg, db, mq) = private_servers().await;
        let mut stack = fault_stack(2, 8, &db, &mq).await;
        let slow = slow_endpoint(Duration::from_millis(1000)).await;
        create(&stack, "chain", long_chain(&slow.url)).await;
        let mut ids = Vec::new();
        for n in 0..16 {
            ids.push(trigger(&stack, "wf_chain", n).await);
        }
        // Premise: worker 0 holds the lease of a run whose step is RUNNING (a slow call in
        // flight) when the signal goes; polled from the database until it does.
        let deadline = Instant::now() + Duration::from_secs(30);
        let in_flight = loop {
            let held = held_by(&stack, &["e2e-worker-0"], true);
            if !held.is_empty() {
                break held;
            }
            assert!(
                Instant::now() < deadline,
                "premise: worker 0 never held a run mid-step within 30 s:\n{}",
                stack.log_tail("executor-worker-0")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let running = count_status(&snapshot(&stack, &ids).await, "RUNNING");
        let fault = Instant::now();
        stack.signal_worker(0, "TERM");
        // It finishes what it holds within its grace period, hands back the rest and exits:
        // the bound is the grace plus a margin for the handback and the exit (its calls take
        // 1 s, so it exits in about that; a worker that only stops at its own last resort,
        // grace + 5 s, fails).
        let within = Duration::from_secs(SHUTDOWN_GRACE_SECONDS + 4);
        let status = stack.wait_worker_exit(0, within).await.unwrap_or_else(|| {
            panic!(
                "worker 0 still runs {within:?} after SIGTERM (SHUTDOWN_GRACE_SECONDS={SHUTDOWN_GRACE_SECONDS}):\n{}",
                stack.log_tail("executor-worker-0")
            )
        });
        let exited = fault.elapsed();
        let runs = settle(&stack, &ids, SETTLE_WITHIN).await;
        let t = tally(&runs);
        let (calls, repeated) = external_calls(&runs, &slow);
        println!(
            "SIGTERM: {} runs held mid-step by worker 0 and {running} runs RUNNING at SIGTERM; the worker exited ({status}) after {:.1} s; \
             {}/{} runs completed, {} failed, {} completed steps re-run, {} attempts re-run, \
             {calls} external calls ({repeated} repeated); all settled {:.1} s after SIGTERM",
            in_flight.len(),
            exited.as_secs_f64(),
            t.completed,
            t.runs,
            t.failed,
            t.completed_steps_rerun,
            t.extra_attempts,
            fault.elapsed().as_secs_f64()
        );
        assert_eq!(status.code(), Some(0), "a SIGTERMed worker exits cleanly: {status}");
        // The runs it held mid-step when the signal went completed (once each: below).
        for held in &in_flight {
            let run = runs
                .iter()
                .find(|r| r["id"] == held.id.as_str())
                .expect("a held run is one of the scenario's");
            assert_eq!(run["status"], "COMPLETED", "run {} held at SIGTERM: {run}", held.id);
        }
        assert_survived("SIGTERM", &t, &stack);
    })
    .await;
}
