use chrono::{DateTime, Utc};
use diesel::prelude::*;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use runtime_service::config::{Settings, Tasks};
use runtime_service::metrics::DatabaseGauges;
use runtime_service::startup::Application;
use serde_json::{json, Value};
use shared_models::auth::AuthConfig;
use shared_models::db::PgPooled;
use shared_models::models::{NewRunEvent, OutboxRow, StepRunRow};
use shared_models::queue::{Broker, QueueNames};
use shared_models::schema::{outbox, run_events, runs, step_runs};
use shared_models::status::StepStatus;
use std::time::Duration;
pub use thygon_testkit::http::{assert_error, fields, Reply};
use thygon_testkit::{fixtures, http, TestDb};

pub const ORG: &str = "org_test";

pub fn amqp_url() -> String {
    shared_models::config::env_or("AMQP_URL", shared_models::config::DEFAULT_AMQP_URL)
}

pub fn broker() -> Broker {
    thygon_testkit::broker()
}

/// A broker address where nothing listens (port 1).
pub fn nowhere() -> Broker {
    Broker::new("amqp://guest:guest@127.0.0.1:1/%2f").expect("url")
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    /// An API key of [`ORG`]; `send` uses it unless the headers carry an Authorization.
    pub key: String,
    pub db: TestDb,
    pub prefix: String,
    /// The app's database gauges of `/metrics`: no background task reads them here, a test
    /// calls [`DatabaseGauges::refresh`].
    pub gauges: DatabaseGauges,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Queues are durable: remove this test's from the broker.
        thygon_testkit::delete_queues_blocking(&broker(), &self.prefix);
    }
}

/// The app with a real publisher; `amqp` lets a test point it at a broker that is not there.
pub async fn spawn_app_with_broker(amqp: &Broker) -> TestApp {
    let amqp = amqp.clone();
    spawn_app_configured(move |s| s.common.broker = amqp).await
}

/// The app with its own authentication settings (e.g. a rate limit).
pub async fn spawn_app_with_auth(auth: AuthConfig) -> TestApp {
    spawn_app_configured(move |s| s.auth = auth).await
}

/// The app with the queue sampler of `GET /ops/queues` running every 100 ms over this
/// test's queues, and workers called live for 3 s after a heartbeat (a 1 s interval).
pub async fn spawn_app_sampling() -> TestApp {
    spawn_app_configured(|s| {
        s.ops_sample_interval = Duration::from_millis(100);
        s.worker_heartbeat = Duration::from_secs(1);
        s.tasks.queue_sampler = true;
    })
    .await
}

/// The app with event streams ending after `lifetime` (`EVENT_STREAM_MAX_SECONDS`).
pub async fn spawn_app_with_stream_lifetime(lifetime: Duration) -> TestApp {
    spawn_app_configured(move |s| s.event_stream_max = lifetime).await
}

/// The settings of a test app: the environment's, on this test's database and queues, on a
/// free loopback port, with the test auth settings, and no background task besides the
/// trigger batcher (tests drive the relay, the scheduler, the sampler and the gauges).
pub fn test_settings(db: &TestDb, prefix: &str) -> Settings {
    let mut s = Settings::from_env().expect("settings");
    s.http_addr = "127.0.0.1:0".into();
    s.common.metrics_addr = None;
    s.common.database_url = db.url.clone();
    s.common.broker = broker();
    s.common.queue_prefix = prefix.to_string();
    s.auth = thygon_testkit::auth_config();
    s.tasks = Tasks::NONE;
    s
}

/// The app built by [`Application::build`] from [`test_settings`] as `configure` changes them.
pub async fn spawn_app_configured(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let (app, test) = build_app_configured(configure);
    tokio::spawn(app.run_until_stopped());
    test
}

/// [`spawn_app_configured`], not yet running: the caller may take parts of it (the sampler)
/// and must spawn `run_until_stopped`.
pub fn build_app_configured(configure: impl FnOnce(&mut Settings)) -> (Application, TestApp) {
    let db = TestDb::create();
    let prefix = thygon_testkit::unique_queue_prefix();
    let mut settings = test_settings(&db, &prefix);
    configure(&mut settings);
    let app = Application::build(&settings).expect("build app");
    let key = fixtures::org_key(&mut db.pool.get().expect("conn"), ORG);
    let address = format!("http://127.0.0.1:{}", app.port());
    let gauges = app.gauges().clone();
    let test = TestApp {
        address,
        client: reqwest::Client::new(),
        key,
        db,
        prefix,
        gauges,
    };
    (app, test)
}

