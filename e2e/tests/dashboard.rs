//! The dashboard at `/ui/` in a real browser (Debian's headless chromium), through the gateway
//! of a real stack: the runs list, a run's graph and agent turns, and the queues and workers
//! page, each checked in the DOM the page built from the API, and each saved as a screenshot
//! into `target/ui-screenshots/` (not committed) for a person to look at. A run page's live
//! answers, which need the page open while pieces are written, are watched in real time over
//! the DevTools protocol ([`Browser`]).
//!
//! chromium is required, not optional: `make test` installs it (scripts/ensure-services.sh).

use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use thygon_e2e::standin::StandIn;
use thygon_e2e::{workspace_root, Stack, ADMIN_KEY};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

const CHROMIUM: &str = "/usr/bin/chromium";

fn chromium() -> &'static str {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the dashboard test needs Debian's chromium \
         (`make test` installs it through scripts/ensure-services.sh; or: apt-get install chromium)"
    );
    CHROMIUM
}

/// Run headless chromium on `url` with `args` (`--dump-dom` or `--screenshot=...`); returns
/// its stdout. Each call has a profile of its own under the stack's directory.
async fn browse(stack: &Stack, url: &str, args: &[&str]) -> String {
    let profile = stack
        .dir
        .join(format!("chromium-{}", thygon_testkit::unique_token()));
    browse_in(&profile, url, args).await
}

/// [`browse`] with the browser profile `profile`, which keeps its localStorage between calls.
async fn browse_in(profile: &Path, url: &str, args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new(chromium());
    cmd.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        "--virtual-time-budget=8000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(url)
    .kill_on_drop(true)
    .stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("chromium did not finish within 90 s on {url}"))
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed on {url}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The page's DOM after its scripts ran (and polled for the virtual-time budget).
async fn dom(stack: &Stack, page: &str) -> String {
    let url = page_url(stack, page);
    let html = browse(stack, &url, &["--dump-dom"]).await;
    assert!(html.contains("</html>"), "no DOM for {page}: {html}");
    html
}

fn page_url(stack: &Stack, page: &str) -> String {
    format!(
        "{}/ui/{page}#key={}&admin={ADMIN_KEY}",
        stack.base_url, stack.key
    )
}

async fn screenshot(stack: &Stack, page: &str, file: &str) -> PathBuf {
    let dir = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"))
        .join("ui-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let path = dir.join(file);
    let _ = std::fs::remove_file(&path);
    browse(
        stack,
        &page_url(stack, page),
        &[
            &format!("--screenshot={}", path.display()),
            "--window-size=1280,900",
        ],
    )
    .await;
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    assert!(size > 1000, "no screenshot of {page} at {}", path.display());
    println!("screenshot of /ui/{page}: {}", path.display());
    path
}

/// The attributes of every start tag `<tag ...>` in `html` (values unescaped for `&amp;`
/// and `&quot;` only: enough for ids, names and statuses).
fn tags(html: &str, tag: &str) -> Vec<HashMap<String, String>> {
    let open = format!("<{tag} ");
    let mut found = Vec::new();
    let mut rest = html;
    while let Some(at) = rest.find(&open) {
        let after = &rest[at + open.len()..];
        let end = after.find('>').unwrap_or(after.len());
        found.push(attributes(&after[..end]));
        rest = &after[end..];
    }
    found
}

fn attributes(mut s: &str) -> HashMap<String, String> {
    let mut map = HashMap::new();
    loop {
        s = s.trim_start();
        let Some(eq) = s.find("=\"") else { break };
        let name = s[..eq].trim().to_string();
        let value_start = &s[eq + 2..];
        let Some(close) = value_start.find('"') else {
            break;
        };
        let value = value_start[..close]
            .replace("&quot;", "\"")
            .replace("&amp;", "&");
        map.insert(name, value);
        s = &value_start[close + 1..];
    }
    map
}

fn with<'a>(
    found: &'a [HashMap<String, String>],
    key: &str,
) -> impl Iterator<Item = &'a HashMap<String, String>> + 'a {
    let key = key.to_string();
    found.iter().filter(move |a| a.contains_key(&key))
}

