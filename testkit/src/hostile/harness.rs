//! Sending and checking: the envelope rules every answer must keep, and the harness that
//! sends the cases from a child process.

use super::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The envelope rules every answer must keep; `Err` says which was broken.
pub fn check(method: &str, status: u16, text: &str) -> Result<(), String> {
    if status >= 500 {
        return Err(format!("status {status} is a 5xx"));
    }
    if method == "HEAD" {
        return Ok(());
    }
    let body: Value =
        serde_json::from_str(text).map_err(|e| format!("the body is not JSON ({e})"))?;
    let success = body["success"]
        .as_bool()
        .ok_or("the body has no boolean `success`")?;
    if (400..500).contains(&status) && success {
        return Err(format!("a {status} answer says success: true"));
    }
    if (200..300).contains(&status) && !success {
        return Err(format!("a {status} answer says success: false"));
    }
    if !success {
        let code = body["error"]["code"]
            .as_str()
            .ok_or("a failure without a string error.code")?;
        if !CODES.contains(&code) {
            return Err(format!(
                "error.code {code:?} is not one of the contract's codes"
            ));
        }
        if !body["error"]["message"].is_string() {
            return Err("a failure without a string error.message".into());
        }
    }
    Ok(())
}

pub enum Outcome {
    /// The client could not even build the request (a URL or header it refuses).
    Skipped,
    /// An answer that keeps the contract.
    Answered(u16),
    /// An answer (or none) that breaks it, with the status if there was one.
    Broken(Option<u16>, String),
}

pub async fn send(client: &reqwest::Client, address: &str, case: &Case) -> Outcome {
    let Ok(url) = reqwest::Url::parse(&format!("{address}{}", case.path)) else {
        return Outcome::Skipped;
    };
    let Ok(method) = reqwest::Method::from_bytes(case.method.as_bytes()) else {
        return Outcome::Skipped;
    };
    let mut req = client.request(method, url);
    if let Some(ct) = &case.content_type {
        match reqwest::header::HeaderValue::from_str(ct) {
            Ok(v) => req = req.header(reqwest::header::CONTENT_TYPE, v),
            Err(_) => return Outcome::Skipped,
        }
    }
    for (k, v) in &case.headers {
        if let Ok(v) = reqwest::header::HeaderValue::from_bytes(v) {
            req = req.header(k.as_str(), v);
        }
    }
    if !case.body.is_empty() || case.method != "GET" {
        req = req.body(case.body.clone());
    }
    let res = match req.send().await {
        Ok(res) => res,
        Err(e) => {
            return Outcome::Broken(
                None,
                format!(
                    "{}\n  => no answer: {e:?}\n  (the body, up to 4 KB: {:?})",
                    case.describe(),
                    String::from_utf8_lossy(&case.body[..case.body.len().min(4096)]),
                ),
            )
        }
    };
    let status = res.status().as_u16();
    let headers = format!("{:?}", res.headers());
    let text = match res.bytes().await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => {
            return Outcome::Broken(
                Some(status),
                format!(
                    "{}\n  => {status}, the body could not be read: {e:?}",
                    case.describe()
                ),
            )
        }
    };
    match check(&case.method, status, &text) {
        Ok(()) => Outcome::Answered(status),
        Err(why) => Outcome::Broken(
            Some(status),
            format!(
                "{}\n  => {status} {headers}\n  => body: {}\n  broken: {why}",
                case.describe(),
                truncate(&text, 1000),
            ),
        ),
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// The runner for case `i`: a fixed seed per case, so the same cases come on every run and
/// case `i` can be made again without making those before it. `HOSTILE_SEED=<n>` picks
/// other cases, to explore beyond those the suite always sends.
pub fn runner(i: usize) -> TestRunner {
    let base = std::env::var("HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
    seed[8..16].copy_from_slice(&base.to_le_bytes());
    seed[16..].copy_from_slice(b"thygon-hostile-i");
    TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
    )
}

pub fn case(cases: &BoxedStrategy<Case>, i: usize) -> Case {
    cases
        .new_tree(&mut runner(i))
        .expect("generate a case")
        .current()
}

/// The child's side: send cases `from..CASES` to `address`, printing one protocol line per
/// case on stdout (line-buffered, so a crash of the process loses nothing already sent):
/// `HOSTILE-CASE i` before it goes, then `HOSTILE-STATUS s`, `HOSTILE-SKIPPED` or
/// `HOSTILE-FAILED s|-` followed by the description.
/// `prepare` puts what only the child knows into a case (ids the seeding made).
pub async fn run_cases<F, Fut>(
    cases: &BoxedStrategy<Case>,
    address: &str,
    mut between: F,
    prepare: impl Fn(Case) -> Case,
) where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let from: usize = std::env::var("HOSTILE_FROM")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let client = client();
    // The test harness has printed `test ... ` without a line end: start a line of our own.
    println!();
    for i in from..CASES {
        between(i).await;
        let case = prepare(case(cases, i));
        println!("HOSTILE-CASE {i}");
        match send(&client, address, &case).await {
            Outcome::Skipped => println!("HOSTILE-SKIPPED"),
            Outcome::Answered(status) => println!("HOSTILE-STATUS {status}"),
            Outcome::Broken(status, why) => println!(
                "HOSTILE-FAILED {}\n----- invariant failure (case #{i})\n{why}\n-----",
                status.map_or("-".to_string(), |s| s.to_string())
            ),
        }
    }
    println!("HOSTILE-DONE");
}

