//! Model agents on the real stack: real PostgreSQL and RabbitMQ, the real worker processes, and
//! a stand-in of the OpenAI Chat Completions API (a wiremock server on 127.0.0.1, written into
//! the stack's agents file) that answers by turn, counting what it is asked: a turn is told by
//! the number of assistant messages in the request. HTTP tools call another loopback wiremock,
//! which the workers' `EGRESS_ALLOW` lets them reach.
//!
//! - a four-turn tool loop, with a workflow tool (a child run) and an HTTP tool, ending with an
//!   answer that matches the step's `outputSchema`; the run's usage is the sum of the turns';
//! - a worker SIGKILLed while turn 3 waits for its answer: a new worker resumes the loop from
//!   the journal, asking neither turn 1 nor turn 2 again and running no tool again;
//! - the example triage model of `examples/support-agent` with the example definitions of
//!   `examples/workflows/`, triggered with the README's own request.
//!
//! One scenario at a time (`SERIAL`): each starts a stack.

use serde_json::{json, Value};
use std::time::Duration;
use thygon_e2e::model::{completion, stack, tool_server, Model};
use thygon_e2e::{workspace_root, Stack, StackOptions};
use wiremock::{MockServer, ResponseTemplate};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const RUN_WITHIN: Duration = Duration::from_secs(40);

/// What each turn of the four-turn script reports: (prompt, completion, cached).
const USAGE: [(i64, i64, i64); 4] = [(120, 12, 0), (180, 9, 100), (260, 20, 150), (330, 15, 200)];
const ANSWER: &str = r#"{"label": "billing", "orders": 2}"#;

/// Turn 1 calls the workflow tool, turn 2 the HTTP tool, turn 3 both at once, turn 4 answers.
fn four_turns() -> Vec<ResponseTemplate> {
    vec![
        completion(
            None,
            &[(
                "call_1",
                "lookup_customer",
                json!({"email": "ann@example.com"}),
            )],
            USAGE[0],
        ),
        completion(
            None,
            &[("call_2", "list_orders", json!({"customer": "c_1"}))],
            USAGE[1],
        ),
        completion(
            Some("Checking the other account too."),
            &[
                (
                    "call_3",
                    "lookup_customer",
                    json!({"email": "bob@example.com"}),
                ),
                ("call_4", "list_orders", json!({"customer": "c_2"})),
            ],
            USAGE[2],
        ),
        completion(Some(ANSWER), &[], USAGE[3]),
    ]
}

/// `wf_lookup` (the workflow tool: a customer record) and `wf_agent_loop` (one agent step on
/// the stand-in with that tool and an HTTP tool, and an output schema).
async fn create_workflows(stack: &Stack, tools: &MockServer) {
    let customer = json!({"email": "{{ variables.email }}", "plan": "pro", "id": "c_1"});
    stack
        .create_workflow(
            "lookup",
            json!({"steps": [{"name": "customer", "type": "transform", "value": customer}]}),
        )
        .await;
    let object = |props: Value| json!({"type": "object", "properties": props});
    let step = json!({
        "name": "triage", "type": "agent", "agentId": "stand-in-model",
        "instructions": "Triage the ticket of {{ variables.email }}",
        "maxTurns": 6,
        "retry": {"maxAttempts": 3, "backoffSeconds": 0.1},
        "tools": [
            {"name": "lookup_customer", "description": "Find a customer by email",
             "parameters": object(json!({"email": {"type": "string"}})),
             "workflowId": "wf_lookup"},
            {"name": "list_orders", "description": "List a customer's orders",
             "parameters": object(json!({"customer": {"type": "string"}})),
             "request": {"url": format!("{}/orders?customer={{{{ args.customer }}}}", tools.uri())}}
        ],
        "outputSchema": {"type": "object", "required": ["label"],
                         "properties": {"label": {"enum": ["billing", "bug", "other"]}}}
    });
    stack
        .create_workflow("agent_loop", json!({ "steps": [step] }))
        .await;
}

/// The run usage the four turns make at the stand-in's prices.
fn expected_usage() -> Value {
    let (mut input, mut output, mut cached, mut picos) = (0, 0, 0, 0i64);
    for (prompt, completion, cache) in USAGE {
        input += prompt - cache;
        output += completion;
        cached += cache;
        picos += (prompt - cache) * 2_500_000 + completion * 10_000_000 + cache * 1_250_000;
    }
    json!({"inputTokens": input, "outputTokens": output, "cachedTokens": cached,
           "costUsd": picos as f64 / 1e12})
}

