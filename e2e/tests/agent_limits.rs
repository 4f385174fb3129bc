//! Model agents' limits and live answers on the real stack (real PostgreSQL and RabbitMQ, real
//! worker processes, the stand-in model of `thygon_e2e::model` on 127.0.0.1):
//!
//! - an answer off its `outputSchema` is repaired once, and fails after the repair;
//! - a budget stops a tool loop before the call that would go over it, and a trigger's own
//!   budget overrides the definition's;
//! - two worker processes share one agent's `rateLimit`: the stand-in never sees more calls in
//!   a window than the limit, and the runs waiting for room park (WAITING, no slot held) and
//!   are woken by the scheduler;
//! - a streaming agent's pieces arrive on the run's event stream, in order, while it runs.
//!
//! One scenario at a time (`SERIAL`): each starts a stack.

use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thygon_e2e::model::{completion, loopback_server, stack_with, tool_server, Model};
use wiremock::matchers::{method, path};
use wiremock::{Mock, Request, Respond, ResponseTemplate};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const RUN_WITHIN: Duration = Duration::from_secs(60);

/// A one-step agent workflow on the stand-in; `tools` adds the HTTP tool `list_orders`.
fn agent_definition(tools: Option<&str>, extra: Value) -> Value {
    let mut step = json!({"name": "triage", "type": "agent", "agentId": "stand-in-model",
                          "instructions": "go"});
    if let Some(uri) = tools {
        step["tools"] = json!([{"name": "list_orders", "parameters": {"type": "object"},
            "request": {"url": format!("{uri}/orders")}}]);
    }
    let mut definition = json!({ "steps": [step] });
    if let (Value::Object(def), Value::Object(extra)) = (&mut definition, extra) {
        def.extend(extra);
    }
    definition
}

#[tokio::test]
async fn a_budget_stops_a_loop_and_a_triggers_budget_overrides_the_definitions() {
    let _one = SERIAL.lock().await;
    let call = || completion(None, &[("c", "list_orders", json!({}))], (100, 10, 0));
    let model = Model::start(vec![call(), call(), call(), call()], None).await;
    let tools = tool_server().await;
    let stack = stack_with(model.agents_entry(), 1, &tools, &[]).await;
    stack
        .create_workflow(
            "budgeted",
            agent_definition(Some(&tools.uri()), json!({"budget": {"maxTokens": 150}})),
        )
        .await;
    let run_id = stack.trigger("wf_budgeted", json!({})).await;
    let run = stack.wait_for_run(&run_id, RUN_WITHIN).await;
    assert_eq!(run["status"], "FAILED", "{run}");
    let error = run["steps"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("BUDGET_EXCEEDED: the run has used 220 tokens of its budget of 150"),
        "{error}"
    );
    assert_eq!(run["steps"][0]["attempt"], 1, "not retried");
    assert_eq!(run["usage"]["outputTokens"], 20, "two turns were paid for");
    assert_eq!(model.asked(), vec![1, 1], "the third call was never made");

    // The trigger's budget wins: 100 tokens stop it after one turn.
    let (status, body) = stack
        .call(
            "POST",
            "/workflows/wf_budgeted/trigger",
            Some(json!({"budget": {"maxTokens": 100}})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let run = stack
        .wait_for_run(body["data"]["id"].as_str().unwrap(), RUN_WITHIN)
        .await;
    let error = run["steps"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("used 110 tokens of its budget of 100"),
        "{error}"
    );
}

/// Answers at once, noting when each request arrived.
struct Timed(Arc<Mutex<Vec<Instant>>>);

impl Respond for Timed {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        self.0.lock().unwrap().push(Instant::now());
        completion(Some("done"), &[], (5, 1, 0))
    }
}

#[tokio::test]
async fn two_workers_share_an_agents_rate_limit_and_runs_waiting_for_it_park() {
    let _one = SERIAL.lock().await;
    let model = Model::start(vec![], None).await;
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(Timed(arrivals.clone()))
        .with_priority(1)
        .mount(&model.server)
        .await;
    let tools = tool_server().await;
    // 2 calls per 2-second window (the window shortened for the test), a wait over 200 ms
    // parks; the scheduler wakes parked runs every 200 ms.
    let stack = stack_with(
        model.agents_entry_with("rateLimit = { requestsPerMinute = 2 }"),
        2,
        &tools,
        &[
            ("AGENT_RATE_WINDOW_SECONDS", "2"),
            ("AGENT_WAIT_IN_SLOT_SECONDS", "0.2"),
            ("SCHEDULER_INTERVAL_SECONDS", "0.2"),
        ],
    )
    .await;
    stack
        .create_workflow("limited", agent_definition(None, json!({})))
        .await;
    let mut runs = Vec::new();
    for _ in 0..8 {
        runs.push(stack.trigger("wf_limited", json!({})).await);
    }
    let mut parked = 0;
    for id in &runs {
        let run = stack.wait_for_run(id, RUN_WITHIN).await;
        assert_eq!(run["status"], "COMPLETED", "{run}");
        let waited = run["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["step"].is_null() && t["to"] == "WAITING");
        parked += usize::from(waited);
    }
    assert!(
        parked > 0,
        "runs waiting for room parked instead of holding a slot"
    );
    let arrivals = arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len(), 8);
    let window = Duration::from_secs(2);
    for (i, &t) in arrivals.iter().enumerate() {
        let within = arrivals
            .iter()
            .filter(|&&u| u >= t && u < t + window)
            .count();
        assert!(within <= 2, "{within} calls within {window:?} of call {i}");
    }
}

/// A streamed completion of `pieces`, then the stop and the usage.
fn streamed(pieces: &[&str]) -> ResponseTemplate {
    let mut body = String::new();
    for piece in pieces {
        let chunk = json!({"choices": [{"index": 0, "delta": {"content": piece}}]});
        body.push_str(&format!("data: {chunk}\n\n"));
    }
    let stop = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
    let usage = json!({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}});
    body.push_str(&format!(
        "data: {stop}\n\ndata: {usage}\n\ndata: [DONE]\n\n"
    ));
    ResponseTemplate::new(200).set_body_raw(body, "text/event-stream")
}

