use reqwest::header::HeaderMap;
use serde_json::Value;
use shared_models::auth::AuthConfig;
use shared_models::db::PgPooled;
use std::net::TcpListener;
use thygon_testkit::{fixtures, TestDb};
use workflow_service::startup::Application;

pub const ORG: &str = "org_test";

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    /// An API key of [`ORG`]; `send` and `raw` use it.
    pub key: String,
    // Dropped with the app: the test's database goes with it.
    pub _db: TestDb,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(thygon_testkit::auth_config()).await
}

/// The app with its own authentication settings (e.g. a rate limit).
pub async fn spawn_app_with(auth: AuthConfig) -> TestApp {
    spawn(&auth, workflow_service::config::DEFAULT_RUNTIME_SERVICE_URL).await
}

/// The app fetching runtime-service's part of `/openapi.json` from `runtime_service_url`.
pub async fn spawn_app_with_runtime(runtime_service_url: &str) -> TestApp {
    spawn(&thygon_testkit::auth_config(), runtime_service_url).await
}

async fn spawn(auth: &AuthConfig, runtime_service_url: &str) -> TestApp {
    let db = TestDb::create();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let app = Application::with_runtime_url(listener, db.pool.clone(), auth, runtime_service_url)
        .expect("build app");
    let key = fixtures::org_key(&mut db.pool.get().expect("conn"), ORG);
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        client: reqwest::Client::new(),
        key,
        _db: db,
    }
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: HeaderMap,
}

impl Reply {
    /// A response header as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

impl TestApp {
    pub async fn send(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        self.send_as(Some(&self.key), method, path, body).await
    }

    /// A request with `key` as its bearer token, or with no Authorization header at all.
    pub async fn send_as(
        &self,
        key: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        let authorization = key.map(|k| format!("Bearer {k}"));
        self.send_auth(authorization.as_deref(), method, path, body)
            .await
    }

    /// A request with `authorization` as its Authorization header, verbatim (or none).
    pub async fn send_auth(
        &self,
        authorization: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        let mut req = self.client.request(
            method.parse().expect("method"),
            format!("{}{path}", self.address),
        );
        if let Some(value) = authorization {
            req = req.header("authorization", value);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
        Reply {
            status,
            body,
            headers,
        }
    }

    pub fn conn(&self) -> PgPooled {
        self._db.pool.get().expect("conn")
    }

    /// A new key of `org_id` (creating the org), straight into the database.
    pub fn key_for(&self, org_id: &str) -> String {
        fixtures::org_key(&mut self.conn(), org_id)
    }

    pub async fn raw(&self, method: &str, path: &str, content_type: &str, body: Vec<u8>) -> Reply {
        let res = self
            .client
            .request(
                method.parse().expect("method"),
                format!("{}{path}", self.address),
            )
            .header("content-type", content_type)
            .bearer_auth(&self.key)
            .body(body)
            .send()
            .await
            .expect("request");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.expect("body");
        Reply {
            status,
            body: serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}")),
            headers,
        }
    }
}

pub fn workflow(name: &str) -> Value {
    serde_json::json!({
        "name": name,
        "description": "Categorize and route incoming support tickets",
        "definition": {"steps": [{"name": "classify", "type": "agent", "agentId": "support-classifier",
            "instructions": "Determine ticket category and priority."}]}
    })
}

/// The `field`s of a failure envelope's details.
pub fn fields(body: &Value) -> Vec<String> {
    body["error"]["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|e| e["field"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Assert `r` is the failure envelope `status` / `code`; `what` names the request.
pub fn assert_error(r: &Reply, status: u16, code: &str, what: &str) {
    assert_eq!(
        (
            r.status,
            r.body["success"].as_bool(),
            r.body["error"]["code"].as_str()
        ),
        (status, Some(false), Some(code)),
        "{what}: {}",
        r.body
    );
}