/// The text of the first element after `<... attr="value"` whose class is `class` (a small,
/// purpose-built reader: the text of `<b>` in a queue card's number).
fn text_after(html: &str, marker: &str, then: &str) -> String {
    let start = html
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in the page"));
    let rest = &html[start..];
    let at = rest
        .find(then)
        .unwrap_or_else(|| panic!("no {then} after {marker}"));
    let rest = &rest[at + then.len()..];
    rest[..rest.find('<').unwrap_or(rest.len())].to_string()
}

async fn create(stack: &Stack, name: &str, steps: Value) {
    stack.create_workflow(name, json!({ "steps": steps })).await;
}

async fn trigger(stack: &Stack, workflow: &str, variables: Value) -> String {
    stack.trigger(workflow, variables).await
}

async fn get(stack: &Stack, key: &str, path: &str) -> Value {
    let (status, body) = stack.call_as(Some(key), "GET", path, None).await;
    assert_eq!(status, 200, "{path}: {body}");
    body["data"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_runs_graphs_queues_and_workers_in_a_browser() {
    chromium();
    let stack = Stack::start_with(
        1,
        &[
            ("WORKER_HEARTBEAT_SECONDS", "1"),
            ("OPS_SAMPLE_SECONDS", "1"),
        ],
    )
    .await;

    // fetch fans out to classify (an agent) and enrich (fails without a region), both fan in
    // to an approval, and notify follows it.
    create(
        &stack,
        "ticket_flow",
        json!([
            {"name": "fetch", "type": "transform", "value": {"ticket": "{{ variables.ticketId }}"}},
            {"name": "classify", "type": "agent", "agentId": "support-classifier",
             "instructions": "Classify {{ variables.ticketId }}: {{ variables.subject }}", "dependsOn": ["fetch"]},
            {"name": "enrich", "type": "transform", "value": {"region": "{{ variables.region }}"}, "dependsOn": ["fetch"]},
            {"name": "review", "type": "approval", "dependsOn": ["classify", "enrich"]},
            {"name": "notify", "type": "transform", "value": "{{ steps.review.output.comment }}"}
        ]),
    )
    .await;
    let vars = |region: Option<&str>| {
        let mut v = json!({"ticketId": "TCK-7", "subject": "refund my invoice"});
        if let Some(r) = region {
            v["region"] = json!(r);
        }
        v
    };
    let completed = trigger(&stack, "wf_ticket_flow", vars(Some("eu"))).await;
    let failed = trigger(&stack, "wf_ticket_flow", vars(None)).await;
    let waiting = trigger(&stack, "wf_ticket_flow", vars(Some("us"))).await;

    stack
        .wait_until(&completed, Duration::from_secs(30), "WAITING", |r| {
            r["status"] == "WAITING"
        })
        .await;
    let (status, body) = stack
        .call(
            "POST",
            &format!("/workflows/runs/{completed}/steps/review/approve"),
            Some(json!({"approved": true, "comment": "refund approved"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        stack
            .wait_for_run(&completed, Duration::from_secs(30))
            .await["status"],
        "COMPLETED"
    );
    assert_eq!(
        stack.wait_for_run(&failed, Duration::from_secs(30)).await["status"],
        "FAILED"
    );
    let waiting_run = stack
        .wait_until(&waiting, Duration::from_secs(30), "WAITING", |r| {
            r["status"] == "WAITING"
        })
        .await;

    // ---- the runs list ----
    let html = dom(&stack, "").await;
    let rows = tags(&html, "tr");
    let shown: HashMap<&str, &str> = with(&rows, "data-run")
        .map(|a| (a["data-run"].as_str(), a["data-status"].as_str()))
        .collect();
    assert_eq!(
        shown,
        HashMap::from([
            (completed.as_str(), "COMPLETED"),
            (failed.as_str(), "FAILED"),
            (waiting.as_str(), "WAITING"),
        ]),
        "runs list rows"
    );
    for (id, status) in [
        (&completed, "COMPLETED"),
        (&failed, "FAILED"),
        (&waiting, "WAITING"),
    ] {
        assert!(
            html.contains(&format!("href=\"run.html?id={id}\"")),
            "link to {id}"
        );
        assert!(
            html.contains(&format!("class=\"badge status-{status}\"")),
            "{status} badge"
        );
    }
    assert!(html.contains("wf_ticket_flow"));

    // ---- a run's page: the failed run (mixed states) and the waiting one ----
    for (id, expected_status) in [(&failed, "FAILED"), (&waiting, "WAITING")] {
        let run = get(&stack, &stack.key, &format!("/workflows/runs/{id}")).await;
        assert_eq!(run["status"], expected_status);
        let html = dom(&stack, &format!("run.html?id={id}")).await;
        let nodes: HashMap<String, String> = with(&tags(&html, "g"), "data-step")
            .map(|a| (a["data-step"].clone(), a["data-status"].clone()))
            .collect();
        let api: HashMap<String, String> = run["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_string(),
                    s["status"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(nodes, api, "graph nodes of {id} and their states");
        for (step, status) in &nodes {
            assert!(
                html.contains(&format!(
                    "class=\"node status-{status}\" data-step=\"{step}\""
                )),
                "node {step} has the class of its state"
            );
        }
        let edges: Vec<(String, String)> = with(&tags(&html, "path"), "data-from")
            .map(|a| (a["data-from"].clone(), a["data-to"].clone()))
            .collect();
        let mut edges_sorted = edges.clone();
        edges_sorted.sort();
        assert_eq!(
            edges_sorted,
            [
                ("classify", "review"),
                ("enrich", "review"),
                ("fetch", "classify"),
                ("fetch", "enrich"),
                ("review", "notify"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string())),
            "edges of {id}"
        );
        let logs = run["logs"].as_array().unwrap();
        assert!(!logs.is_empty(), "{run}");
        let log_rows = tags(&html, "tr")
            .iter()
            .filter(|a| a.get("class").map(String::as_str) == Some("log-line"))
            .count();
        assert_eq!(log_rows, logs.len(), "log lines of {id}");
        let first = logs[0]["message"].as_str().unwrap();
        let escaped = first
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        assert!(html.contains(&escaped), "log line {first:?} on the page");
        assert!(html.contains(&format!("badge status-{expected_status}")));
    }
    let step_states: Vec<&str> = waiting_run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        step_states,
        ["COMPLETED", "COMPLETED", "COMPLETED", "WAITING", "PENDING"]
    );

    // ---- a run's agent turns: usage in the header, each turn folded, every text escaped ----
    let turned = get(&stack, &stack.key, &format!("/workflows/runs/{completed}")).await;
    insert_turns(&stack, &turned);
    let html = dom(&stack, &format!("run.html?id={completed}")).await;
    let steps: Vec<_> = with(&tags(&html, "details"), "data-step")
        .cloned()
        .collect();
    assert_eq!(steps.len(), 1, "one agent step with turns: {steps:?}");
    assert_eq!(steps[0]["class"], "agent-step");
    assert!(!steps[0].contains_key("open"), "agent steps start folded");
    let turns: Vec<String> = with(&tags(&html, "details"), "data-turn")
        .map(|a| a["data-turn"].clone())
        .collect();
    assert_eq!(turns, ["1", "2"], "the step's turns, in order");
    for (hook, what) in [
        (
            "class=\"usage-tokens\">320 in · 32 out · 40 cached<",
            "the run's tokens",
        ),
        ("class=\"usage-cost\">$0.0011<", "the run's cost"),
        (
            "2 turns · 320 in · 32 out · 40 cached · $0.0011",
            "the step's usage",
        ),
        ("class=\"mono\">gpt-test<", "a turn's model"),
        (
            "class=\"mono tool-name\">lookup_&lt;customer&gt;<",
            "the tool's name, escaped",
        ),
        (
            "\"email\": \"&lt;b&gt;ann@example.com&lt;/b&gt;\"",
            "the call's arguments",
        ),
        (
            "class=\"tool-result tool-error\" data-error=\"true\"",
            "an error result, marked",
        ),
        ("class=\"badge level-ERROR\">error<", "the error badge"),
        ("no such customer &lt;script&gt;", "the error's text"),
        (
            "class=\"reply\">&lt;img src=x onerror=alert(1)&gt; billing, high<",
            "a reply, escaped",
        ),
    ] {
        assert!(html.contains(hook), "{what}: {hook} not in the page");
    }
    assert!(!html.contains("<img src=x"), "model text is never markup");
    assert!(!html.contains("<script>alert"), "tool text is never markup");
    screenshot(&stack, &format!("run.html?id={completed}"), "run-turns.png").await;

    // ---- queues and workers ----
    let deadline = Instant::now() + Duration::from_secs(30);
    let workers = loop {
        let w = get(&stack, ADMIN_KEY, "/ops/workers").await;
        let (status, _) = stack
            .call_as(Some(ADMIN_KEY), "GET", "/ops/queues", None)
            .await;
        if status == 200 && w.as_array().is_some_and(|a| !a.is_empty()) {
            break w;
        }
        assert!(
            Instant::now() < deadline,
            "no worker row or no queue sample"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // A few samples for the chart: polled until every queue has 3 in its history (one sample
    // alone would still draw a two-point line, so 3 points show the history is drawn).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let queues = get(&stack, ADMIN_KEY, "/ops/queues").await;
        let sampled = queues.as_array().is_some_and(|qs| {
            !qs.is_empty()
                && qs
                    .iter()
                    .all(|q| q["history"].as_array().is_some_and(|h| h.len() >= 3))
        });
        if sampled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than 3 samples of a queue after 30 s: {queues}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let worker_id = workers[0]["id"].as_str().unwrap().to_string();
    assert_eq!(worker_id, "e2e-worker-0");
    assert_eq!(workers[0]["live"], true);
    let queues = get(&stack, ADMIN_KEY, "/ops/queues").await;
    let html = dom(&stack, "queues.html").await;
    for q in queues.as_array().unwrap() {
        let name = q["name"].as_str().unwrap();
        assert!(name.starts_with(&stack.prefix), "{name}");
        let card = format!(
            "data-queue=\"{name}\" data-kind=\"{}\"",
            q["kind"].as_str().unwrap()
        );
        assert!(html.contains(&card), "a card for {name}");
        // Nothing waits and the worker consumes the job queue; the numbers hold still.
        let expected_consumers = if q["kind"] == "jobs" { "1" } else { "0" };
        assert_eq!(
            text_after(
                &html,
                &card,
                "<div class=\"consumers\"><span>Consumers</span><b>"
            ),
            expected_consumers,
            "consumers of {name}"
        );
        assert_eq!(
            text_after(
                &html,
                &card,
                "<div class=\"messages\"><span>Messages</span><b>"
            ),
            "0",
            "messages in {name}"
        );
        // No run was queued again, no letter redriven.
        let count = if q["kind"] == "jobs" {
            "<div class=\"requeued\"><span>Runs queued again</span><b>"
        } else {
            "<div class=\"redriven\"><span>Redriven</span><b>"
        };
        assert_eq!(text_after(&html, &card, count), "0", "counts of {name}");
        assert!(html.contains("<svg class=\"chart\""), "a chart for {name}");
    }
    assert!(html.contains("Oldest pending run"));
    let polylines = tags(&html, "polyline");
    assert_eq!(polylines.len(), 4, "two lines per queue chart");
    for p in &polylines {
        let points = p["points"].split(' ').count();
        assert!(points >= 3, "a line has a point per sample: {p:?}");
    }
    let worker_rows: Vec<_> = with(&tags(&html, "tr"), "data-worker").cloned().collect();
    assert_eq!(worker_rows.len(), 1);
    assert_eq!(
        (
            worker_rows[0]["data-worker"].as_str(),
            worker_rows[0]["data-live"].as_str()
        ),
        (worker_id.as_str(), "true")
    );

    // ---- a link never silently replaces the saved keys ----
    // The first visit saves the stack's keys; a link with another org's key, opened in the
    // same browser, only offers it: the page still shows the saved org's runs.
    let other_key = stack.provision("org_link_sender").await;
    let profile = stack.dir.join("chromium-shared");
    let first = browse_in(&profile, &page_url(&stack, ""), &["--dump-dom"]).await;
    assert!(
        !first.contains("id=\"key-offer\""),
        "nothing to offer on a first visit"
    );
    let link = format!("{}/ui/#key={other_key}", stack.base_url);
    let html = browse_in(&profile, &link, &["--dump-dom"]).await;
    assert!(
        html.contains("id=\"key-offer\""),
        "no offer of the link's key: {html}"
    );
    assert!(
        html.contains(&other_key[..8]),
        "the offer names the link's key"
    );
    assert!(!html.contains(&other_key), "the whole key is shown");
    let shown: Vec<String> = with(&tags(&html, "tr"), "data-run")
        .map(|a| a["data-run"].clone())
        .collect();
    assert_eq!(
        shown.len(),
        3,
        "the saved org's runs are still shown: {shown:?}"
    );

    // ---- screenshots, for a person to look at ----
    screenshot(&stack, "", "runs.png").await;
    screenshot(&stack, &format!("run.html?id={failed}"), "run-failed.png").await;
    screenshot(&stack, &format!("run.html?id={waiting}"), "run-waiting.png").await;
    screenshot(&stack, "queues.html", "queues.png").await;
}

/// Two model turns of `run`'s `classify` step, straight into the database as a worker with a
/// model agent writes them (the stack's agent is an HTTP one): the first calls a tool that
/// fails, the second answers. Model and tool text carry markup, which the page must show as
/// text.
fn insert_turns(stack: &Stack, run: &Value) {
    use diesel::prelude::*;
    let mut conn = PgConnection::establish(&stack.database_url).expect("database");
    let first_reply = json!({"role": "assistant", "content": "",
        "toolCalls": [{"id": "c1", "name": "lookup_<customer>", "arguments": {"email": "<b>ann@example.com</b>"}}]});
    let first_results = json!({"c1": {"role": "tool", "toolCallId": "c1", "name": "lookup_<customer>",
        "content": "no such customer <script>alert(1)</script>", "isError": true}});
    let second_reply =
        json!({"role": "assistant", "content": "<img src=x onerror=alert(1)> billing, high"});
    for (turn, reply, results, tokens, picos) in [
        (
            1,
            first_reply,
            first_results,
            (100i64, 10i64, 40i64),
            400_000_000i64,
        ),
        (2, second_reply, json!({}), (220, 22, 0), 700_000_000),
    ] {
        let run_id = run["id"].as_str().unwrap();
        // As the worker writes a turn: with its usage added to the run's.
        shared_models::agent_journal::insert_turn(
            &mut conn,
            &shared_models::agent_journal::NewTurn {
                run_id: run_id.into(),
                step: "classify".into(),
                turn,
                attempt: 1,
                org_id: run["orgId"].as_str().unwrap().into(),
                workflow_id: run["workflowId"].as_str().unwrap().into(),
                agent_id: "support-classifier".into(),
                model: "gpt-test".into(),
                messages: json!([]),
                reply,
                input_tokens: tokens.0,
                output_tokens: tokens.1,
                cached_tokens: tokens.2,
                cost_picos: picos,
                created_at: chrono::Utc::now(),
            },
        )
        .expect("insert a turn");
        for (call_id, result) in results.as_object().into_iter().flatten() {
            shared_models::agent_journal::add_tool_result(
                &mut conn, run_id, "classify", turn, call_id, result,
            )
            .expect("add a tool result");
        }
    }
}

/// Headless chromium driven in real time over the DevTools protocol
/// (`--remote-debugging-pipe`: JSON messages ending in NUL, read on fd 3 and written on fd 4),
/// for a page that changes while the test watches: `--dump-dom` runs on virtual time, which
/// stands still while a fetch is open, and a run page keeps its event stream open.
struct Browser {
    child: tokio::process::Child,
    to: tokio::process::ChildStdin,
    from: tokio::io::BufReader<tokio::process::ChildStdout>,
    next_id: u64,
    session: Option<String>,
}

impl Browser {
    /// A browser with the profile `profile`, showing `url`.
    async fn open(profile: &Path, url: &str) -> Browser {
        let log = std::fs::File::create(profile.with_extension("log")).expect("browser log");
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec {} \"$@\" 3<&0 4>&1 </dev/null >/dev/null",
                chromium()
            ))
            .arg("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("run chromium");
        let to = child.stdin.take().expect("the browser's pipe in");
        let from = tokio::io::BufReader::new(child.stdout.take().expect("the browser's pipe out"));
        let mut browser = Browser {
            child,
            to,
            from,
            next_id: 0,
            session: None,
        };
        let target = browser
            .send("Target.createTarget", json!({ "url": url }))
            .await["targetId"]
            .clone();
        let attached = browser
            .send(
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
            )
            .await;
        browser.session = attached["sessionId"].as_str().map(String::from);
        browser
    }

    /// Send `method` (to the page once attached) and return its result.
    async fn send(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = message.to_string().into_bytes();
        bytes.push(0);
        self.to
            .write_all(&bytes)
            .await
            .expect("write to the browser");
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let mut buf = Vec::new();
                let n = self
                    .from
                    .read_until(0, &mut buf)
                    .await
                    .expect("read from the browser");
                assert!(n > 0, "the browser closed its pipe");
                buf.pop();
                let reply: Value = serde_json::from_slice(&buf).expect("a DevTools message");
                if reply["id"] == id {
                    break reply;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the browser did not answer {method} within 30 s"));
        assert!(answer["error"].is_null(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// The page's DOM as it is now.
    async fn html(&mut self) -> String {
        let result = self
            .send(
                "Runtime.evaluate",
                json!({ "expression": "document.documentElement.outerHTML", "returnByValue": true }),
            )
            .await;
        result["result"]["value"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The DOM once `ready` holds of it (within 30 s).
    async fn wait_for(&mut self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let html = self.html().await;
            if ready(&html) {
                return html;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not on the page within 30 s:\n{html}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until the page has opened an event stream after the `after` it had opened, and
    /// return how many it has opened. A piece written then is one the open stream sends
    /// (a stream sends those written while it is open).
    async fn fresh_stream(&mut self, after: u32) -> u32 {
        let html = self
            .wait_for("a new event stream", |html| {
                let turns = tags(html, "div")
                    .into_iter()
                    .find(|a| a.get("id").map(String::as_str) == Some("turns"));
                turns.is_some_and(|a| {
                    a.get("data-stream").map(String::as_str) == Some("open")
                        && a.get("data-streams").and_then(|n| n.parse::<u32>().ok()) > Some(after)
                })
            })
            .await;
        let turns = tags(&html, "div")
            .into_iter()
            .find(|a| a.get("id").map(String::as_str) == Some("turns"))
            .expect("#turns");
        turns["data-streams"].parse().expect("a count")
    }

    async fn close(mut self) {
        self.session = None;
        self.send("Browser.close", json!({})).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// One row of `agent_deltas`, as a worker with a streaming model agent writes it.
fn insert_piece(conn: &mut diesel::PgConnection, run: &str, attempt: i32, kind: &str, data: Value) {
    shared_models::agent_journal::insert_delta(conn, run, "answer", attempt, kind, &data)
        .expect("insert a live piece");
}

/// The live box of the step `answer`, as the page shows it now.
fn live_box(html: &str) -> Option<&str> {
    let start = html.find("<div class=\"live\" data-step=\"answer\">")?;
    let rest = &html[start..];
    let body = rest.find("<div class=\"live-body\">")?;
    let end = rest[body..].find("</div></div>").map(|e| body + e)?;
    Some(&rest[..end])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_page_shows_an_agents_answer_live_as_it_is_written() {
    use diesel::prelude::*;
    chromium();
    // An HTTP agent that never answers keeps its step RUNNING while the test writes the
    // pieces a streaming model agent would (the worker's part is tested with the worker).
    // Streams last 4 s, so the page reconnects while the test watches.
    let agent = StandIn::gated("held-agent").await;
    let agents = std::env::temp_dir().join(format!(
        "thygon-live-agents-{}.toml",
        thygon_testkit::unique_token()
    ));
    std::fs::write(
        &agents,
        format!(
            "[agents.live-writer]\nurl = \"http://{}/answer\"\ntimeoutSeconds = 300\n",
            agent.addr
        ),
    )
    .expect("agents file");
    let stack = Stack::start_with(
        1,
        &[
            ("AGENTS_FILE", agents.to_str().unwrap()),
            ("EVENT_STREAM_MAX_SECONDS", "4"),
        ],
    )
    .await;
    create(
        &stack,
        "live_flow",
        json!([{"name": "answer", "type": "agent", "agentId": "live-writer",
                "instructions": "Classify {{ variables.subject }}"}]),
    )
    .await;
    let run = trigger(&stack, "wf_live_flow", json!({"subject": "refund"})).await;
    stack
        .wait_until(
            &run,
            Duration::from_secs(30),
            "the agent step RUNNING",
            |r| r["steps"][0]["status"] == "RUNNING",
        )
        .await;
    let mut conn = PgConnection::establish(&stack.database_url).expect("database");
    let profile = stack.dir.join("chromium-live");
    let mut page = Browser::open(&profile, &page_url(&stack, &format!("run.html?id={run}"))).await;

    // ---- pieces as they are written: text (markup in it), a tool call, its result, turn 2 ----
    let streams = page.fresh_stream(0).await;
    for data in [
        json!({"turn": 1, "text": "<img src=x onerror=alert(1)> Ref"}),
        json!({"turn": 1, "text": "und, "}),
        json!({"turn": 1, "toolCalls": [{"id": "c1", "name": "lookup_<customer>"}]}),
        json!({"turn": 1, "toolResult": {"id": "c1", "name": "lookup_<customer>", "isError": true}}),
        json!({"turn": 2, "text": "billing <b>high</b>"}),
    ] {
        insert_piece(&mut conn, &run, 1, "delta", data);
    }
    let html = page
        .wait_for("the live answer", |html| {
            live_box(html).is_some_and(|b| b.contains("billing &lt;b&gt;high&lt;/b&gt;"))
        })
        .await;
    let shown = live_box(&html).unwrap();
    for (hook, what) in [
        (
            "<div class=\"live-body\">&lt;img src=x onerror=alert(1)&gt; Refund, <div",
            "the text, its pieces appended, escaped",
        ),
        (
            "class=\"live-line live-call\">→ calls lookup_&lt;customer&gt;<",
            "the tool call, escaped",
        ),
        (
            "class=\"live-line live-result tool-error\">← lookup_&lt;customer&gt; failed<",
            "the tool's result, an error",
        ),
        ("class=\"live-line\">turn 2<", "the next turn"),
    ] {
        assert!(shown.contains(hook), "{what}: {hook} not in {shown}");
    }
    assert!(!html.contains("<img src=x"), "model text is never markup");
    assert!(!html.contains("<b>high"), "model text is never markup");
    page.wait_for("the meta line saying the page streams", |html| {
        html.contains("live answers streaming")
    })
    .await;

    // ---- a retried attempt: the reset clears what was shown, on a reconnected stream ----
    let again = page.fresh_stream(streams).await;
    assert!(again > streams);
    insert_piece(&mut conn, &run, 2, "reset", json!({}));
    page.wait_for("the live answer cleared", |html| {
        live_box(html).is_some_and(|b| b.ends_with("<div class=\"live-body\">"))
    })
    .await;
    let streams = page.fresh_stream(again).await;
    insert_piece(
        &mut conn,
        &run,
        2,
        "delta",
        json!({"turn": 1, "text": "second try"}),
    );
    let html = page
        .wait_for("the second attempt's answer", |html| {
            live_box(html).is_some_and(|b| b.ends_with("<div class=\"live-body\">second try"))
        })
        .await;
    assert!(!html.contains("Refund"), "the first attempt's text is gone");
    assert!(streams >= 3, "the page reconnected: {streams} streams");

    // ---- the run ends: the stream closes and the live box goes (the answer is in turns) ----
    let (status, body) = stack
        .call("POST", &format!("/workflows/runs/{run}/cancel"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    page.wait_for("the stream closed at the run's end", |html| {
        html.contains("data-stream=\"closed\"")
            && live_box(html).is_none()
            && html.contains("the run has ended")
    })
    .await;
    page.close().await;
    let _ = std::fs::remove_file(&agents);
}
