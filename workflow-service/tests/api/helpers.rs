use serde_json::Value;
use shared_models::auth::AuthConfig;
use shared_models::db::PgPooled;
pub use thygon_testkit::http::{assert_error, fields, Reply};
use thygon_testkit::suites::ServiceUnderTest;
use thygon_testkit::{fixtures, TestDb};
use workflow_service::config::Settings;
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

/// The app [`Application::build`] makes from the environment's settings, on this test's
/// database and a free loopback port.
async fn spawn(auth: &AuthConfig, runtime_service_url: &str) -> TestApp {
    let db = TestDb::create();
    let mut settings = Settings::from_env().expect("settings");
    settings.http_addr = "127.0.0.1:0".into();
    settings.common.metrics_addr = None;
    settings.common.database_url = db.url.clone();
    settings.auth = auth.clone();
    settings.runtime_service_url = runtime_service_url.to_string();
    let app = Application::build(&settings).expect("build app");
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
        ServiceUnderTest::send_as(self, key, method, path, body).await
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
        Reply::read(res).await
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
