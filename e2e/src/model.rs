//! A stand-in of the OpenAI Chat Completions API for the tests of model agents on the real
//! stack: a wiremock server on 127.0.0.1 (a port of the harness's pool), scripted by turn (a
//! turn is told by the number of assistant messages in the request), counting what it is
//! asked, and written into the stack's agents file as `stand-in-model`.

use crate::{free_port, Stack, StackOptions};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// The environment variable the stand-in's key is read from.
pub const KEY_ENV: &str = "THYGON_E2E_MODEL_KEY";

/// The stand-in's answers, by turn (0: the first); `hold` delays the first ask of that turn by
/// a minute (the worker asking it is killed meanwhile). Counts the asks of each turn.
struct Script {
    turns: Vec<ResponseTemplate>,
    hold: Option<usize>,
    asked: Arc<Mutex<HashMap<usize, usize>>>,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Respond for Script {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).expect("a JSON request");
        let turn = thygon_testkit::model::turn_of(&body);
        self.bodies.lock().unwrap().push(body);
        let asks = {
            let mut asked = self.asked.lock().unwrap();
            let n = asked.entry(turn).or_default();
            *n += 1;
            *n
        };
        let answer = self
            .turns
            .get(turn)
            .cloned()
            .unwrap_or_else(|| ResponseTemplate::new(500).set_body_string("no such turn"));
        match self.hold {
            Some(held) if held == turn && asks == 1 => answer.set_delay(Duration::from_secs(60)),
            _ => answer,
        }
    }
}

pub use thygon_testkit::model::completion;

/// A server on a port of the harness's pool (127.0.0.1).
pub async fn loopback_server() -> MockServer {
    let listener = std::net::TcpListener::bind(("127.0.0.1", free_port())).expect("bind");
    MockServer::builder().listener(listener).start().await
}

/// The stand-in model, its script, and what it was asked.
pub struct Model {
    pub server: MockServer,
    asked: Arc<Mutex<HashMap<usize, usize>>>,
    /// Every request's body, in order of arrival.
    pub bodies: Arc<Mutex<Vec<Value>>>,
}

impl Model {
    pub async fn start(turns: Vec<ResponseTemplate>, hold: Option<usize>) -> Model {
        let server = loopback_server().await;
        let (asked, bodies) = Default::default();
        let script = Script {
            turns,
            hold,
            asked: Arc::clone(&asked),
            bodies: Arc::clone(&bodies),
        };
        Mock::given(method("POST"))
            .and(path("/v1/chat/completions"))
            .respond_with(script)
            .mount(&server)
            .await;
        Model {
            server,
            asked,
            bodies,
        }
    }

    /// Asks per turn, turn 1 first.
    pub fn asked(&self) -> Vec<usize> {
        let asked = self.asked.lock().unwrap();
        (0..=asked.keys().copied().max().unwrap_or(0))
            .map(|t| asked.get(&t).copied().unwrap_or(0))
            .collect()
    }

    /// The agents file entry of the stand-in: `stand-in-model`, priced.
    pub fn agents_entry(&self) -> String {
        self.agents_entry_with("")
    }

    /// [`Model::agents_entry`] with more keys (TOML lines: `stream = true`, a `rateLimit`).
    pub fn agents_entry_with(&self, more: &str) -> String {
        format!(
            "[agents.stand-in-model]\nprovider = \"openai\"\nbaseUrl = \"{}/v1\"\n\
             model = \"gpt-e2e\"\napiKeyEnv = \"{KEY_ENV}\"\ntimeoutSeconds = 120\n\
             pricing = {{ inputPerMTok = 2.5, outputPerMTok = 10, cachedInputPerMTok = 1.25 }}\n{more}\n",
            self.server.uri()
        )
    }
}

/// The HTTP tool's server: `GET /orders` answers a list.
pub async fn tool_server() -> MockServer {
    let server = loopback_server().await;
    Mock::given(method("GET"))
        .and(path("/orders"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([{"id": "o_9"}])))
        .mount(&server)
        .await;
    server
}

/// A stack whose workers know the stand-in model and may reach the tool server.
pub async fn stack(model: &Model, tools: &MockServer, env: &[(&str, &str)]) -> Stack {
    stack_with(model.agents_entry(), 1, tools, env).await
}

/// [`stack`] with the agents file entry `agents` and `workers` worker processes.
pub async fn stack_with(
    agents: String,
    workers: usize,
    tools: &MockServer,
    env: &[(&str, &str)],
) -> Stack {
    let mut all = vec![
        (KEY_ENV.to_string(), "sk-e2e-key".to_string()),
        ("EGRESS_ALLOW".to_string(), tools.address().to_string()),
    ];
    all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Stack::start_opts(StackOptions {
        workers,
        env: all,
        agents,
        ..StackOptions::default()
    })
    .await
}
