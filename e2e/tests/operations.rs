//! What operators and orchestrators call on the real binaries: `/metrics` on `METRICS_ADDR`
//! only, the gateway never serving `/metrics`, and the `healthcheck` and `prestop`
//! subcommands of every binary.

use shared_models::metrics::sample;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use thygon_e2e::{binary, Stack, StackOptions};

/// The Thygon processes of a one-worker stack, and their binaries.
const PROCESSES: [(&str, &str); 3] = [
    ("workflow-service", "workflow-service"),
    ("runtime-service", "runtime-service"),
    ("executor-worker-0", "executor-worker"),
];

async fn get(client: &reqwest::Client, url: &str) -> (u16, String) {
    let res = client.get(url).send().await.expect(url);
    (res.status().as_u16(), res.text().await.expect("body"))
}

/// `<bin> <args...>` with `env` on top of this process's environment, to its end.
fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(binary(bin, false));
    cmd.args(args)
        .env_remove("PRESTOP_DRAIN_SECONDS")
        .env_remove("METRICS_ADDR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap_or_else(|e| panic!("run {bin}: {e}"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn with_metrics_addr_each_process_serves_metrics_there_only_and_healthcheck_follows_readyz() {
    let stack = Stack::start_opts(StackOptions {
        metrics_addr: true,
        ..StackOptions::default()
    })
    .await;
    let client = reqwest::Client::new();
    for (process, bin) in PROCESSES {
        let http = stack.env_of(process, "HTTP_ADDR").expect("HTTP_ADDR");
        let metrics = stack.env_of(process, "METRICS_ADDR").expect("METRICS_ADDR");
        let (status, text) = get(&client, &format!("http://{metrics}/metrics")).await;
        assert_eq!(status, 200, "{process}: {text}");
        assert!(
            sample(&text, "process_resident_memory_bytes", "").is_some(),
            "{process}: {text}"
        );
        if process == "runtime-service" {
            assert!(text.contains("thygon_runs{"), "{text}");
        }
        let on_http = get(&client, &format!("http://{http}/metrics")).await;
        assert_eq!(
            on_http.0, 404,
            "{process} still serves /metrics on HTTP_ADDR"
        );
        let readyz = format!("http://{metrics}/readyz");
        assert_eq!(
            get(&client, &readyz).await.0,
            404,
            "{process}: metrics only"
        );

        // The process is ready: its healthcheck says so.
        let out = run(bin, &["healthcheck"], &[("HTTP_ADDR", &http)]);
        assert!(out.status.success(), "{process}: {}", stderr(&out));
    }
    let (status, _) = get(&client, &format!("{}/metrics", stack.base_url)).await;
    assert_eq!(status, 404, "the gateway");
    // The example agent's image has no curl either.
    let agent = stack.env_of("support-agent", "SUPPORT_AGENT_ADDR").unwrap();
    let out = run(
        "support-agent",
        &["healthcheck"],
        &[("SUPPORT_AGENT_ADDR", &agent)],
    );
    assert!(out.status.success(), "support-agent: {}", stderr(&out));

    // Nothing listening, a 503, an endpoint that never answers: exit 1 each, within the
    // 2 s timeout.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let unready = answering(Some(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
    ));
    let silent = answering(None);
    for (what, addr) in [("closed", &closed), ("503", &unready), ("silent", &silent)] {
        let started = Instant::now();
        let out = run("runtime-service", &["healthcheck"], &[("HTTP_ADDR", addr)]);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", stderr(&out));
        assert!(started.elapsed() < Duration::from_secs(5), "{what}");
    }
}

/// A loopback address whose server reads one request and answers `answer` (or nothing, for
/// 10 s).
fn answering(answer: Option<&'static str>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        if let Ok((mut conn, _)) = listener.accept() {
            let _ = conn.read(&mut [0u8; 1024]);
            match answer {
                Some(text) => {
                    let _ = conn.write_all(text.as_bytes());
                }
                None => std::thread::sleep(Duration::from_secs(10)),
            }
        }
    });
    addr
}

#[tokio::test]
async fn the_gateway_refuses_metrics_that_the_services_serve_on_their_own_port() {
    let stack = Stack::start(1).await;
    let client = reqwest::Client::new();
    // Without METRICS_ADDR, workflow-service (the gateway's default upstream) serves them.
    let http = stack.env_of("workflow-service", "HTTP_ADDR").unwrap();
    assert_eq!(get(&client, &format!("http://{http}/metrics")).await.0, 200);
    for path in [
        "/metrics",
        "/metrics?x=1",
        "//metrics",
        "/%6Detrics",
        "/./metrics",
    ] {
        let (status, body) = get(&client, &format!("{}{path}", stack.base_url)).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body.contains("NOT_FOUND"), "{path}: {body}");
    }
    assert_eq!(
        get(&client, &format!("{}/healthz", stack.base_url)).await.0,
        200
    );
}

#[test]
fn prestop_sleeps_prestop_drain_seconds_then_exits_0_and_refuses_more_than_a_minute() {
    let started = Instant::now();
    let sleepers: Vec<_> = PROCESSES
        .iter()
        .map(|(_, bin)| {
            Command::new(binary(bin, false))
                .arg("prestop")
                .env("PRESTOP_DRAIN_SECONDS", "1")
                .stderr(Stdio::null())
                .spawn()
                .expect("prestop")
        })
        .collect();
    for mut child in sleepers {
        assert!(child.wait().expect("wait").success());
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "{took:?}"
    );

    for (_, bin) in PROCESSES {
        let out = run(bin, &["prestop"], &[("PRESTOP_DRAIN_SECONDS", "61")]);
        assert_eq!(out.status.code(), Some(1), "{bin}");
        assert!(
            stderr(&out).contains("PRESTOP_DRAIN_SECONDS"),
            "{bin}: {}",
            stderr(&out)
        );
    }
    // Serving with a drain it could not honour stops at start, before anything else.
    let out = run(
        "workflow-service",
        &[],
        &[("PRESTOP_DRAIN_SECONDS", "soon")],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("PRESTOP_DRAIN_SECONDS"),
        "{}",
        stderr(&out)
    );
    let out = run("executor-worker", &["migrate"], &[]);
    assert_eq!(out.status.code(), Some(1), "not a subcommand of the worker");
    assert!(
        stderr(&out).contains("unknown subcommand"),
        "{}",
        stderr(&out)
    );
}
