//! TLS to the broker and the database (docs/DEPLOY.md "TLS"), against servers of this test's own:
//! a private RabbitMQ node with a TLS listener next to its plain one, and a private
//! PostgreSQL cluster that accepts TCP over TLS only, both serving a certificate of a
//! throwaway CA (e2e/src/private/). One node and one cluster for the whole binary: a
//! single test, in steps.
//!
//! - Connection level (fast): amqps with `AMQP_TLS_CA_FILE`'s CA connects; without it, or
//!   with an unrelated CA, the broker's certificate is refused; an `amqps://` URL to the
//!   plain port fails instead of talking AMQP in clear. PostgreSQL likewise with
//!   `DATABASE_TLS_CA_FILE` (sslmode=verify-full), and a plain connection is refused.
//! - A whole stack (every binary) on amqps:// and verified PostgreSQL TLS runs a workflow to
//!   COMPLETED, and none of its logs shows either password.

use diesel::prelude::*;
use serde_json::json;
use shared_models::config::with_database_tls;
use shared_models::queue::{self, Broker};
use std::time::{Duration, Instant};
use thygon_e2e::private::{PrivatePostgres, PrivateRabbit, TestCerts};
use thygon_e2e::{Stack, StackOptions};

/// The broker user's password: no log line or error may show it.
const AMQP_PASSWORD: &str = "amqp-pw-4b1e9d";
/// In the database URL; the cluster trusts loopback, so libpq never even sends it.
const PG_PASSWORD: &str = "pg-pw-8c2f7a";
/// Each connection attempt must have its answer within this.
const ANSWER_WITHIN: Duration = Duration::from_secs(15);

async fn try_connect(broker: &Broker) -> Result<(), String> {
    let conn = tokio::time::timeout(ANSWER_WITHIN, queue::connect(broker, "thygon-tls-test"))
        .await
        .map_err(|_| format!("no answer within {ANSWER_WITHIN:?}"))?
        .map_err(|e| e.to_string())?;
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

/// The error of a connection that must fail; it must not show the password.
async fn refused(broker: &Broker, what: &str) -> String {
    let e = match try_connect(broker).await {
        Ok(()) => panic!("{what}: connected"),
        Err(e) => e,
    };
    assert!(!e.contains("no answer within"), "{what}: {e}");
    assert!(
        !e.contains(AMQP_PASSWORD),
        "{what}: the error shows the password: {e}"
    );
    e
}

/// Whether the session of `url` is TLS (`pg_stat_ssl`), or the connection error.
fn pg_session_is_tls(url: &str) -> Result<bool, String> {
    let mut conn = PgConnection::establish(url).map_err(|e| e.to_string())?;
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
        "(SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())",
    ))
    .get_result(&mut conn)
    .map_err(|e| e.to_string())
}