pub async fn spawn_app() -> TestApp {
    spawn_app_configured(|_| {}).await
}

impl TestApp {
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let has_auth = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("authorization"));
        let bearer = format!("Bearer {}", self.key);
        let auth = (!has_auth).then_some(bearer.as_str());
        self.send_auth(auth, method, path, body, headers).await
    }

    /// A request with `authorization` as its Authorization header (or none at all), and
    /// `headers` besides.
    pub async fn send_auth(
        &self,
        authorization: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        http::send(
            &self.client,
            &self.address,
            authorization,
            method,
            path,
            body,
            headers,
        )
        .await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send("POST", path, Some(body), &[]).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, None, &[]).await
    }

    /// A GET with the operator's key ([`thygon_testkit::ADMIN_KEY`]).
    pub async fn get_as_admin(&self, path: &str) -> Reply {
        let admin = format!("Bearer {}", thygon_testkit::ADMIN_KEY);
        self.send_auth(Some(&admin), "GET", path, None, &[]).await
    }

    pub fn workflow(&self, name: &str, active: bool) -> String {
        let mut conn = self.db.pool.get().expect("conn");
        let def = json!({"steps": [{"name": "classify", "type": "agent", "agentId": "support-classifier",
            "instructions": "Determine ticket category and priority."}]});
        fixtures::insert_workflow(&mut conn, ORG, name, def, active)
    }

    pub fn conn(&self) -> PgPooled {
        self.db.pool.get().expect("conn")
    }

    /// A new key of `org_id` (creating the org), straight into the database.
    pub fn key_for(&self, org_id: &str) -> String {
        fixtures::org_key(&mut self.conn(), org_id)
    }

    /// A live workflow `wf_<name>` of this org at version 1 with `definition`.
    pub fn workflow_with(&self, name: &str, definition: Value) -> String {
        fixtures::insert_workflow(&mut self.conn(), ORG, name, definition, true)
    }

    /// A run of `workflow_id` (version 1) put in `status` as a worker would have left it:
    /// started unless PENDING, completed if it has ended.
    pub fn run_in(&self, workflow_id: &str, status: &str) -> String {
        self.run_of(ORG, workflow_id, status)
    }

    /// [`TestApp::run_in`] for a run of `org_id`.
    pub fn run_of(&self, org_id: &str, workflow_id: &str, status: &str) -> String {
        let mut conn = self.conn();
        let id = fixtures::insert_run(&mut conn, org_id, workflow_id, json!({}));
        let now = shared_models::time::now();
        let ended = ["COMPLETED", "FAILED", "CANCELLED"].contains(&status);
        diesel::update(runs::table.find(&id))
            .set((
                runs::status.eq(status),
                runs::started_at.eq((status != "PENDING").then_some(now)),
                runs::completed_at.eq(ended.then_some(now)),
            ))
            .execute(&mut conn)
            .expect("set run status");
        id
    }

    /// A step row at `position` in `status`; `edit` fills in the rest (attempt, output...).
    pub fn step(
        &self,
        run_id: &str,
        position: i32,
        name: &str,
        step_type: &str,
        status: &str,
        edit: impl FnOnce(&mut StepRunRow),
    ) {
        let status = StepStatus::parse(status).expect("a step status");
        let mut row = StepRunRow::new(run_id, name, position, step_type, status);
        edit(&mut row);
        diesel::insert_into(step_runs::table)
            .values(&row)
            .execute(&mut self.conn())
            .expect("insert step run");
    }

    /// Append an event to a run, as the worker writes them; returns its id.
    pub fn event(&self, event: NewRunEvent) -> i64 {
        diesel::insert_into(run_events::table)
            .values(&event)
            .returning(run_events::id)
            .get_result(&mut self.conn())
            .expect("insert event")
    }

    /// The outbox rows of a run, oldest first.
    pub fn outbox(&self, run_id: &str) -> Vec<OutboxRow> {
        outbox::table
            .filter(outbox::run_id.eq(run_id))
            .select(OutboxRow::as_select())
            .order(outbox::id)
            .load(&mut self.conn())
            .expect("outbox")
    }

    /// A connection and a channel in confirm mode on this test's queues (their topology
    /// declared), to put messages in them or take some out.
    pub async fn queues(&self) -> (lapin::Connection, lapin::Channel, QueueNames) {
        let names = QueueNames::new(&self.prefix);
        let conn = shared_models::queue::connect(&broker(), "test-queues")
            .await
            .expect("amqp");
        let channel = shared_models::queue::confirm_channel(&conn)
            .await
            .expect("channel");
        shared_models::queue::declare_topology(&channel, &names)
            .await
            .expect("topology");
        (conn, channel, names)
    }

    /// Messages waiting in this test's job queue (a passive declare: creates nothing).
    pub async fn queued(&self) -> u32 {
        let conn = shared_models::queue::connect(&broker(), "test-probe")
            .await
            .expect("amqp");
        let ch = conn.create_channel().await.expect("channel");
        let q = ch
            .queue_declare(
                QueueNames::new(&self.prefix).jobs.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("the job queue exists");
        let n = q.message_count();
        let _ = conn.close(200, "done".into()).await;
        n
    }
}

