//! Agent steps driven by a model (issue 18), through `Engine::process` on real PostgreSQL,
//! against a stand-in for the OpenAI Chat Completions API (a wiremock server on 127.0.0.1,
//! scripted per test, counting what it is asked). Tools are HTTP requests to another
//! loopback server.

mod common;

use common::*;
use diesel::prelude::*;
use executor_worker::agents::AgentRegistry;
use executor_worker::engine::{Engine, JobOutcome};
use serde_json::{json, Value};
use shared_models::db::{blocking, PgPool};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const KEY_ENV: &str = "THYGON_TEST_MODEL_KEY";

/// The stand-in's answer for a request, by the number of assistant messages already in it
/// (0: the first turn), so that an attempt resuming a conversation gets the next turn's
/// answer; every request body is kept.
struct Script {
    turns: Vec<ResponseTemplate>,
    seen: Arc<Mutex<Vec<Value>>>,
}

impl Respond for Script {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).expect("a JSON request");
        let turn = assistant_messages(&body);
        self.seen.lock().unwrap().push(body);
        self.turns
            .get(turn)
            .cloned()
            .unwrap_or_else(|| ResponseTemplate::new(500).set_body_string("no such turn"))
    }
}

use thygon_testkit::model::{completion, turn_of as assistant_messages};

/// A model server scripted with `turns`; what it was asked.
async fn model_server(turns: Vec<ResponseTemplate>) -> (MockServer, Arc<Mutex<Vec<Value>>>) {
    std::env::set_var(KEY_ENV, "sk-test-key-never-shown");
    let server = MockServer::start().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(Script {
            turns,
            seen: seen.clone(),
        })
        .mount(&server)
        .await;
    (server, seen)
}

/// The agent `triage` on `server`, priced at 2.5 / 10 / 1.25 USD per million tokens.
fn model_agent(server: &MockServer) -> AgentRegistry {
    AgentRegistry::from_toml_str(
        &format!(
            r#"
[agents.triage]
provider = "openai"
baseUrl = "{}/v1"
model = "gpt-test"
apiKeyEnv = "{KEY_ENV}"
pricing = {{ inputPerMTok = 2.5, outputPerMTok = 10, cachedInputPerMTok = 1.25 }}
"#,
            server.uri()
        ),
        None,
    )
    .expect("a valid agents file")
}

/// Cost in pico-USD of (prompt, completion, cached) at the test prices; OpenAI counts the
/// cached tokens inside the prompt tokens.
fn picos((prompt, completion, cached): (i64, i64, i64)) -> i64 {
    (prompt - cached) * 2_500_000 + completion * 10_000_000 + cached * 1_250_000
}

/// A tool server: `POST /customers` answers a customer record; `GET /orders` a list.
async fn tool_server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/customers"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "c_1", "plan": "pro"})))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/orders"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([{"id": "o_9"}])))
        .mount(&server)
        .await;
    server
}

fn triage_definition(tools: &MockServer, extra: Value) -> Value {
    let mut step = json!({
        "name": "triage", "type": "agent", "agentId": "triage",
        "instructions": "Triage the ticket of {{ variables.email }}",
        "retry": {"maxAttempts": 3, "backoffSeconds": 0.01},
        "tools": [
            {"name": "lookup_customer", "description": "Find a customer by email",
             "parameters": {"type": "object", "properties": {"email": {"type": "string"}}, "required": ["email"]},
             "request": {"method": "POST", "url": format!("{}/customers", tools.uri()),
                         "body": {"email": "{{ args.email }}"}}},
            {"name": "list_orders", "description": "List a customer's orders",
             "parameters": {"type": "object", "properties": {"customer": {"type": "string"}}},
             "request": {"url": format!("{}/orders?customer={{{{ args.customer }}}}", tools.uri())}}
        ]
    });
    if let (Value::Object(step), Value::Object(extra)) = (&mut step, extra) {
        step.extend(extra);
    }
    json!({ "steps": [step] })
}

fn engine_for(db: &thygon_testkit::TestDb, model: &MockServer, tools: &MockServer) -> Engine {
    engine_allowing(
        &db.pool,
        model_agent(model),
        CALL_TIMEOUT,
        &allow_server(tools),
    )
}

/// (turn, attempt, tool results) of each journaled turn of `step`.
async fn turns(pool: &PgPool, id: &str) -> Vec<(i32, i32, Value)> {
    use shared_models::schema::agent_turns::dsl::*;
    let id = id.to_string();
    blocking(pool, move |conn| {
        agent_turns
            .filter(run_id.eq(&id))
            .order(turn)
            .select((turn, attempt, tool_results))
            .load(conn)
    })
    .await
    .unwrap()
}

async fn run_usage(pool: &PgPool, id: &str) -> Option<(i64, i64, i64, i64)> {
    use shared_models::schema::run_usage::dsl::*;
    let id = id.to_string();
    blocking(pool, move |conn| {
        run_usage
            .find(&id)
            .select((input_tokens, output_tokens, cached_tokens, cost_picos))
            .first(conn)
            .optional()
    })
    .await
    .unwrap()
}

fn sum(usages: &[(i64, i64, i64)]) -> (i64, i64, i64, i64) {
    usages.iter().fold((0, 0, 0, 0), |(i, o, c, p), &u| {
        (i + u.0 - u.2, o + u.1, c + u.2, p + picos(u))
    })
}

