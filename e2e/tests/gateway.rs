//! The gateway's routing table, served: the nginx template rendered as `make run` renders it
//! (`render_nginx_conf` of scripts/lib.sh), nginx started on loopback with its two upstreams
//! pointed at stand-in listeners that answer which of them got the request. Every route of
//! docs/API.md's "Every route" table reaches the service the table names, with its method and
//! path unchanged; `/metrics` reaches nobody; unknown paths go to workflow-service.

use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use thygon_e2e::standin::StandIn;
use thygon_e2e::{free_port, workspace_root};

/// nginx, stopped when dropped.
struct Gateway {
    child: Child,
    base: String,
    dir: std::path::PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn gateway(workflow: &StandIn, runtime: &StandIn) -> Gateway {
    let dir =
        std::env::temp_dir().join(format!("thygon-gateway-{}", thygon_testkit::unique_token()));
    std::fs::create_dir_all(&dir).expect("prefix dir");
    let conf = dir.join("nginx.conf");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let lib = workspace_root().join("scripts/lib.sh");
    let rendered = Command::new("bash")
        .arg("-c")
        .arg(r#"source "$1" && render_nginx_conf "$2" "$3" "$4" "$5" "$6""#)
        .arg("render")
        .arg(&lib)
        .arg(&conf)
        .arg(&listen)
        .arg(&workflow.addr)
        .arg(&runtime.addr)
        .arg(&dir)
        .status()
        .expect("bash");
    assert!(rendered.success(), "render_nginx_conf failed");
    let text = std::fs::read_to_string(&conf).expect("rendered conf");
    assert!(
        text.contains(&format!("server {} max_fails=0", workflow.addr))
            && text.contains(&format!("server {} max_fails=0", runtime.addr))
            && !text.contains("${"),
        "the rendered conf does not name the stand-ins:\n{text}"
    );
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("nginx is not installed (make test installs it)");
    let child = Command::new(nginx)
        .args(["-p", &dir.display().to_string(), "-c"])
        .arg(&conf)
        .args(["-e", "stderr", "-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start nginx");
    let gw = Gateway {
        child,
        base: format!("http://{listen}"),
        dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{}/healthz", gw.base)).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "nginx did not listen within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw
}

/// (method, path, service) of every row of docs/API.md's "Every route" table served by one
/// service through the gateway, its placeholders filled in.
fn documented_routes() -> Vec<(String, String, String)> {
    let api = std::fs::read_to_string(workspace_root().join("docs/API.md")).expect("API.md");
    let table = api
        .split("Every route:")
        .nth(1)
        .expect("docs/API.md has its \"Every route:\" table")
        .split("\n\n")
        .nth(1)
        .expect("the table");
    let mut routes = Vec::new();
    for row in table.lines().skip(2) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (method, paths, service) = (cells[1], cells[2], cells[3]);
        if service != "workflow" && service != "runtime" {
            continue; // every process, or a direct address only
        }
        for path in paths.split('`').skip(1).step_by(2) {
            let path = path
                .replace("{id}/trigger", "wf_demo/trigger")
                .replace("runs/{id}", "runs/run_01jbx8v2k9m3n4p5q6r7s8t9v0")
                .replace("{id}", "wf_demo")
                .replace("{step}", "approve_it")
                .replace("{orgId}", "org_demo")
                .replace("{version}", "3")
                .replace("{file}", "app.js")
                .replace("...", "index.html");
            routes.push((method.to_string(), path, service.to_string()));
        }
    }
    routes
}

async fn send(client: &reqwest::Client, base: &str, method: &str, path: &str) -> (u16, Value) {
    let res = client
        .request(method.parse().expect("method"), format!("{base}{path}"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = res.status().as_u16();
    let text = res.text().await.expect("body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{method} {path}: {status} with non-JSON {text:?}"));
    (status, body)
}

#[tokio::test]
async fn every_documented_route_reaches_its_service_and_metrics_reaches_none() {
    let workflow = StandIn::start("workflow").await;
    let runtime = StandIn::start("runtime").await;
    let gw = gateway(&workflow, &runtime).await;
    // Redirects are answers too: never followed here.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");

    let mut routes = documented_routes();
    // Premise: the table was read (28 routes today).
    assert!(routes.len() >= 25, "read only {} routes", routes.len());
    assert!(routes.contains(&(
        "POST".into(),
        "/workflows/wf_demo/trigger".into(),
        "runtime".into()
    )));
    // Spellings the table implies: a query string, a trailing slash, ids that look like the
    // runtime's words, and unknown paths (workflow-service answers their 404).
    for (method, path, service) in [
        ("GET", "/workflows/runs?limit=1&cursor=abc", "runtime"),
        ("POST", "/workflows/wf_demo/trigger/", "runtime"),
        ("POST", "/workflows/wf_demo/trigger?x=1", "runtime"),
        (
            "GET",
            "/workflows/runs/run_01jbx8v2k9m3n4p5q6r7s8t9v0/events/",
            "runtime",
        ),
        ("GET", "/workflows/runsx", "workflow"),
        ("GET", "/workflows/wf_runs", "workflow"),
        ("GET", "/workflows/wf_demo/versions/trigger", "workflow"),
        ("GET", "/nothing/here", "workflow"),
        ("DELETE", "/workflows/wf_demo/trigger/more", "workflow"),
    ] {
        routes.push((method.into(), path.into(), service.into()));
    }

    for (method, path, service) in &routes {
        let before = (workflow.received().len(), runtime.received().len());
        let (status, body) = send(&client, &gw.base, method, path).await;
        assert_eq!(status, 200, "{method} {path}: {body}");
        assert_eq!(
            body["upstream"],
            service.as_str(),
            "{method} {path}: {body}"
        );
        assert_eq!(body["method"], method.as_str(), "{method} {path}");
        assert_eq!(
            body["path"],
            path.as_str(),
            "{method} {path}: the path changed"
        );
        let after = (workflow.received().len(), runtime.received().len());
        let expected = match service.as_str() {
            "workflow" => (before.0 + 1, before.1),
            _ => (before.0, before.1 + 1),
        };
        assert_eq!(
            after, expected,
            "{method} {path}: reached the wrong listener"
        );
    }

    // `/metrics` in every spelling nginx normalises: the gateway's own JSON 404, no upstream.
    let before = (workflow.received().len(), runtime.received().len());
    for path in [
        "/metrics",
        "//metrics",
        "/%6Detrics",
        "/x/../metrics",
        "/./metrics",
    ] {
        let (status, body) = send(&client, &gw.base, "GET", path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["success"], false, "{path}: {body}");
        assert_eq!(body["error"]["code"], "NOT_FOUND", "{path}: {body}");
    }
    assert_eq!(
        (workflow.received().len(), runtime.received().len()),
        before,
        "/metrics reached a service"
    );
    // Every request that reached a stand-in carried the gateway's request id.
    for r in workflow.received().iter().chain(runtime.received().iter()) {
        assert!(r.headers.contains_key("x-request-id"), "{r:?}");
    }
}

#[tokio::test]
async fn a_service_that_is_down_is_the_gateways_json_503() {
    let workflow = StandIn::start("workflow").await;
    let runtime = StandIn::start("runtime").await;
    let gw = gateway(&workflow, &runtime).await;
    let client = reqwest::Client::new();
    let (status, body) = send(&client, &gw.base, "GET", "/workflows/runs").await;
    assert_eq!((status, body["upstream"].as_str()), (200, Some("runtime")));
    drop(runtime); // nothing listens there any more
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = send(&client, &gw.base, "GET", "/workflows/runs").await;
        if status == 503 {
            assert_eq!(body["error"]["code"], "UNAVAILABLE", "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "still {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = send(&client, &gw.base, "GET", "/workflows").await;
    assert_eq!((status, body["upstream"].as_str()), (200, Some("workflow")));
}
