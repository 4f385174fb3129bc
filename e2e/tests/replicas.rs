//! Several runtime-service processes over one database and one job queue (the real
//! binaries, `StackOptions::runtimes`): identical `Idempotency-Key` triggers racing at both,
//! the lease reaper and the outbox relay of three replicas at once, and the relay racing the
//! request path for the same outbox rows. docs/RELIABILITY.md, "How it is built".

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use thygon_e2e::standin::StandIn;
use thygon_e2e::{Stack, StackOptions};

fn options(workers: usize, runtimes: usize, env: &[(&str, &str)]) -> StackOptions {
    StackOptions {
        workers,
        runtimes,
        worker_concurrency: 8,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..StackOptions::default()
    }
}

fn db(stack: &Stack) -> PgConnection {
    PgConnection::establish(&stack.database_url).expect("connect to the stack's database")
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn count(conn: &mut PgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql)
        .get_result::<Count>(conn)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .n
}

/// Wait until the job queue is empty (the duplicates a claim refused were acked too).
async fn queue_drained(stack: &Stack, what: &str) {
    until(Duration::from_secs(30), what, || async {
        let depth = queue_depth(stack).await;
        if depth == 0 {
            Ok(())
        } else {
            Err(format!("{depth} left"))
        }
    })
    .await;
}