/// A streamed tool call of `list_orders`.
fn streamed_call() -> ResponseTemplate {
    let call = json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1",
        "type": "function", "function": {"name": "list_orders", "arguments": "{}"}}]}}]});
    let stop = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]});
    let usage = json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}});
    ResponseTemplate::new(200).set_body_raw(
        format!("data: {call}\n\ndata: {stop}\n\ndata: {usage}\n\ndata: [DONE]\n\n"),
        "text/event-stream",
    )
}

#[tokio::test]
async fn a_streaming_agents_pieces_arrive_on_the_run_events_in_order() {
    let _one = SERIAL.lock().await;
    // Turn 1 answers after a second, so the event stream is open before any piece is written.
    let model = Model::start(
        vec![
            streamed_call().set_delay(Duration::from_secs(1)),
            streamed(&["Two ", "orders ", "found."]),
        ],
        None,
    )
    .await;
    let tools = loopback_server().await;
    Mock::given(method("GET"))
        .and(path("/orders"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([{"id": "o_1"}])))
        .mount(&tools)
        .await;
    let stack = stack_with(model.agents_entry_with("stream = true"), 1, &tools, &[]).await;
    stack
        .create_workflow("streams", agent_definition(Some(&tools.uri()), json!({})))
        .await;
    let run_id = stack.trigger("wf_streams", json!({})).await;
    let res = stack
        .client
        .get(format!("{}/workflows/runs/{run_id}/events", stack.base_url))
        .bearer_auth(&stack.key)
        .send()
        .await
        .expect("subscribe");
    assert_eq!(res.status(), 200);
    let text = tokio::time::timeout(RUN_WITHIN, res.text())
        .await
        .expect("the stream ends with the run")
        .expect("the stream");
    let pieces: Vec<Value> = text
        .split("\n\n")
        .filter(|frame| frame.contains("event: agent.delta"))
        .filter_map(|frame| frame.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|data| serde_json::from_str(data).expect("JSON"))
        .collect();
    assert!(pieces.len() >= 3, "{text}");
    assert_eq!(
        pieces[0]["toolCalls"],
        json!([{"id": "call_1", "name": "list_orders"}])
    );
    assert_eq!(pieces[0]["turn"], 1);
    assert_eq!(pieces[1]["toolResult"]["name"], "list_orders");
    let answer: String = pieces[2..]
        .iter()
        .map(|p| {
            assert_eq!(p["turn"], 2, "{p}");
            p["text"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(answer, "Two orders found.");
    // The run itself keeps only the final answer.
    let run = stack.wait_for_run(&run_id, RUN_WITHIN).await;
    assert_eq!(run["steps"][0]["output"]["content"], "Two orders found.");
}

#[tokio::test]
async fn an_answer_off_its_schema_is_repaired_once_and_fails_after_the_repair() {
    let _one = SERIAL.lock().await;
    // Run 1: off, then right. Run 2 (another stand-in): off, and off again.
    let repaired = Model::start(
        vec![
            completion(Some(r#"{"label": "spam"}"#), &[], (10, 2, 0)),
            completion(Some(r#"{"label": "bug"}"#), &[], (20, 3, 0)),
        ],
        None,
    )
    .await;
    let tools = tool_server().await;
    let schema = json!({"type": "object", "required": ["label"],
                        "properties": {"label": {"enum": ["billing", "bug"]}}});
    let stack = stack_with(repaired.agents_entry(), 1, &tools, &[]).await;
    stack
        .create_workflow(
            "schema",
            agent_definition(None, json!({}))
                .pointer_mut("/steps/0")
                .map(|s| {
                    s["outputSchema"] = schema.clone();
                    json!({ "steps": [s.clone()] })
                })
                .unwrap(),
        )
        .await;
    let run = stack
        .wait_for_run(&stack.trigger("wf_schema", json!({})).await, RUN_WITHIN)
        .await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["steps"][0]["output"]["json"], json!({"label": "bug"}));
    let turns = run["steps"][0]["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 2);
    let repair = turns[1]["messages"][0]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(
        repair.contains("at /label"),
        "the problems went back: {repair}"
    );
    assert_eq!(repaired.asked(), vec![1, 1]);

    // The same step on a model that stays off: FAILED after its one repair, listing why.
    repaired.server.reset().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(completion(Some(r#"{"label": "spam"}"#), &[], (10, 2, 0)))
        .mount(&repaired.server)
        .await;
    let run = stack
        .wait_for_run(&stack.trigger("wf_schema", json!({})).await, RUN_WITHIN)
        .await;
    assert_eq!(run["status"], "FAILED", "{run}");
    let error = run["steps"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("does not match outputSchema after 1 repair turn")
            && error.contains("at /label"),
        "{error}"
    );
    assert_eq!(run["steps"][0]["attempt"], 1, "not retried");
}