/// The parent's side: run the cases in a child process (this test binary running
/// `child_test`), so that a request that kills the service (a stack overflow aborts the
/// whole process) is reported with the request, and the cases after it still run in a new
/// child. Prints the figures and fails on any broken invariant or crash.
pub fn supervise(service: &str, child_test: &str, cases: &BoxedStrategy<Case>) {
    const MAX_CRASHES: usize = 8;
    let started = Instant::now();
    let mut from = 0;
    let (mut sent, mut skipped) = (0usize, 0usize);
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let mut crashes: Vec<String> = Vec::new();
    loop {
        let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([child_test, "--exact", "--ignored", "--nocapture"])
            .args(["--test-threads", "1"])
            .env("HOSTILE_FROM", from.to_string())
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("run the child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut last_case = None;
        let mut done = false;
        let mut in_failure = false;
        let mut failure = String::new();
        for line in stdout.lines() {
            if let Some(i) = line.strip_prefix("HOSTILE-CASE ") {
                last_case = i.parse::<usize>().ok();
                sent += 1;
            } else if let Some(s) = line.strip_prefix("HOSTILE-STATUS ") {
                *by_status.entry(s.parse().unwrap_or(0)).or_default() += 1;
            } else if line == "HOSTILE-SKIPPED" {
                skipped += 1;
                sent -= 1;
            } else if let Some(s) = line.strip_prefix("HOSTILE-FAILED ") {
                if let Ok(s) = s.parse::<u16>() {
                    *by_status.entry(s).or_default() += 1;
                }
                in_failure = true;
            } else if line == "HOSTILE-DONE" {
                done = true;
            } else if in_failure {
                if line == "-----" {
                    failures.push(std::mem::take(&mut failure));
                    in_failure = false;
                } else {
                    failure.push_str(line);
                    failure.push('\n');
                }
            }
        }
        if done {
            break;
        }
        // The child died before the end: the service crashed on the case it was sending.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .rev()
            .take(6)
            .collect();
        let Some(i) = last_case else {
            panic!(
                "the {service} child stopped before sending anything ({}):\n{stderr}\n{stdout}",
                out.status
            );
        };
        let c = case(cases, i);
        crashes.push(format!(
            "case #{i}: the process died ({}) while the service handled\n{}\n  (the body, up to 4 KB: {:?})\n  last stderr lines: {:?}",
            out.status,
            c.describe(),
            String::from_utf8_lossy(&c.body[..c.body.len().min(4096)]),
            tail.into_iter().rev().collect::<Vec<_>>(),
        ));
        from = i + 1;
        if crashes.len() >= MAX_CRASHES || from >= CASES {
            break;
        }
    }
    let fivexx: usize = by_status
        .iter()
        .filter(|(s, _)| **s >= 500)
        .map(|(_, n)| n)
        .sum();
    let statuses = by_status
        .iter()
        .map(|(s, n)| format!("{s}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "hostile requests ({service}): {sent} sent, {fivexx} 5xx, {} invariant failures, {} crashes of the service, {skipped} skipped (the client could not build them), by status {{{statuses}}} in {:.1?}",
        failures.len(),
        crashes.len(),
        started.elapsed(),
    );
    for f in failures.iter().take(25) {
        println!("----- invariant failure ({service})\n{f}");
    }
    for c in &crashes {
        println!("----- crash ({service})\n{c}");
    }
    assert!(
        failures.is_empty() && crashes.is_empty(),
        "{} hostile requests to {service} broke the envelope contract and {} crashed the service (printed above)",
        failures.len(),
        crashes.len()
    );
    // Cases the client could not build prove nothing: at least nine in ten of the cases
    // must have gone out and come back with a status.
    let answered: usize = by_status.values().sum();
    assert!(
        answered > 0 && answered * 10 >= CASES * 9,
        "only {answered} of the {CASES} hostile requests to {service} were sent and answered ({sent} sent, {skipped} skipped)"
    );
}
