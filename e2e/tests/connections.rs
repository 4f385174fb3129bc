//! The connection budget (issue "Operate at scale"): every process holds at most its
//! `DB_POOL_SIZE` connections, whatever its load and after an outage; 20 workers of
//! `make run`'s kind fit in PostgreSQL's default `max_connections=100`, directly and through
//! PgBouncer in transaction mode; a process never migrates: it refuses a schema older than it
//! needs, or waits `SCHEMA_WAIT_SECONDS` for the migrate step. Private PostgreSQL clusters (and a PgBouncer) that the
//! tests start; the machine's RabbitMQ.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thygon_e2e::private::{PrivatePgBouncer, PrivatePostgres};
use thygon_e2e::{binary, free_port, Stack, StackOptions};

/// One scenario at a time: each starts many processes on a 2-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The pool sizes of the three kinds of process (their defaults: the `DEFAULT_DB_POOL_SIZE`
/// of each crate's config), which docs/DEPLOY.md's budget adds up.
const WORKFLOW_POOL: i64 = 4;
const RUNTIME_POOL: i64 = 8;
const WORKER_POOL: i64 = 4;
/// `make run`'s workers: the default WORKER_CONCURRENCY.
const MAKE_RUN_CONCURRENCY: usize = 64;

/// What a process logs when PostgreSQL or its pool refuses it a connection.
const CONNECTION_ERRORS: [&str; 4] = [
    "too many clients",
    "remaining connection slots",
    "timed out waiting for connection",
    "no more connections allowed",
];

fn database_name(url: &str) -> String {
    url.rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string()
}

fn total(connections: &[(String, i64)]) -> i64 {
    connections.iter().map(|(_, n)| n).sum()
}

/// Samples the connections to `database` every 100 ms until stopped; the peak.
struct Sampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<(i64, Vec<(String, i64)>)>,
}

impl Sampler {
    fn start(pg: Arc<PrivatePostgres>, database: String) -> Sampler {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handle = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut peak = (0, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let now = pg.connections(&database);
                    if total(&now) > peak.0 {
                        peak = (total(&now), now);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                peak
            })
        };
        Sampler { stop, handle }
    }

    fn peak(self) -> (i64, Vec<(String, i64)>) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle.join().expect("sampler")
    }
}

fn chain() -> Value {
    json!({"steps": [
        {"name": "a", "type": "transform", "value": {"n": "{{ variables.n }}"}},
        {"name": "pause", "type": "delay", "seconds": 0.2},
        {"name": "b", "type": "transform", "value": "{{ steps.a.output.n }}"},
        {"name": "c", "type": "transform", "value": "{{ steps.b.output }}"}
    ]})
}

/// Trigger `n` runs of `workflow` from 8 concurrent callers; every trigger must be a 201.
async fn trigger_many(stack: &Arc<Stack>, workflow: &str, n: usize) -> Vec<String> {
    let mut tasks = Vec::new();
    for caller in 0..8 {
        let (stack, workflow) = (stack.clone(), workflow.to_string());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in (caller..n).step_by(8) {
                ids.push(stack.trigger(&workflow, json!({ "n": i })).await);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.expect("trigger task"));
    }
    ids
}

/// The runs of the database by status, read straight from PostgreSQL.
fn runs_by_status(pg: &PrivatePostgres, database: &str) -> HashMap<String, i64> {
    pg.psql(database, "SELECT status, count(*) FROM runs GROUP BY 1")
        .lines()
        .filter_map(|l| {
            let (s, n) = l.split_once('|')?;
            Some((s.to_string(), n.parse().ok()?))
        })
        .collect()
}

/// Wait until `n` runs have ended; the counts by status.
async fn settle(
    pg: &PrivatePostgres,
    database: &str,
    n: i64,
    within: Duration,
) -> HashMap<String, i64> {
    let deadline = Instant::now() + within;
    loop {
        let counts = tokio::task::block_in_place(|| runs_by_status(pg, database));
        let ended: i64 = ["COMPLETED", "FAILED", "CANCELLED"]
            .iter()
            .filter_map(|s| counts.get(*s))
            .sum();
        if ended >= n || Instant::now() > deadline {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every line of every process's log that reports a refused connection.
fn connection_errors(stack: &Stack) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&stack.dir).expect("stack dir").flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for line in text.lines() {
                let lower = line.to_ascii_lowercase();
                if CONNECTION_ERRORS.iter().any(|e| lower.contains(e)) {
                    found.push(format!("{}: {line}", path.display()));
                }
            }
        }
    }
    found
}

