use serde_json::Value;
use shared_models::testing::{self, fixtures, TestDb};
use std::net::TcpListener;
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
    let db = TestDb::create();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let app = Application::with_parts(listener, db.pool.clone(), &testing::auth_config())
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
        let mut req = self.client.request(
            method.parse().expect("method"),
            format!("{}{path}", self.address),
        );
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        let text = res.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
        Reply { status, body }
    }

    /// A new key of `org_id` (creating the org), straight into the database.
    pub fn key_for(&self, org_id: &str) -> String {
        fixtures::org_key(&mut self._db.pool.get().expect("conn"), org_id)
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
        let text = res.text().await.expect("body");
        Reply {
            status,
            body: serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}")),
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