fn assert_usage(got: &Value, want: &Value) {
    for field in ["inputTokens", "outputTokens", "cachedTokens"] {
        assert_eq!(got[field], want[field], "{field}: {got} vs {want}");
    }
    let (a, b) = (
        got["costUsd"].as_f64().unwrap(),
        want["costUsd"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-12, "costUsd: {got} vs {want}");
}

/// The runs of `workflow`, as listed.
async fn runs_of(stack: &Stack, workflow: &str) -> Vec<Value> {
    let (status, body) = stack
        .call(
            "GET",
            &format!("/workflows/runs?workflowId={workflow}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"].as_array().cloned().unwrap_or_default()
}

/// What the four-turn loop ends with, however it got there.
async fn assert_four_turn_loop(stack: &Stack, run: &Value) {
    assert_eq!(run["status"], "COMPLETED", "{run}");
    let step = &run["steps"][0];
    assert_eq!(
        step["output"]["json"],
        json!({"label": "billing", "orders": 2})
    );
    assert_eq!(step["output"]["turns"], 4);
    let turns = step["turns"].as_array().expect("the step's turns");
    assert_eq!(turns.len(), 4, "{step}");
    let results = |t: usize| {
        turns[t]["toolResults"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    // The workflow tool's result is its child run's output; the HTTP tool's, the answer.
    let first = &results(0)[0];
    assert_eq!(first["isError"], false, "{first}");
    assert!(
        first["content"]
            .as_str()
            .unwrap()
            .contains("\"plan\":\"pro\""),
        "{first}"
    );
    assert!(results(1)[0]["content"].as_str().unwrap().contains("o_9"));
    assert_eq!(results(2).len(), 2, "turn 3 called two tools");
    assert!(
        results(2).iter().all(|r| r["isError"] == false),
        "{}",
        turns[2]
    );
    assert_usage(&run["usage"], &expected_usage());
    assert_usage(&step["usage"], &expected_usage());
    // Each workflow tool call made one child run, which completed.
    let children = runs_of(stack, "wf_lookup").await;
    assert_eq!(children.len(), 2, "{children:?}");
    assert!(
        children.iter().all(|c| c["status"] == "COMPLETED"),
        "{children:?}"
    );
}

fn orders_calls(tools: &[wiremock::Request]) -> usize {
    tools.iter().filter(|r| r.url.path() == "/orders").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_four_turn_tool_loop_completes_with_its_child_runs_and_usage() {
    let _serial = SERIAL.lock().await;
    let (model, tools) = (Model::start(four_turns(), None).await, tool_server().await);
    let stack = stack(&model, &tools, &[]).await;
    create_workflows(&stack, &tools).await;

    let id = stack
        .trigger("wf_agent_loop", json!({"email": "ann@example.com"}))
        .await;
    let run = stack.wait_for_run(&id, RUN_WITHIN).await;
    assert_four_turn_loop(&stack, &run).await;
    assert_eq!(model.asked(), [1, 1, 1, 1], "each turn asked once");
    let calls = tools.received_requests().await.unwrap_or_default();
    assert_eq!(orders_calls(&calls), 2, "one request per HTTP tool call");
    // The last turn was asked with every result, the workflow tool's among them.
    let bodies = model.bodies.lock().unwrap().clone();
    let last = bodies.last().expect("asked");
    let tool_messages: Vec<&Value> = last["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .collect();
    assert_eq!(tool_messages.len(), 4, "{last}");
    assert_eq!(last["response_format"]["type"], "json_schema");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_turn_2_is_resumed_without_asking_turns_1_and_2_again() {
    let _serial = SERIAL.lock().await;
    let model = Model::start(four_turns(), Some(2)).await;
    let tools = tool_server().await;
    // Short leases, so that the dead worker's run is taken over quickly.
    let env = [("LEASE_SECONDS", "3"), ("REAPER_GRACE_SECONDS", "1")];
    let mut stack = stack(&model, &tools, &env).await;
    create_workflows(&stack, &tools).await;

    let id = stack
        .trigger("wf_agent_loop", json!({"email": "ann@example.com"}))
        .await;
    // Turn 3 is asked (and held): turns 1 and 2 and their tools are journaled.
    let deadline = std::time::Instant::now() + RUN_WITHIN;
    while model.asked().get(2).copied().unwrap_or(0) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "turn 3 never asked: {:?}\n{}",
            model.asked(),
            stack.log_tail("executor-worker-0")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed = stack.kill_worker(0, "KILL").await;
    assert!(!killed.success(), "{killed}");
    stack.start_worker(1).await;

    let run = stack.wait_for_run(&id, RUN_WITHIN).await;
    assert_four_turn_loop(&stack, &run).await;
    assert_eq!(
        model.asked(),
        [1, 1, 2, 1],
        "turns 1 and 2 not asked again; turn 3 asked again (its first ask died with the worker)"
    );
    let calls = tools.received_requests().await.unwrap_or_default();
    assert_eq!(orders_calls(&calls), 2, "no HTTP tool call ran again");
}

/// The `[agents.triage-model]` entry of examples/agents.toml, at the stack's example agent.
fn example_triage_entry() -> String {
    let file = std::fs::read_to_string(workspace_root().join("examples/agents.toml"))
        .expect("examples/agents.toml");
    let start = file
        .find("[agents.triage-model]")
        .expect("examples/agents.toml has [agents.triage-model]");
    let entry = &file[start..];
    let entry = &entry[..entry.find("\n\n").unwrap_or(entry.len())];
    assert!(entry.contains("127.0.0.1:9000"), "{entry}");
    entry.replace("127.0.0.1:9000", "${SUPPORT_AGENT_ADDR}")
}

/// The body of the README's `curl ... /workflows/wf_triage_agent/trigger ... -d '...'`.
fn readme_trigger_body() -> Value {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("README");
    let at = readme
        .find("/workflows/wf_triage_agent/trigger")
        .expect("the README triggers wf_triage_agent");
    let rest = &readme[at..];
    let body = &rest[rest.find("-d '").expect("a -d '...' body") + 4..];
    let body = &body[..body.find('\'').expect("the body's end")];
    serde_json::from_str(body).unwrap_or_else(|e| panic!("the README's body {body}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_example_triage_model_runs_with_its_tool_workflow() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::start_opts(StackOptions {
        env: vec![(
            "THYGON_EXAMPLE_MODEL_KEY".into(),
            "example-key-not-secret".into(),
        )],
        agents: example_triage_entry(),
        ..StackOptions::default()
    })
    .await;
    // The example definitions, as the README posts them.
    for file in ["lookup_customer", "triage_agent"] {
        let path = workspace_root().join(format!("examples/workflows/{file}.json"));
        let body: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("example")).unwrap();
        let (status, answer) = stack.call("POST", "/workflows", Some(body)).await;
        assert_eq!(status, 201, "{file}: {answer}");
        assert_eq!(answer["data"]["id"], format!("wf_{file}"));
    }
    let (status, body) = stack
        .call(
            "POST",
            "/workflows/wf_triage_agent/trigger",
            Some(readme_trigger_body()),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["data"]["id"].as_str().unwrap().to_string();
    let run = stack.wait_for_run(&id, RUN_WITHIN).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    let step = &run["steps"][0];
    assert_eq!(
        step["output"]["json"],
        json!({"category": "billing", "priority": "high", "plan": "pro"}),
        "{step}"
    );
    let turns = step["turns"].as_array().expect("turns");
    assert_eq!(turns.len(), 2, "a tool call, then the answer: {step}");
    let call = &turns[0]["reply"]["toolCalls"][0];
    assert_eq!(call["name"], "lookup_customer");
    assert_eq!(call["arguments"]["email"], "ann@example.com", "{call}");
    // Usage as the example model reported it, priced by the example entry.
    let usage = &run["usage"];
    assert!(usage["inputTokens"].as_i64().unwrap() > 0, "{usage}");
    assert!(usage["outputTokens"].as_i64().unwrap() > 0, "{usage}");
    assert!(usage["costUsd"].as_f64().unwrap() > 0.0, "{usage}");
    assert_usage(&step["usage"], usage);
    let children = runs_of(&stack, "wf_lookup_customer").await;
    assert_eq!(children.len(), 1, "{children:?}");
    assert_eq!(children[0]["status"], "COMPLETED");
}