#[tokio::test]
async fn a_four_turn_tool_loop_runs_its_tools_and_counts_every_token() {
    let db = test_db().await;
    let tools = tool_server().await;
    let usages = [(100, 10, 0), (180, 20, 64), (260, 15, 128), (300, 30, 256)];
    let (model, seen) = model_server(vec![
        completion(
            None,
            &[(
                "call_1",
                "lookup_customer",
                json!({"email": "ann@example.com"}),
            )],
            usages[0],
        ),
        // Two calls at once.
        completion(
            None,
            &[
                ("call_2", "list_orders", json!({"customer": "c_1"})),
                (
                    "call_3",
                    "lookup_customer",
                    json!({"email": "bob@example.com"}),
                ),
            ],
            usages[1],
        ),
        completion(
            Some("checking"),
            &[("call_4", "no_such_tool", json!({}))],
            usages[2],
        ),
        completion(
            Some(r#"{"label": "billing", "customer": "c_1"}"#),
            &[],
            usages[3],
        ),
    ])
    .await;
    let engine = engine_for(&db, &model, &tools);
    let definition = triage_definition(&tools, json!({}));
    let (_, run_id) = workflow_with_run(
        &db.pool,
        "loop",
        definition,
        json!({"email": "ann@example.com"}),
    )
    .await;
    assert_eq!(engine.process(&run_job(&run_id)).await, JobOutcome::Done);

    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status.as_str(), "COMPLETED", "{:?}", run.error);
    let steps = get_steps(&db.pool, &run_id).await;
    let output = find_step(&steps, "triage").output.clone().unwrap();
    assert_eq!(
        output["json"],
        json!({"label": "billing", "customer": "c_1"})
    );
    assert_eq!(output["turns"], 4);
    let (i, o, c, p) = sum(&usages);
    assert_eq!(
        output["usage"],
        json!({"inputTokens": i, "outputTokens": o, "cachedTokens": c,
                                        "costUsd": p as f64 / 1e12})
    );
    assert_eq!(
        run_usage(&db.pool, &run_id).await,
        Some((i, o, c, p)),
        "the run's usage is its turns' sum"
    );

    // The model was asked four times, each time with every earlier result.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[0]["tools"].as_array().unwrap().len(), 2);
    let last = seen[3]["messages"].as_array().unwrap();
    let results: Vec<&Value> = last.iter().filter(|m| m["role"] == "tool").collect();
    assert_eq!(results.len(), 4, "{last:#?}");
    assert!(
        results[0]["content"].as_str().unwrap().contains("c_1"),
        "{:?}",
        results[0]
    );
    assert!(results[3]["content"]
        .as_str()
        .unwrap()
        .contains("there is no tool 'no_such_tool'"));
    // The user message was templated; the tool request too.
    assert!(seen[0]["messages"]
        .to_string()
        .contains("Triage the ticket of ann@example.com"));
    let customer_calls: Vec<Value> = tools
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/customers")
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(customer_calls.len(), 2);
    assert!(customer_calls.contains(&json!({"email": "bob@example.com"})));

    let journal = turns(&db.pool, &run_id).await;
    assert_eq!(
        journal.iter().map(|t| (t.0, t.1)).collect::<Vec<_>>(),
        vec![(1, 1), (2, 1), (3, 1), (4, 1)]
    );
    assert_eq!(
        journal[1].2.as_object().unwrap().len(),
        2,
        "both results of turn 2 are journaled"
    );
}

#[tokio::test]
async fn a_worker_dying_after_turn_2_resumes_without_asking_turns_1_and_2_again() {
    let db = test_db().await;
    let tools = tool_server().await;
    let usages = [(50, 5, 0), (70, 6, 0), (90, 7, 0), (110, 8, 0)];
    let (model, seen) = model_server(vec![
        completion(
            None,
            &[(
                "call_1",
                "lookup_customer",
                json!({"email": "ann@example.com"}),
            )],
            usages[0],
        ),
        completion(
            None,
            &[("call_2", "list_orders", json!({"customer": "c_1"}))],
            usages[1],
        ),
        // Turn 3 hangs the first time: the worker dies while waiting for it.
        completion(
            None,
            &[("call_3", "list_orders", json!({"customer": "c_2"}))],
            usages[2],
        )
        .set_delay(Duration::from_secs(3600)),
        completion(Some("done"), &[], usages[3]),
    ])
    .await;
    let definition = triage_definition(&tools, json!({}));
    let (_, run_id) = workflow_with_run(
        &db.pool,
        "crash",
        definition,
        json!({"email": "ann@example.com"}),
    )
    .await;
    let first = engine_for(&db, &model, &tools);
    let job = run_job(&run_id);
    let dying = tokio::spawn(async move { first.process(&job).await });
    wait_for("turn 3 to be asked", Duration::from_secs(20), || {
        let seen = seen.clone();
        async move { (seen.lock().unwrap().len() >= 3).then_some(()) }
    })
    .await;
    // The worker dies: its task is gone, its lease runs out.
    dying.abort();
    let _ = dying.await;
    expire_lease(&db.pool, &run_id).await;
    assert_eq!(
        turns(&db.pool, &run_id).await.len(),
        2,
        "turns 1 and 2 were journaled"
    );

    // Another worker: turn 3 now answers at once (the stand-in's script is by turn, and the
    // delay applies to that response only when it is picked; give it a fresh server).
    let (model2, seen2) = model_server(vec![
        ResponseTemplate::new(500).set_body_string("turn 1 asked again"),
        ResponseTemplate::new(500).set_body_string("turn 2 asked again"),
        completion(
            None,
            &[("call_3", "list_orders", json!({"customer": "c_2"}))],
            usages[2],
        ),
        completion(Some("done"), &[], usages[3]),
    ])
    .await;
    let second = engine_for(&db, &model2, &tools);
    assert_eq!(second.process(&run_job(&run_id)).await, JobOutcome::Done);
    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status.as_str(), "COMPLETED", "{:?}", run.error);
    let asked: Vec<usize> = seen2
        .lock()
        .unwrap()
        .iter()
        .map(assistant_messages)
        .collect();
    assert_eq!(
        asked,
        vec![2, 3],
        "only turns 3 and 4 were asked of the second worker"
    );
    let journal = turns(&db.pool, &run_id).await;
    assert_eq!(
        journal.iter().map(|t| (t.0, t.1)).collect::<Vec<_>>(),
        vec![(1, 1), (2, 1), (3, 2), (4, 2)]
    );
    // Turn 2's tool ran once: its result was journaled before the crash.
    let orders = tools
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/orders")
        .count();
    assert_eq!(
        orders, 2,
        "list_orders ran for turn 2 once and for turn 3 once"
    );
    let (i, o, c, p) = sum(&usages);
    assert_eq!(run_usage(&db.pool, &run_id).await, Some((i, o, c, p)));
}