/// `workflow-service migrate` with `env` over the test's: whether it succeeded, and what it
/// logged (which must not show a password).
fn migrate_with(env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = std::process::Command::new(thygon_e2e::binary("workflow-service", false));
    cmd.arg("migrate").env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run workflow-service migrate");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for secret in [AMQP_PASSWORD, PG_PASSWORD] {
        assert!(!log.contains(secret), "the log shows a password:\n{log}");
    }
    (out.status.success(), log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_runs_over_amqps_and_verified_postgres_tls_and_nothing_unverified_connects() {
    let t0 = Instant::now();
    let certs = TestCerts::generate();
    let (pg, mq) = tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            let pg = s.spawn(|| PrivatePostgres::start_tls(&certs));
            let mq = s.spawn(|| {
                let mq = PrivateRabbit::start_tls(&certs);
                mq.add_user("thygon", AMQP_PASSWORD);
                mq
            });
            (pg.join().expect("PostgreSQL"), mq.join().expect("RabbitMQ"))
        })
    });
    let servers_up = t0.elapsed();
    let ca = certs.ca.display().to_string();
    let other_ca = certs.other_ca.display().to_string();
    let tls_port = mq.tls_port.expect("TLS listener");
    let amqps = format!("amqps://thygon:{AMQP_PASSWORD}@127.0.0.1:{tls_port}/%2f");

    // The broker, at the connection function.
    let trusted = Broker::from_settings(&amqps, Some(&ca)).expect("broker settings");
    try_connect(&trusted)
        .await
        .expect("amqps:// with AMQP_TLS_CA_FILE connects");
    let e = refused(&Broker::new(&amqps).unwrap(), "amqps:// without the CA").await;
    println!("without the CA: {e}");
    let untrusting = Broker::from_settings(&amqps, Some(&other_ca)).unwrap();
    refused(&untrusting, "amqps:// trusting an unrelated CA").await;
    let to_plain = format!("amqps://thygon:{AMQP_PASSWORD}@127.0.0.1:{}/%2f", mq.port);
    let e = refused(
        &Broker::from_settings(&to_plain, Some(&ca)).unwrap(),
        "amqps:// to the plain port",
    )
    .await;
    println!("amqps:// to the plain port: {e}");
    // The plain port itself works: the failure above is the TLS, not the node.
    let plain = format!("amqp://thygon:{AMQP_PASSWORD}@127.0.0.1:{}/%2f", mq.port);
    try_connect(&Broker::new(&plain).unwrap())
        .await
        .expect("amqp:// to the plain port");

    // The database, at libpq: verify-full against the CA, nothing else.
    let database_url = tokio::task::block_in_place(|| pg.create_database()).replacen(
        "://postgres@",
        &format!("://postgres:{PG_PASSWORD}@"),
        1,
    );
    let verified = with_database_tls(&database_url, Some(&ca)).expect("the TLS URL");
    assert!(verified.contains("sslmode=verify-full"), "{verified}");
    tokio::task::block_in_place(|| {
        assert_eq!(
            pg_session_is_tls(&verified),
            Ok(true),
            "verify-full with the CA"
        );
        let untrusting = with_database_tls(&database_url, Some(&other_ca)).unwrap();
        let e = pg_session_is_tls(&untrusting).expect_err("verify-full with an unrelated CA");
        assert!(e.contains("certificate verify failed"), "{e}");
        let e = pg_session_is_tls(&format!("{database_url}?sslmode=disable"))
            .expect_err("a plain connection");
        assert!(e.contains("no encryption"), "{e}");
    });
    // A process applies the CA files at start: `migrate` (MIGRATION_DATABASE_URL) goes over
    // verify-full with the right CA; an unverifiable database, a missing CA file or a CA
    // file for an amqp:// URL stops it.
    let migrate = |db_ca: &str, amqp: &str, amqp_ca: &str| {
        tokio::task::block_in_place(|| {
            migrate_with(&[
                ("DATABASE_URL", &database_url),
                ("MIGRATION_DATABASE_URL", &database_url),
                ("DATABASE_TLS_CA_FILE", db_ca),
                ("AMQP_URL", amqp),
                ("AMQP_TLS_CA_FILE", amqp_ca),
            ])
        })
    };
    let (ok, log) = migrate(&ca, &amqps, &ca);
    assert!(ok, "{log}");
    let (ok, log) = migrate(&other_ca, &amqps, &ca);
    assert!(!ok && log.contains("certificate verify failed"), "{log}");
    let missing = "/nonexistent/ca.pem";
    let (ok, log) = migrate(missing, &amqps, &ca);
    assert!(
        !ok && log.contains("DATABASE_TLS_CA_FILE=/nonexistent/ca.pem: cannot read"),
        "{log}"
    );
    let (ok, log) = migrate(&ca, &amqps, missing);
    assert!(
        !ok && log.contains("AMQP_TLS_CA_FILE=/nonexistent/ca.pem: cannot read"),
        "{log}"
    );
    let (ok, log) = migrate(&ca, &plain, &ca);
    assert!(!ok && log.contains("use amqps://"), "{log}");
    let checks_done = t0.elapsed();

    // A whole stack: the processes read both CA files and add verify-full themselves.
    let stack = Stack::start_opts(StackOptions {
        database_url: Some(database_url),
        amqp_url: Some(amqps),
        env: vec![
            ("AMQP_TLS_CA_FILE".into(), ca.clone()),
            ("DATABASE_TLS_CA_FILE".into(), ca.clone()),
        ],
        ..StackOptions::default()
    })
    .await;
    let steps = json!([
        {"name": "a", "type": "transform", "value": {"n": "{{ variables.n }}"}},
        {"name": "b", "type": "transform", "value": "{{ steps.a.output.n }}"}
    ]);
    stack
        .create_workflow("tls", json!({ "steps": steps }))
        .await;
    let run_id = stack.trigger("wf_tls", json!({ "n": 7 })).await;
    let run = stack.wait_for_run(&run_id, Duration::from_secs(30)).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");

    for name in [
        "workflow-service",
        "runtime-service",
        "executor-worker-0",
        "support-agent",
    ] {
        let log = std::fs::read_to_string(stack.dir.join(format!("{name}.log"))).unwrap();
        for secret in [AMQP_PASSWORD, PG_PASSWORD] {
            assert!(
                !log.contains(secret),
                "{name}'s log shows a password:\n{log}"
            );
        }
    }
    let worker = std::fs::read_to_string(stack.dir.join("executor-worker-0.log")).unwrap();
    assert!(
        worker.contains(&format!("on amqps://thygon:***@127.0.0.1:{tls_port}/%2f")),
        "the worker names the broker, redacted:\n{worker}"
    );
    println!(
        "servers up in {:.1} s, connection checks by {:.1} s, stack run by {:.1} s",
        servers_up.as_secs_f64(),
        checks_done.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