/// One `agent_turns` row as the worker writes it (`TestApp::turn`); `Turn::of` fills in a
/// plain one.
pub struct Turn<'a> {
    pub run_id: &'a str,
    pub step: &'a str,
    pub turn: i32,
    pub attempt: i32,
    pub org_id: &'a str,
    pub workflow_id: &'a str,
    pub agent_id: &'a str,
    pub model: &'a str,
    pub reply: Value,
    pub tool_results: Value,
    /// Input, output and cached tokens.
    pub tokens: (i64, i64, i64),
    pub cost_picos: i64,
    pub at: DateTime<Utc>,
}

impl<'a> Turn<'a> {
    /// Turn `turn` (attempt 1) of step `classify` of `run_id` (of `org_id`'s `workflow_id`),
    /// by `support-classifier` on `gpt-test`, answered at `at`, with a plain text reply.
    pub fn of(
        org_id: &'a str,
        workflow_id: &'a str,
        run_id: &'a str,
        turn: i32,
        at: DateTime<Utc>,
    ) -> Self {
        Turn {
            run_id,
            step: "classify",
            turn,
            attempt: 1,
            org_id,
            workflow_id,
            agent_id: "support-classifier",
            model: "gpt-test",
            reply: json!({"role": "assistant", "content": "billing"}),
            tool_results: json!({}),
            tokens: (0, 0, 0),
            cost_picos: 0,
            at,
        }
    }
}

impl TestApp {
    /// Write one turn as the worker does (`shared_models::agent_journal`): the turn, its
    /// usage added to the run's, then each of its tool results.
    pub fn turn(&self, t: Turn) {
        use shared_models::agent_journal::{add_tool_result, insert_turn, NewTurn};
        let mut conn = self.conn();
        insert_turn(
            &mut conn,
            &NewTurn {
                run_id: t.run_id.into(),
                step: t.step.into(),
                turn: t.turn,
                attempt: t.attempt,
                org_id: t.org_id.into(),
                workflow_id: t.workflow_id.into(),
                agent_id: t.agent_id.into(),
                model: t.model.into(),
                messages: json!([]),
                reply: t.reply,
                input_tokens: t.tokens.0,
                output_tokens: t.tokens.1,
                cached_tokens: t.tokens.2,
                cost_picos: t.cost_picos,
                created_at: t.at,
            },
        )
        .expect("insert a turn");
        for (call_id, result) in t.tool_results.as_object().into_iter().flatten() {
            add_tool_result(&mut conn, t.run_id, t.step, t.turn, call_id, result)
                .expect("add a tool result");
        }
    }
}

/// Now plus (or minus) some seconds, as the database stores it.
pub fn seconds_from_now(secs: i64) -> DateTime<Utc> {
    shared_models::time::now() + chrono::Duration::seconds(secs)
}