/// A private cluster with PostgreSQL's default `max_connections=100`, and a migrated
/// database in it (its URL).
async fn private_database() -> (PrivatePostgres, String) {
    tokio::task::spawn_blocking(|| {
        let pg = PrivatePostgres::start_with_max_connections(100);
        let url = pg.create_database();
        (pg, url)
    })
    .await
    .unwrap()
}

async fn start_stack(workers: usize, database_url: &str, env: &[(&str, &str)]) -> Arc<Stack> {
    Arc::new(
        Stack::start_opts(StackOptions {
            workers,
            worker_concurrency: MAKE_RUN_CONCURRENCY,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            database_url: Some(database_url.to_string()),
            ..StackOptions::default()
        })
        .await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_process_never_migrates_it_refuses_an_older_schema_or_waits_for_the_migrate_step() {
    let _serial = SERIAL.lock().await;
    let db = thygon_testkit::TestDb::create_empty();
    let port = free_port();
    let service = |schema_wait: &str| {
        let mut cmd = Command::new(binary("workflow-service", false));
        cmd.env("DATABASE_URL", &db.url)
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("ADMIN_API_KEY", thygon_e2e::ADMIN_KEY)
            .env("RUST_LOG", "info")
            .env("LOG_FORMAT", "text")
            .env("SCHEMA_WAIT_SECONDS", schema_wait)
            .stdin(Stdio::null());
        cmd
    };

    // By default a process refuses a schema older than it needs at once, saying what to run.
    let refused = service("0").output().expect("start workflow-service");
    let said = String::from_utf8_lossy(&refused.stderr).to_string();
    assert_eq!(refused.status.code(), Some(1), "{said}");
    assert!(
        said.contains("older than this binary") && said.contains("workflow-service migrate"),
        "the refusal says what is wrong and what to run:\n{said}"
    );

    // With SCHEMA_WAIT_SECONDS it waits for a migrate step running beside it, serving nothing.
    let dir = std::env::temp_dir().join(format!(
        "thygon-schema-wait-{}",
        thygon_testkit::unique_token()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let log = std::fs::File::create(dir.join("workflow-service.log")).unwrap();
    let mut service = service("60")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start workflow-service");
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    let client = reqwest::Client::new();

    // Until the service says it waits for the migrations (polled from its log), then: it
    // does not serve.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(dir.join("workflow-service.log"))
        .unwrap_or_default()
        .contains("waiting for the migrate step")
    {
        assert!(
            Instant::now() < deadline,
            "workflow-service never said it waits for the migrations:\n{}",
            std::fs::read_to_string(dir.join("workflow-service.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        client.get(&readyz).send().await.is_err(),
        "workflow-service must not serve before its schema exists"
    );
    let tables: i64 = {
        use diesel::prelude::*;
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = db.pool.get().unwrap();
        diesel::sql_query(
            "SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = 'public'",
        )
        .get_result::<N>(&mut conn)
        .unwrap()
        .n
    };
    assert_eq!(tables, 0, "a service changes no schema");
    let waiting = std::fs::read_to_string(dir.join("workflow-service.log")).unwrap();
    assert!(
        waiting.contains("waiting for the migrate step") && waiting.contains("not applied"),
        "the service says what it waits for:\n{waiting}"
    );

    // `workflow-service migrate` connects through MIGRATION_DATABASE_URL only: DATABASE_URL
    // points nowhere.
    let migrate = Command::new(binary("workflow-service", false))
        .arg("migrate")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/nowhere")
        .env("MIGRATION_DATABASE_URL", &db.url)
        .env("ADMIN_API_KEY", thygon_e2e::ADMIN_KEY)
        .output()
        .expect("workflow-service migrate");
    assert!(
        migrate.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&migrate.stderr)
    );

    let back = Instant::now();
    loop {
        if let Ok(r) = client.get(&readyz).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "workflow-service was not ready within 15 s of the migrations:\n{}",
            std::fs::read_to_string(dir.join("workflow-service.log")).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "schema wait: not serving while the schema was missing; ready {:.1} s after `workflow-service migrate`",
        back.elapsed().as_secs_f64()
    );
    let _ = service.kill();
    let _ = service.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_postgres_outage_the_services_answer_and_hold_no_more_than_their_budget() {
    let _serial = SERIAL.lock().await;
    let (mut pg, url) = private_database().await;
    let database = database_name(&url);
    // `make run`'s kind: two workers at the default concurrency, the default pools.
    let stack = start_stack(2, &url, &[]).await;
    let budget = 2 * WORKER_POOL + RUNTIME_POOL + WORKFLOW_POOL;
    stack.create_workflow("chain", chain()).await;
    let ids = trigger_many(&stack, "wf_chain", 300).await;

    // Runs in flight; PostgreSQL goes away for 10 s.
    let pg_shared = {
        tokio::time::sleep(Duration::from_millis(500)).await;
        tokio::task::block_in_place(|| pg.stop());
        tokio::time::sleep(Duration::from_secs(10)).await;
        tokio::task::block_in_place(|| pg.start_again());
        Arc::new(pg)
    };
    let back = Instant::now();
    let sampler = Sampler::start(pg_shared.clone(), database.clone());

    // Every service answers again within seconds.
    let mut answered = Vec::new();
    for (name, path) in [
        ("workflow-service", "/workflows".to_string()),
        ("runtime-service", format!("/workflows/runs/{}", ids[0])),
    ] {
        loop {
            if let Ok((200, _)) = stack.try_call("GET", &path, None).await {
                answered.push((name, back.elapsed()));
                break;
            }
            assert!(
                back.elapsed() < Duration::from_secs(20),
                "{name} did not answer GET {path} within 20 s after PostgreSQL was back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let counts = settle(
        &pg_shared,
        &database,
        ids.len() as i64,
        Duration::from_secs(120),
    )
    .await;
    // And still answers once the backlog is done, with no connection held past the budget.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, _) = stack.call("GET", "/workflows", None).await;
    let (peak, at_peak) = sampler.peak();
    println!(
        "PostgreSQL outage (10 s) with {} runs in flight: answering again after {}; runs {counts:?}; \
         peak connections after the restart {peak} {at_peak:?} (budget {budget})",
        ids.len(),
        answered
            .iter()
            .map(|(n, t)| format!("{n} {:.2} s", t.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert_eq!(status, 200);
    assert_eq!(
        counts.get("COMPLETED").copied().unwrap_or(0),
        ids.len() as i64,
        "every run completes after the outage: {counts:?}"
    );
    assert!(
        peak <= budget,
        "the processes held {peak} connections ({at_peak:?}), over the budget of {budget}"
    );
}

/// 20 workers of `make run`'s kind and the two services on one PostgreSQL with
/// `max_connections=100`; `through_pgbouncer` puts a PgBouncer in transaction mode between.
async fn twenty_workers(through_pgbouncer: bool) {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (pg, url) = private_database().await;
    let database = database_name(&url);
    let pg = Arc::new(pg);
    let bouncer = through_pgbouncer.then(|| PrivatePgBouncer::start(&pg, 20));
    let (service_url, env): (String, Vec<(&str, String)>) = match &bouncer {
        // The documented setup: the services through PgBouncer without named prepared
        // statements, migrations straight to PostgreSQL (here: already applied).
        Some(b) => (
            b.url_for(&url),
            vec![
                ("DB_STATEMENT_CACHE", "false".to_string()),
                ("MIGRATION_DATABASE_URL", url.clone()),
            ],
        ),
        None => (url.clone(), Vec::new()),
    };
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let sampler = Sampler::start(pg.clone(), database.clone());
    let stack = start_stack(20, &service_url, &env).await;
    let up = started.elapsed();
    stack.create_workflow("chain", chain()).await;
    let load = Instant::now();
    let ids = trigger_many(&stack, "wf_chain", 1000).await;
    let counts = settle(&pg, &database, ids.len() as i64, Duration::from_secs(180)).await;
    let took = load.elapsed();
    let (peak, at_peak) = sampler.peak();
    let errors = connection_errors(&stack);
    println!(
        "20 workers {}: up in {:.1} s; {} runs in {:.1} s: {counts:?}; peak PostgreSQL connections {peak} {at_peak:?}; \
         {} connection errors in the logs",
        if through_pgbouncer { "through PgBouncer (transaction mode, 20 server connections)" } else { "direct" },
        up.as_secs_f64(),
        ids.len(),
        took.as_secs_f64(),
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "connection errors: {:#?}",
        &errors[..errors.len().min(10)]
    );
    assert_eq!(
        counts.get("COMPLETED").copied().unwrap_or(0),
        ids.len() as i64,
        "every run completes: {counts:?}"
    );
    let limit = if through_pgbouncer {
        20
    } else {
        20 * WORKER_POOL + RUNTIME_POOL + WORKFLOW_POOL
    };
    assert!(
        peak <= limit,
        "PostgreSQL saw {peak} connections ({at_peak:?}), over {limit}"
    );
    if let Some(b) = &bouncer {
        let log = b.log_tail(200);
        assert!(
            !log.contains("prepared statement") && !log.contains("ERROR"),
            "PgBouncer reported errors:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_workers_fit_in_max_connections_100() {
    twenty_workers(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_workers_fit_in_max_connections_100_through_pgbouncer() {
    twenty_workers(true).await;
}