/// Ready messages in the stack's job queue.
async fn queue_depth(stack: &Stack) -> u32 {
    use lapin::options::QueueDeclareOptions;
    let conn = shared_models::queue::connect(&stack.broker, "e2e-replicas-probe")
        .await
        .expect("connect to the broker");
    let channel = conn.create_channel().await.expect("channel");
    let queue = channel
        .queue_declare(
            shared_models::queue::QueueNames::new(&stack.prefix)
                .jobs
                .as_str()
                .into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("the job queue");
    let depth = queue.message_count();
    let _ = conn.close(0, "done".into()).await;
    depth
}

/// Poll `check` (every 50 ms) until it holds; the test fails after `within`.
async fn until<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(()) => return,
            Err(state) if Instant::now() > deadline => {
                panic!("{what}: not within {within:?}: {state}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// POST to runtime-service `i` directly, with the stack's org key.
async fn post(
    stack: &Stack,
    i: usize,
    path: &str,
    body: &Value,
    key: Option<&str>,
) -> (u16, Value) {
    let mut req = stack
        .client
        .post(format!("{}{path}", stack.runtime_url(i)))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    let text = res.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text:?}"));
    (status, body)
}

/// Holds `LOCK TABLE outbox IN EXCLUSIVE MODE` in an open transaction until dropped: a
/// trigger's transaction then waits at its outbox insert, after inserting its run, so every
/// other trigger with the same key reaches its own run insert before the first commits.
struct OutboxLock {
    release: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OutboxLock {
    fn take(url: &str) -> OutboxLock {
        let (locked_tx, locked_rx) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let url = url.to_string();
        let thread = std::thread::spawn(move || {
            let mut conn = PgConnection::establish(&url).expect("connect");
            conn.transaction::<_, diesel::result::Error, _>(|conn| {
                diesel::sql_query("LOCK TABLE outbox IN EXCLUSIVE MODE").execute(conn)?;
                locked_tx.send(()).expect("tell");
                let _ = release_rx.recv();
                Ok(())
            })
            .expect("lock transaction");
        });
        locked_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("outbox locked");
        OutboxLock {
            release: Some(release),
            thread: Some(thread),
        }
    }
}

impl Drop for OutboxLock {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Backends of the stack's database waiting on a lock in a statement that holds `part`.
fn waiting_in(conn: &mut PgConnection, part: &str) -> i64 {
    diesel::sql_query(
        "SELECT count(*) AS n FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'
           AND query ILIKE $1",
    )
    .bind::<Text, _>(format!("%{part}%"))
    .get_result::<Count>(conn)
    .expect("pg_stat_activity")
    .n
}

/// Fire `bodies` at once, alternating between runtime 0 and 1, all with `key`, while the
/// outbox is locked; release the lock only once every loser is inside its run insert (the
/// race branch of `create_run`), and the winner waits at its outbox insert.
async fn race(stack: &Stack, wf: &str, key: &str, bodies: &[Value]) -> Vec<(u16, Value)> {
    let lock = OutboxLock::take(&stack.database_url);
    let path = format!("/workflows/{wf}/trigger");
    let requests = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| post(stack, i % 2, &path, body, Some(key)));
    let all = futures_util::future::join_all(requests);
    let mut conn = db(stack);
    let n = bodies.len() as i64;
    let watch = async {
        until(
            Duration::from_secs(60),
            "every trigger at its insert",
            || {
                let runs = waiting_in(&mut conn, "INSERT INTO runs");
                let outbox = waiting_in(&mut conn, "INSERT INTO \"outbox\"");
                std::future::ready(if runs == n - 1 && outbox == 1 {
                    Ok(())
                } else {
                    Err(format!(
                        "{runs} waiting in the run insert, {outbox} in the outbox's"
                    ))
                })
            },
        )
        .await;
        drop(lock);
    };
    let (answers, ()) = tokio::join!(all, watch);
    answers
}

#[tokio::test]
async fn identical_idempotency_keys_at_two_replicas_at_once_make_one_run_and_one_job() {
    let stack = Stack::start_opts(options(0, 2, &[("DB_POOL_SIZE", "16")])).await;
    stack
        .create_workflow(
            "raced",
            json!({"steps": [{"name": "only", "type": "transform", "value": 1}]}),
        )
        .await;

    // The same key and body, 12 times at once over two replicas.
    let body = json!({"variables": {"ticket": "T-1"}});
    let answers = race(&stack, "wf_raced", "key-same", &vec![body; 12]).await;
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        (
            statuses.iter().filter(|s| **s == 201).count(),
            statuses.iter().filter(|s| **s == 200).count()
        ),
        (1, 11),
        "{answers:?}"
    );
    let ids: HashSet<&str> = answers
        .iter()
        .map(|(_, b)| b["data"]["id"].as_str().expect("a run id"))
        .collect();
    assert_eq!(ids.len(), 1, "every answer names the same run: {ids:?}");
    let run = ids.into_iter().next().expect("id").to_string();
    let mut conn = db(&stack);
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) AS n FROM runs WHERE idempotency_key = 'key-same'"
        ),
        1
    );
    let jobs = format!("SELECT count(*) AS n FROM outbox WHERE run_id = '{run}'");
    assert_eq!(count(&mut conn, &jobs), 1, "one job for the run");

    // The same key with two bodies at once: one body wins (201, then 200s); the other's
    // requests are the documented 409, and still one run exists.
    let (a, b) = (
        json!({"variables": {"n": 1}}),
        json!({"variables": {"n": 2}}),
    );
    let bodies: Vec<Value> = (0..10)
        .map(|i| if i % 2 == 0 { a.clone() } else { b.clone() })
        .collect();
    let answers = race(&stack, "wf_raced", "key-split", &bodies).await;
    let winner = answers
        .iter()
        .zip(&bodies)
        .find(|((s, _), _)| *s == 201)
        .map(|(_, body)| body.clone())
        .unwrap_or_else(|| panic!("no 201: {answers:?}"));
    let run_ids: HashSet<&str> = answers
        .iter()
        .filter(|(s, _)| *s < 300)
        .map(|(_, b)| b["data"]["id"].as_str().expect("id"))
        .collect();
    assert_eq!(run_ids.len(), 1, "{answers:?}");
    for ((status, answer), body) in answers.iter().zip(&bodies) {
        if *body == winner {
            assert!(*status == 201 || *status == 200, "{status} {answer}");
        } else {
            assert_eq!(*status, 409, "{answer}");
            assert_eq!(answer["error"]["code"], "CONFLICT", "{answer}");
        }
    }
    assert_eq!(
        answers.iter().filter(|(s, _)| *s == 201).count(),
        1,
        "{answers:?}"
    );
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) AS n FROM runs WHERE idempotency_key = 'key-split'"
        ),
        1
    );
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) AS n FROM outbox o JOIN runs r ON r.id = o.run_id
             WHERE r.idempotency_key = 'key-split'"
        ),
        1
    );
}