#[tokio::test]
async fn an_answer_off_its_schema_is_repaired_once() {
    let db = test_db().await;
    let tools = tool_server().await;
    let (model, seen) = model_server(vec![
        completion(Some(r#"{"label": "spam"}"#), &[], (10, 2, 0)),
        completion(
            Some(
                r#"```json
{"label": "bug"}
```"#,
            ),
            &[],
            (20, 3, 0),
        ),
    ])
    .await;
    let schema = json!({"type": "object", "properties": {"label": {"enum": ["billing", "bug"]}}, "required": ["label"]});
    let definition = triage_definition(&tools, json!({"outputSchema": schema}));
    let (_, run_id) =
        workflow_with_run(&db.pool, "repair", definition, json!({"email": "x"})).await;
    assert_eq!(
        engine_for(&db, &model, &tools)
            .process(&run_job(&run_id))
            .await,
        JobOutcome::Done
    );
    let steps = get_steps(&db.pool, &run_id).await;
    let step = find_step(&steps, "triage");
    assert_eq!(step.status.as_str(), "COMPLETED", "{:?}", step.error);
    assert_eq!(
        step.output.as_ref().unwrap()["json"],
        json!({"label": "bug"})
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen[0]["response_format"]["type"], "json_schema",
        "OpenAI gets the schema natively"
    );
    let repair = seen[1]["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(repair["role"], "user");
    assert!(
        repair["content"].as_str().unwrap().contains("at /label"),
        "{repair}"
    );
}

#[tokio::test]
async fn an_answer_still_off_its_schema_after_the_repair_fails_the_step_listing_the_problems() {
    let db = test_db().await;
    let tools = tool_server().await;
    let (model, seen) = model_server(vec![
        completion(Some(r#"{"label": "spam"}"#), &[], (10, 2, 0)),
        completion(Some("not json at all"), &[], (20, 3, 0)),
    ])
    .await;
    let schema = json!({"type": "object", "properties": {"label": {"enum": ["billing", "bug"]}}, "required": ["label"]});
    let definition = triage_definition(&tools, json!({"outputSchema": schema}));
    let (_, run_id) =
        workflow_with_run(&db.pool, "norepair", definition, json!({"email": "x"})).await;
    assert_eq!(
        engine_for(&db, &model, &tools)
            .process(&run_job(&run_id))
            .await,
        JobOutcome::Done
    );
    let steps = get_steps(&db.pool, &run_id).await;
    let step = find_step(&steps, "triage");
    assert_eq!(
        (step.status.as_str(), step.attempt),
        ("FAILED", 1),
        "not retried: {:?}",
        step.error
    );
    let error = step.error.clone().unwrap();
    assert!(
        error.contains("does not match outputSchema after 1 repair turn"),
        "{error}"
    );
    assert!(error.contains("the answer is not JSON"), "{error}");
    assert_eq!(seen.lock().unwrap().len(), 2);
    // Both turns were paid for.
    assert_eq!(
        run_usage(&db.pool, &run_id).await,
        Some((30, 5, 0, picos((10, 2, 0)) + picos((20, 3, 0))))
    );
}

#[tokio::test]
async fn a_loop_out_of_turns_fails_saying_so() {
    let db = test_db().await;
    let tools = tool_server().await;
    let call = || {
        completion(
            None,
            &[("c", "list_orders", json!({"customer": "c_1"}))],
            (5, 1, 0),
        )
    };
    let (model, seen) = model_server(vec![call(), call(), call()]).await;
    let definition = triage_definition(&tools, json!({"maxTurns": 2}));
    let (_, run_id) = workflow_with_run(&db.pool, "turns", definition, json!({"email": "x"})).await;
    assert_eq!(
        engine_for(&db, &model, &tools)
            .process(&run_job(&run_id))
            .await,
        JobOutcome::Done
    );
    let steps = get_steps(&db.pool, &run_id).await;
    let step = find_step(&steps, "triage");
    assert_eq!(step.status.as_str(), "FAILED");
    assert!(
        step.error
            .as_deref()
            .unwrap()
            .contains("within maxTurns (2)"),
        "{:?}",
        step.error
    );
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_failed_model_call_is_retried_and_the_next_attempt_goes_on_from_the_journal() {
    let db = test_db().await;
    let tools = tool_server().await;
    // Turn 2 fails once (HTTP 500), then answers: the scripted server answers by turn, so a
    // wrapper serves the failure first.
    struct FlakyTurn2 {
        inner: Script,
        failed: Mutex<bool>,
    }
    impl Respond for FlakyTurn2 {
        fn respond(&self, request: &Request) -> ResponseTemplate {
            let body: Value = serde_json::from_slice(&request.body).unwrap();
            let mut failed = self.failed.lock().unwrap();
            if assistant_messages(&body) == 1 && !*failed {
                *failed = true;
                self.inner.seen.lock().unwrap().push(body);
                return ResponseTemplate::new(500).set_body_string("overloaded");
            }
            drop(failed);
            self.inner.respond(request)
        }
    }
    std::env::set_var(KEY_ENV, "sk-test-key-never-shown");
    let model = MockServer::start().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(FlakyTurn2 {
            inner: Script {
                turns: vec![
                    completion(
                        None,
                        &[("call_1", "list_orders", json!({"customer": "c_1"}))],
                        (40, 4, 0),
                    ),
                    completion(Some("done"), &[], (60, 6, 0)),
                ],
                seen: seen.clone(),
            },
            failed: Mutex::new(false),
        })
        .mount(&model)
        .await;
    let definition = triage_definition(&tools, json!({}));
    let (_, run_id) = workflow_with_run(&db.pool, "flaky", definition, json!({"email": "x"})).await;
    assert_eq!(
        engine_for(&db, &model, &tools)
            .process(&run_job(&run_id))
            .await,
        JobOutcome::Done
    );
    let steps = get_steps(&db.pool, &run_id).await;
    let step = find_step(&steps, "triage");
    assert_eq!(
        (step.status.as_str(), step.attempt),
        ("COMPLETED", 2),
        "{:?}",
        step.error
    );
    let asked: Vec<usize> = seen
        .lock()
        .unwrap()
        .iter()
        .map(assistant_messages)
        .collect();
    assert_eq!(
        asked,
        vec![0, 1, 1],
        "turn 1 once; turn 2 failed, then asked again"
    );
    let orders = tools.received_requests().await.unwrap().len();
    assert_eq!(orders, 1, "the tool of turn 1 ran once");
    assert_eq!(step.output.as_ref().unwrap()["usage"]["inputTokens"], 100);
}

#[tokio::test]
async fn tools_on_an_http_protocol_agent_fail_the_step_at_once() {
    let db = test_db().await;
    let tools = tool_server().await;
    let agent = MockServer::start().await;
    let definition = triage_definition(&tools, json!({}));
    let (_, run_id) =
        workflow_with_run(&db.pool, "httpagent", definition, json!({"email": "x"})).await;
    let engine = engine_allowing(
        &db.pool,
        registry(&[("triage", format!("{}/triage", agent.uri()))]),
        CALL_TIMEOUT,
        &allow_server(&tools),
    );
    assert_eq!(engine.process(&run_job(&run_id)).await, JobOutcome::Done);
    let steps = get_steps(&db.pool, &run_id).await;
    let step = find_step(&steps, "triage");
    assert_eq!((step.status.as_str(), step.attempt), ("FAILED", 1));
    assert!(step
        .error
        .as_deref()
        .unwrap()
        .contains("need an agent whose entry names a model provider"));
    assert!(agent.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_tool_aimed_inside_the_network_is_refused_and_the_model_is_told() {
    let db = test_db().await;
    let tools = tool_server().await;
    let (model, seen) = model_server(vec![
        completion(
            None,
            &[(
                "call_1",
                "fetch",
                json!({"url": "http://127.0.0.1:9/admin"}),
            )],
            (5, 1, 0),
        ),
        completion(Some("could not fetch"), &[], (5, 1, 0)),
    ])
    .await;
    // No EGRESS_ALLOW: loopback is refused, as every inside address is (decided before any
    // connection: the address is a literal).
    let definition = json!({ "steps": [{
        "name": "triage", "type": "agent", "agentId": "triage", "instructions": "go",
        "tools": [{"name": "fetch", "parameters": {"type": "object", "properties": {"url": {"type": "string"}}},
                   "request": {"url": "{{ args.url }}"}}]
    }]});
    let (_, run_id) = workflow_with_run(&db.pool, "ssrf", definition, json!({})).await;
    let engine = engine(&db.pool, model_agent(&model), CALL_TIMEOUT);
    assert_eq!(engine.process(&run_job(&run_id)).await, JobOutcome::Done);
    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status.as_str(), "COMPLETED", "{:?}", run.error);
    let seen = seen.lock().unwrap().clone();
    let result = seen[1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .unwrap()
        .clone();
    assert!(
        result["content"].as_str().unwrap().contains("refused"),
        "{result}"
    );
    assert!(tools.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn an_empty_answer_is_asked_again_within_max_turns() {
    let db = test_db().await;
    let tools = tool_server().await;
    let (model, seen) = model_server(vec![
        completion(Some(""), &[], (5, 0, 0)),
        completion(Some("billing"), &[], (9, 1, 0)),
    ])
    .await;
    let (_, run_id) = workflow_with_run(
        &db.pool,
        "empty",
        triage_definition(&tools, json!({})),
        json!({"email": "x"}),
    )
    .await;
    assert_eq!(
        engine_for(&db, &model, &tools)
            .process(&run_job(&run_id))
            .await,
        JobOutcome::Done
    );
    let steps = get_steps(&db.pool, &run_id).await;
    let step = find_step(&steps, "triage");
    assert_eq!(step.status.as_str(), "COMPLETED", "{:?}", step.error);
    assert_eq!(
        (
            step.output.as_ref().unwrap()["content"].clone(),
            step.output.as_ref().unwrap()["turns"].clone()
        ),
        (json!("billing"), json!(2))
    );
    let nudge = seen.lock().unwrap()[1]["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert!(
        nudge["content"]
            .as_str()
            .unwrap()
            .starts_with("Your answer was empty"),
        "{nudge}"
    );
}

#[tokio::test]
async fn a_budget_stops_the_loop_before_the_call_that_would_go_over() {
    let db = test_db().await;
    let tools = tool_server().await;
    let call = || {
        completion(
            None,
            &[("c", "list_orders", json!({"customer": "c_1"}))],
            (100, 10, 0),
        )
    };
    let (model, seen) = model_server(vec![call(), call(), call(), call()]).await;
    let mut definition = triage_definition(&tools, json!({}));
    definition["budget"] = json!({"maxTokens": 150});
    let (workflow_id, run_id) =
        workflow_with_run(&db.pool, "budget", definition, json!({"email": "x"})).await;
    let engine = engine_for(&db, &model, &tools);
    assert_eq!(engine.process(&run_job(&run_id)).await, JobOutcome::Done);
    let steps = get_steps(&db.pool, &run_id).await;
    let step = find_step(&steps, "triage");
    assert_eq!(
        (step.status.as_str(), step.attempt),
        ("FAILED", 1),
        "not retried"
    );
    let error = step.error.clone().unwrap();
    assert!(
        error.starts_with("BUDGET_EXCEEDED: the run has used 220 tokens of its budget of 150"),
        "{error}"
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "110 tokens after turn 1 allow turn 2; 220 stop turn 3"
    );

    // A trigger's override wins over the definition's: 100 tokens stop it after one turn.
    let second = insert_runs(&db.pool, &workflow_id, 1, |_| json!({"email": "x"}))
        .await
        .remove(0);
    let id = second.clone();
    blocking(&db.pool, move |conn| {
        diesel::update(shared_models::schema::runs::table.find(&id))
            .set(shared_models::schema::runs::budget.eq(Some(json!({"maxTokens": 100}))))
            .execute(conn)
    })
    .await
    .unwrap();
    assert_eq!(engine.process(&run_job(&second)).await, JobOutcome::Done);
    let steps = get_steps(&db.pool, &second).await;
    let error = find_step(&steps, "triage").error.clone().unwrap();
    assert!(
        error.contains("used 110 tokens of its budget of 100"),
        "{error}"
    );
    assert_eq!(seen.lock().unwrap().len(), 3);
}

/// The agent `triage` on `server` with `rateLimit = { requestsPerMinute = rpm }`.
fn limited_agent(server: &MockServer, rpm: i64) -> AgentRegistry {
    AgentRegistry::from_toml_str(
        &format!(
            r#"
[agents.triage]
provider = "openai"
baseUrl = "{}/v1"
model = "gpt-test"
apiKeyEnv = "{KEY_ENV}"
rateLimit = {{ requestsPerMinute = {rpm} }}
"#,
            server.uri()
        ),
        None,
    )
    .expect("a valid agents file")
}

/// A one-turn agent step (no tools).
fn one_turn() -> Value {
    json!({ "steps": [{"name": "triage", "type": "agent", "agentId": "triage", "instructions": "go"}] })
}

#[tokio::test]
async fn a_short_retry_after_is_waited_in_the_slot_and_is_not_a_failed_attempt() {
    let db = test_db().await;
    let tools = tool_server().await;
    let (model, seen) = model_server(vec![completion(Some("done"), &[], (5, 1, 0))]).await;
    // The first call is refused with Retry-After: 1.
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "1"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&model)
        .await;
    let (_, run_id) = workflow_with_run(&db.pool, "retryafter", one_turn(), json!({})).await;
    let started = std::time::Instant::now();
    assert_eq!(
        engine_for(&db, &model, &tools)
            .process(&run_job(&run_id))
            .await,
        JobOutcome::Done
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "it waited as asked"
    );
    let steps = get_steps(&db.pool, &run_id).await;
    let step = find_step(&steps, "triage");
    // maxAttempts is 1: a 429 counted as a failure would have failed the step.
    assert_eq!(
        (step.status.as_str(), step.attempt),
        ("COMPLETED", 2),
        "{:?}",
        step.error
    );
    let logs = logs_of(&get_events(&db.pool, &run_id).await, Some("triage"));
    assert!(
        logs.iter()
            .any(|(_, m)| m.contains("rate limiting (HTTP 429)")
                && m.contains("trying again in 1.000s")),
        "{logs:?}"
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "one answered call after the refused one"
    );
}

#[tokio::test]
async fn a_long_retry_after_parks_the_run_until_then_and_it_goes_on_from_its_journal() {
    let db = test_db().await;
    let tools = tool_server().await;
    let (model, seen) = model_server(vec![
        completion(
            None,
            &[("call_1", "list_orders", json!({"customer": "c_1"}))],
            (5, 1, 0),
        ),
        completion(Some("done"), &[], (6, 1, 0)),
    ])
    .await;
    // Turn 2's first ask is refused for 2 seconds.
    struct RefuseTurn2Once(Mutex<bool>);
    impl Respond for RefuseTurn2Once {
        fn respond(&self, _: &Request) -> ResponseTemplate {
            *self.0.lock().unwrap() = true;
            ResponseTemplate::new(429).insert_header("retry-after", "2")
        }
    }
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(wiremock::matchers::body_string_contains(
            "\"role\":\"tool\"",
        ))
        .respond_with(RefuseTurn2Once(Mutex::new(false)))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&model)
        .await;
    let (_, run_id) = workflow_with_run(
        &db.pool,
        "parked",
        triage_definition(&tools, json!({})),
        json!({"email": "x"}),
    )
    .await;
    let mut engine = engine_for(&db, &model, &tools);
    engine.limits.wait_in_slot = Duration::from_millis(500);
    assert_eq!(engine.process(&run_job(&run_id)).await, JobOutcome::Done);
    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status.as_str(), "WAITING", "parked, holding no worker");
    assert!(run.lease_owner.is_none());
    let wake = run.wake_at.expect("a wake-up time");
    let steps = get_steps(&db.pool, &run_id).await;
    assert_eq!(find_step(&steps, "triage").status.as_str(), "WAITING");
    // Woken (as the runtime's scheduler does) once the wait is over.
    wait_until_past(wake).await;
    assert_eq!(engine.process(&run_job(&run_id)).await, JobOutcome::Done);
    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status.as_str(), "COMPLETED", "{:?}", run.error);
    let asked: Vec<usize> = seen
        .lock()
        .unwrap()
        .iter()
        .map(assistant_messages)
        .collect();
    assert_eq!(
        asked,
        vec![0, 1],
        "turn 1 was not asked again after the wait"
    );
    assert_eq!(
        tools.received_requests().await.unwrap().len(),
        1,
        "nor its tool run again"
    );
}

#[tokio::test]
async fn two_workers_share_an_agents_rate_limit_and_park_instead_of_waiting_in_a_slot() {
    let db = test_db().await;
    let tools = tool_server().await;
    // Every request's arrival time.
    struct Timed(Arc<Mutex<Vec<std::time::Instant>>>);
    impl Respond for Timed {
        fn respond(&self, _: &Request) -> ResponseTemplate {
            self.0.lock().unwrap().push(std::time::Instant::now());
            completion(Some("done"), &[], (5, 1, 0))
        }
    }
    std::env::set_var(KEY_ENV, "sk-test-key-never-shown");
    let model = MockServer::start().await;
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(Timed(arrivals.clone()))
        .mount(&model)
        .await;
    // 2 requests per window of 1 s (AGENT_RATE_WINDOW_SECONDS shortened for the test); a
    // wait over 100 ms parks.
    let window = Duration::from_secs(1);
    let workers: Vec<Engine> = (0..2)
        .map(|_| {
            let mut e = engine_allowing(
                &db.pool,
                limited_agent(&model, 2),
                CALL_TIMEOUT,
                &allow_server(&tools),
            );
            e.limits.rate_window = window;
            e.limits.wait_in_slot = Duration::from_millis(100);
            e
        })
        .collect();
    let (workflow_id, first) = workflow_with_run(&db.pool, "limited", one_turn(), json!({})).await;
    let mut runs = insert_runs(&db.pool, &workflow_id, 7, |_| json!({})).await;
    runs.push(first);
    let mut parked = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        // Each worker takes half of the runs not ended, all at once.
        let mut open = Vec::new();
        for id in &runs {
            let run = get_run(&db.pool, id).await;
            match run.status.as_str() {
                "COMPLETED" => {}
                "WAITING" if run.wake_at.is_some_and(|w| w > shared_models::time::now()) => {
                    open.push(None)
                }
                _ => open.push(Some(id.clone())),
            }
        }
        if open.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the runs did not all complete"
        );
        let due: Vec<String> = open.into_iter().flatten().collect();
        let jobs = due.iter().enumerate().map(|(i, id)| {
            let (worker, job) = (&workers[i % 2], run_job(id));
            async move { worker.process(&job).await }
        });
        for outcome in futures_util::future::join_all(jobs).await {
            assert_eq!(outcome, JobOutcome::Done);
        }
        for id in &due {
            if get_run(&db.pool, id).await.status.as_str() == "WAITING" {
                parked += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        parked > 0,
        "runs waiting for the limit were parked, holding no slot"
    );
    let arrivals = arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len(), 8);
    for (i, &t) in arrivals.iter().enumerate() {
        let in_window = arrivals
            .iter()
            .filter(|&&u| u >= t && u < t + window)
            .count();
        assert!(
            in_window <= 2,
            "{in_window} requests within {window:?} of request {i}"
        );
    }
}

/// `wf_lookup`: a tool workflow answering a customer record for `variables.email`.
async fn lookup_workflow(pool: &PgPool) -> String {
    insert_workflow(
        pool,
        "lookup",
        json!({ "steps": [{"name": "find", "type": "transform",
                           "value": {"plan": "pro", "email": "{{ variables.email }}"}}] }),
    )
    .await
}

/// An agent step with one workflow tool, `lookup_customer`, and no other.
fn workflow_tool_definition() -> Value {
    json!({ "steps": [{
        "name": "triage", "type": "agent", "agentId": "triage", "instructions": "go",
        "tools": [{"name": "lookup_customer", "description": "Find a customer",
                   "parameters": {"type": "object", "properties": {"email": {"type": "string"}}, "required": ["email"]},
                   "workflowId": "wf_lookup"}]
    }]})
}

/// The one child run of `parent`, once it exists.
async fn the_child(pool: &PgPool, parent: &str) -> shared_models::models::RunRow {
    wait_for("the tool's child run", Duration::from_secs(20), || async {
        child_runs(pool, parent).await.into_iter().next()
    })
    .await
}

#[tokio::test]
async fn a_workflow_tool_is_a_child_run_whose_output_is_the_result() {
    let db = test_db().await;
    let tools = tool_server().await;
    lookup_workflow(&db.pool).await;
    let (model, seen) = model_server(vec![
        completion(
            None,
            &[(
                "call_1",
                "lookup_customer",
                json!({"email": "ann@example.com"}),
            )],
            (5, 1, 0),
        ),
        completion(Some("pro customer"), &[], (5, 1, 0)),
    ])
    .await;
    let (_, run_id) =
        workflow_with_run(&db.pool, "wftool", workflow_tool_definition(), json!({})).await;
    let engine = Arc::new(engine_for(&db, &model, &tools));
    let parent = {
        let (engine, job) = (engine.clone(), run_job(&run_id));
        tokio::spawn(async move { engine.process(&job).await })
    };
    // The worker's consumer would take the child's job; here the test does, while the
    // agent waits for it in its slot.
    let child = the_child(&db.pool, &run_id).await;
    assert_eq!(child.parent_step.as_deref(), Some("triage"));
    assert_eq!(child.variables, json!({"email": "ann@example.com"}));
    assert_eq!(engine.process(&run_job(&child.id)).await, JobOutcome::Done);
    assert_eq!(parent.await.unwrap(), JobOutcome::Done);
    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status.as_str(), "COMPLETED", "{:?}", run.error);
    let seen = seen.lock().unwrap().clone();
    let result = seen[1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .unwrap()
        .clone();
    let content: Value = serde_json::from_str(result["content"].as_str().unwrap()).unwrap();
    assert_eq!(
        content,
        json!({"find": {"plan": "pro", "email": "ann@example.com"}})
    );
}

#[tokio::test]
async fn a_slow_tool_run_parks_the_agent_until_its_end_wakes_it() {
    let db = test_db().await;
    let tools = tool_server().await;
    lookup_workflow(&db.pool).await;
    let (model, seen) = model_server(vec![
        completion(
            None,
            &[(
                "call_1",
                "lookup_customer",
                json!({"email": "bob@example.com"}),
            )],
            (5, 1, 0),
        ),
        completion(Some("done"), &[], (5, 1, 0)),
    ])
    .await;
    let (_, run_id) = workflow_with_run(
        &db.pool,
        "parkedtool",
        workflow_tool_definition(),
        json!({}),
    )
    .await;
    let mut engine = engine_for(&db, &model, &tools);
    engine.limits.wait_in_slot = Duration::from_millis(100);
    assert_eq!(engine.process(&run_job(&run_id)).await, JobOutcome::Done);
    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(
        (run.status.as_str(), run.lease_owner.as_deref()),
        ("WAITING", None),
        "parked, no slot held"
    );
    let child = the_child(&db.pool, &run_id).await;
    assert_eq!(child.status.as_str(), "PENDING");
    // The child runs; its end queues a job for its parent, which goes on from its journal.
    assert_eq!(engine.process(&run_job(&child.id)).await, JobOutcome::Done);
    let woken = get_outbox(&db.pool)
        .await
        .into_iter()
        .filter(|o| o.run_id == run_id)
        .count();
    assert_eq!(woken, 1, "the child's end queued the parent's job");
    assert_eq!(engine.process(&run_job(&run_id)).await, JobOutcome::Done);
    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status.as_str(), "COMPLETED", "{:?}", run.error);
    let asked: Vec<usize> = seen
        .lock()
        .unwrap()
        .iter()
        .map(assistant_messages)
        .collect();
    assert_eq!(asked, vec![0, 1]);
    assert_eq!(
        child_runs(&db.pool, &run_id).await.len(),
        1,
        "one child, not one per wake-up"
    );
}

#[tokio::test]
async fn cancelling_an_agent_waiting_on_a_tool_run_cancels_the_tool_run() {
    let db = test_db().await;
    let tools = tool_server().await;
    lookup_workflow(&db.pool).await;
    let (model, _) = model_server(vec![completion(
        None,
        &[(
            "call_1",
            "lookup_customer",
            json!({"email": "x@example.com"}),
        )],
        (5, 1, 0),
    )])
    .await;
    let (_, run_id) = workflow_with_run(
        &db.pool,
        "canceltool",
        workflow_tool_definition(),
        json!({}),
    )
    .await;
    let mut engine = engine_for(&db, &model, &tools);
    engine.limits.wait_in_slot = Duration::from_millis(50);
    assert_eq!(engine.process(&run_job(&run_id)).await, JobOutcome::Done);
    cancel_run(&db.pool, &run_id).await;
    let child = the_child(&db.pool, &run_id).await;
    assert_eq!(child.status.as_str(), "CANCELLED", "no orphan tool run");
}

/// A streamed chat completion: `pieces` of text, then the stop and the usage.
fn streamed(pieces: &[&str], usage: (i64, i64)) -> ResponseTemplate {
    let mut body = String::new();
    for piece in pieces {
        body.push_str(&format!(
            "data: {}\n\n",
            json!({"choices": [{"index": 0, "delta": {"content": piece}}]})
        ));
    }
    body.push_str(&format!(
        "data: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        json!({"choices": [], "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1}})
    ));
    ResponseTemplate::new(200).set_body_raw(body, "text/event-stream")
}

/// The live pieces written for `run_id`: (attempt, kind, data), oldest first.
async fn pieces(pool: &PgPool, run: &str) -> Vec<(i32, String, Value)> {
    use shared_models::schema::agent_deltas::dsl::*;
    let run = run.to_string();
    blocking(pool, move |conn| {
        agent_deltas
            .filter(run_id.eq(&run))
            .order(id)
            .select((attempt, kind, data))
            .load(conn)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_streaming_agent_writes_its_pieces_live_and_a_retry_resets_them() {
    let db = test_db().await;
    let tools = tool_server().await;
    std::env::set_var(KEY_ENV, "sk-test-key-never-shown");
    let model = MockServer::start().await;
    // The first ask fails (a retried attempt follows), the second streams its answer.
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(500).set_body_string("overloaded"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&model)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(
            streamed(&["Bill", "ing: ", "refund ", "requested"], (30, 4))
                .set_delay(Duration::from_millis(10)),
        )
        .mount(&model)
        .await;
    let registry = AgentRegistry::from_toml_str(
        &format!(
            "[agents.triage]\nprovider = \"openai\"\nbaseUrl = \"{}/v1\"\nmodel = \"m\"\napiKeyEnv = \"{KEY_ENV}\"\nstream = true\n",
            model.uri()
        ),
        None,
    )
    .unwrap();
    let definition = json!({ "steps": [{"name": "triage", "type": "agent", "agentId": "triage",
        "instructions": "go", "retry": {"maxAttempts": 2, "backoffSeconds": 0.01}}] });
    let (_, run_id) = workflow_with_run(&db.pool, "streams", definition, json!({})).await;
    let engine = engine_allowing(&db.pool, registry, CALL_TIMEOUT, &allow_server(&tools));
    assert_eq!(engine.process(&run_job(&run_id)).await, JobOutcome::Done);
    let steps = get_steps(&db.pool, &run_id).await;
    let step = find_step(&steps, "triage");
    assert_eq!(
        (step.status.as_str(), step.attempt),
        ("COMPLETED", 2),
        "{:?}",
        step.error
    );
    assert_eq!(
        step.output.as_ref().unwrap()["content"],
        "Billing: refund requested"
    );
    let pieces = pieces(&db.pool, &run_id).await;
    assert_eq!(
        pieces[0],
        (2, "reset".to_string(), json!({"attempt": 2})),
        "{pieces:#?}"
    );
    let text: String = pieces[1..]
        .iter()
        .map(|(attempt, kind, data)| {
            assert_eq!(
                (*attempt, kind.as_str(), &data["turn"]),
                (2, "delta", &json!(1))
            );
            data["text"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(
        text, "Billing: refund requested",
        "the pieces, in order, are the answer"
    );
    assert!(pieces.len() <= 5, "coalesced: {pieces:#?}");
}

#[tokio::test]
async fn a_final_answer_is_journaled_in_the_same_commit_as_the_steps_end() {
    let db = test_db().await;
    let tools = tool_server().await;
    let (model, _) = model_server(vec![
        completion(
            None,
            &[("call_1", "list_orders", json!({"customer": "c_1"}))],
            (5, 1, 0),
        ),
        completion(Some("done"), &[], (6, 2, 0)),
    ])
    .await;
    let (_, run_id) = workflow_with_run(
        &db.pool,
        "onecommit",
        triage_definition(&tools, json!({})),
        json!({"email": "x"}),
    )
    .await;
    assert_eq!(
        engine_for(&db, &model, &tools)
            .process(&run_job(&run_id))
            .await,
        JobOutcome::Done
    );
    #[derive(diesel::QueryableByName, Debug, PartialEq)]
    struct Xmin {
        #[diesel(sql_type = diesel::sql_types::Text)]
        xmin: String,
    }
    let id = run_id.clone();
    let (turns, step): (Vec<Xmin>, Xmin) = blocking(&db.pool, move |conn| {
        let turns = diesel::sql_query(
            "SELECT xmin::text AS xmin FROM agent_turns WHERE run_id = $1 ORDER BY turn",
        )
        .bind::<diesel::sql_types::Text, _>(&id)
        .load(conn)?;
        let step = diesel::sql_query(
            "SELECT xmin::text AS xmin FROM step_runs WHERE run_id = $1 AND name = 'triage'",
        )
        .bind::<diesel::sql_types::Text, _>(&id)
        .get_result(conn)?;
        Ok((turns, step))
    })
    .await
    .unwrap();
    assert_eq!(turns.len(), 2);
    assert_eq!(
        turns[1], step,
        "the answer and the step's end: one transaction"
    );
    assert_ne!(
        turns[0], step,
        "a tool turn is journaled at once, before the tools run"
    );
    assert_eq!(run_usage(&db.pool, &run_id).await.map(|u| u.1), Some(3));
}