/// Each run's steps: every COMPLETED step reached COMPLETED once.
fn assert_steps_completed_once(run: &Value) {
    assert_eq!(run["status"], "COMPLETED", "{run}");
    let transitions = run["transitions"].as_array().cloned().unwrap_or_default();
    let steps = run["steps"].as_array().cloned().unwrap_or_default();
    assert!(!steps.is_empty(), "{run}");
    for step in steps {
        assert_eq!(step["status"], "COMPLETED", "{run}");
        let completions = transitions
            .iter()
            .filter(|t| t["step"] == step["name"] && t["to"] == "COMPLETED")
            .count();
        assert_eq!(completions, 1, "step {} of {}", step["name"], run["id"]);
    }
    // The run itself started once and ended once.
    for to in ["RUNNING", "COMPLETED"] {
        let n = transitions
            .iter()
            .filter(|t| t["step"].is_null() && t["to"] == to)
            .count();
        assert_eq!(
            n, 1,
            "run {} went to {to} {n} times: {transitions:?}",
            run["id"]
        );
    }
}

#[tokio::test]
async fn three_replicas_reap_each_expired_lease_once_and_relay_each_job_once() {
    let endpoint = StandIn::gated("endpoint").await;
    let mut stack = Stack::start_opts(options(
        1,
        3,
        &[
            ("LEASE_SECONDS", "2"),
            ("REAPER_GRACE_SECONDS", "0"),
            ("SCHEDULER_INTERVAL_SECONDS", "0.05"),
            ("OUTBOX_RELAY_INTERVAL_SECONDS", "0.02"),
            ("EGRESS_ALLOW", "127.0.0.1"),
        ],
    ))
    .await;
    let url = format!("http://{}/call", endpoint.addr);
    stack
        .create_workflow(
            "held",
            json!({"steps": [
                {"name": "before", "type": "transform", "value": 1},
                {"name": "call", "type": "http", "request": {"url": url}},
                {"name": "after", "type": "transform", "value": 2}
            ]}),
        )
        .await;
    const N: usize = 6;
    let mut runs = Vec::new();
    for i in 0..N {
        runs.push(stack.trigger("wf_held", json!({ "i": i })).await);
    }
    // Premise: every run is RUNNING, its worker inside the call that hangs.
    until(Duration::from_secs(60), "every run in its call", || {
        let got = endpoint.received().len();
        std::future::ready(if got >= N {
            Ok(())
        } else {
            Err(format!("{got} calls"))
        })
    })
    .await;
    for run in &runs {
        let (status, body) = stack
            .call("GET", &format!("/workflows/runs/{run}"), None)
            .await;
        assert_eq!(
            (status, body["data"]["status"].as_str()),
            (200, Some("RUNNING")),
            "{body}"
        );
    }
    let killed = stack.kill_worker(0, "KILL").await;
    assert!(!killed.success(), "the worker was killed: {killed}");

    // The three reapers queue one job per expired lease; the three relays publish each once.
    let mut conn = db(&stack);
    until(Duration::from_secs(60), "every lease reaped and relayed", || {
        let reaped = count(
            &mut conn,
            "SELECT count(*) AS n FROM outbox WHERE dedupe_key LIKE 'reap:%' AND sent_at IS NOT NULL",
        );
        std::future::ready(if reaped >= N as i64 { Ok(()) } else { Err(format!("{reaped} sent")) })
    })
    .await;
    // The dead worker's N unacked jobs came back to the queue, and the N reaped ones joined.
    let broker_depth = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let depth = queue_depth(&stack).await;
            if depth >= 2 * N as u32 || Instant::now() > deadline {
                return depth;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let depth = broker_depth.await;
    #[derive(QueryableByName)]
    struct PerRun {
        #[diesel(sql_type = Text)]
        run_id: String,
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let per_run: HashMap<String, i64> = diesel::sql_query(
        "SELECT run_id, count(*) AS n FROM outbox WHERE dedupe_key LIKE 'reap:%' GROUP BY run_id",
    )
    .load::<PerRun>(&mut conn)
    .expect("reap rows")
    .into_iter()
    .map(|r| (r.run_id, r.n))
    .collect();
    let expected: HashMap<String, i64> = runs.iter().map(|r| (r.clone(), 1)).collect();
    assert_eq!(per_run, expected, "one reaper job per expired lease");
    assert_eq!(
        depth,
        2 * N as u32,
        "jobs in the queue: each run's first job back from the dead worker, and its one reaped job"
    );
    let logs: usize = (0..3)
        .map(|i| {
            let name = if i == 0 {
                "runtime-service".to_string()
            } else {
                format!("runtime-service-{i}")
            };
            stack.log_tail(&name).matches("lease reaper queued").count()
        })
        .sum();
    assert!(logs >= 1, "no replica logged a takeover");

    // A new worker takes each run over once; the endpoint answers now.
    endpoint.open();
    stack.start_worker(1).await;
    for run in &runs {
        let done = stack.wait_for_run(run, Duration::from_secs(60)).await;
        assert_steps_completed_once(&done);
    }
    // Calls per idempotency key: the one cut off, and the one that completed.
    let mut calls: HashMap<String, usize> = HashMap::new();
    for r in endpoint.received() {
        *calls
            .entry(
                r.headers
                    .get("idempotency-key")
                    .cloned()
                    .unwrap_or_default(),
            )
            .or_default() += 1;
    }
    assert_eq!(calls.len(), N, "{calls:?}");
    assert!(calls.values().all(|n| *n == 2), "{calls:?}");
    queue_drained(&stack, "the duplicate jobs acked").await;
}

#[tokio::test]
async fn the_relay_racing_the_request_path_publishes_twice_and_the_run_executes_once() {
    // No grace: the relays of both replicas go for a row as soon as its trigger commits, while
    // the request path publishes it too.
    let mut stack = Stack::start_opts(options(
        0,
        2,
        &[
            ("OUTBOX_RELAY_GRACE_SECONDS", "0"),
            ("OUTBOX_RELAY_INTERVAL_SECONDS", "0.005"),
            ("OUTBOX_RETENTION_SECONDS", "0"),
            ("SCHEDULER_INTERVAL_SECONDS", "0.05"),
        ],
    ))
    .await;
    stack
        .create_workflow(
            "relayed",
            json!({"steps": [
                {"name": "a", "type": "transform", "value": 1},
                {"name": "b", "type": "transform", "value": 2}
            ]}),
        )
        .await;
    let mut conn = db(&stack);
    let mut runs: Vec<String> = Vec::new();
    let mut depth = 0;
    // Premise: some row was published by both (more messages than runs). Each round
    // triggers 40 runs at once over both replicas.
    let empty = json!({});
    for _round in 0..5 {
        let requests =
            (0..40).map(|i| post(&stack, i % 2, "/workflows/wf_relayed/trigger", &empty, None));
        for (status, body) in futures_util::future::join_all(requests).await {
            assert_eq!(status, 201, "{body}");
            runs.push(body["data"]["id"].as_str().expect("id").to_string());
        }
        until(Duration::from_secs(30), "every outbox row sent", || {
            let unsent = count(
                &mut conn,
                "SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL",
            );
            std::future::ready(if unsent == 0 {
                Ok(())
            } else {
                Err(format!("{unsent} unsent"))
            })
        })
        .await;
        depth = queue_depth(&stack).await;
        assert!(
            depth >= runs.len() as u32,
            "{depth} jobs for {} runs",
            runs.len()
        );
        if depth > runs.len() as u32 {
            break;
        }
    }
    assert!(
        depth > runs.len() as u32,
        "no row was published twice in 5 rounds ({depth} jobs, {} runs)",
        runs.len()
    );
    println!("{depth} jobs for {} runs", runs.len());

    // Two workers, so duplicates of a run can reach both.
    stack.start_worker(0).await;
    stack.start_worker(1).await;
    for run in &runs {
        let done = stack.wait_for_run(run, Duration::from_secs(60)).await;
        assert_steps_completed_once(&done);
        for step in done["steps"].as_array().expect("steps") {
            assert_eq!(step["attempt"], 1, "{done}");
        }
    }
    queue_drained(&stack, "every duplicate acked").await;
    // The sent rows are pruned (retention 0): deleted, none left behind, none unsent.
    until(Duration::from_secs(30), "the outbox pruned", || {
        let left = count(&mut conn, "SELECT count(*) AS n FROM outbox");
        std::future::ready(if left == 0 {
            Ok(())
        } else {
            Err(format!("{left} rows"))
        })
    })
    .await;
}
