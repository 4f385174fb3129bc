//! Agent steps' overhead: an `agent` step on a model that answers at once (a stand-in of the
//! OpenAI Chat Completions API in this process, on loopback), one turn and a four-turn tool
//! loop (three turns each calling an HTTP tool on another loopback stand-in, then the
//! answer), beside a one-step `transform` run at the same rate. What is measured is Thygon's
//! work around the calls: the journal, the tool requests' bookkeeping, the round trips.

use crate::bench::{latencies, Bench};
use crate::stats::{mean, ms, percentile, scaled};
use serde_json::{json, Value};
use std::time::Duration;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// The rate of the agent rows, runs per second, and how many runs each sends.
const RATE: f64 = 20.0;
const RUNS: usize = 200;

/// The stand-ins: the model, and the tool it calls.
pub(crate) struct StandIns {
    pub(crate) model: MockServer,
    pub(crate) tool: MockServer,
}

/// Answers by the number of assistant messages in the request: a tool call for each of the
/// first three turns when the request offers a tool, else (and then) the answer.
struct Script;

impl Respond for Script {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let turn = body["messages"]
            .as_array()
            .map(|m| m.iter().filter(|m| m["role"] == "assistant").count())
            .unwrap_or(0);
        let tools = body["tools"].as_array().is_some_and(|t| !t.is_empty());
        let message = if tools && turn < 3 {
            json!({"role": "assistant", "content": null, "tool_calls": [{
                "id": format!("call_{turn}"), "type": "function",
                "function": {"name": "lookup", "arguments": format!("{{\"n\": {turn}}}")}}]})
        } else {
            json!({"role": "assistant", "content": "done"})
        };
        ResponseTemplate::new(200).set_body_json(json!({
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 5},
        }))
    }
}

impl StandIns {
    pub(crate) async fn start() -> Self {
        let model = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/chat/completions"))
            .respond_with(Script)
            .mount(&model)
            .await;
        let tool = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
            .mount(&tool)
            .await;
        StandIns { model, tool }
    }

    /// The stack's agents-file entry of the stand-in model, and the environment its tool
    /// needs (`EGRESS_ALLOW`: the tool is on loopback).
    pub(crate) fn agents_entry(&self) -> String {
        format!(
            "[agents.bench-model]\nprovider = \"openai\"\nbaseUrl = \"{}/v1\"\nmodel = \"bench\"\napiKeyEnv = \"BENCH_MODEL_KEY\"\n",
            self.model.uri()
        )
    }

    pub(crate) fn env(&self) -> Vec<(String, String)> {
        vec![
            ("BENCH_MODEL_KEY".into(), "bench-key".into()),
            ("EGRESS_ALLOW".into(), self.tool.address().to_string()),
        ]
    }
}

/// The three rows: a 1-step transform, a 1-turn agent step, a 4-turn tool loop, each at
/// [`RATE`] runs/s; and the overhead of a turn.
pub(crate) async fn measure(bench: &Bench, stand_ins: &StandIns) -> Value {
    let agent = |tools: bool| {
        let mut step =
            json!({"name": "a", "type": "agent", "agentId": "bench-model", "instructions": "go"});
        if tools {
            step["tools"] = json!([{"name": "lookup", "parameters": {"type": "object"},
                "request": {"url": format!("{}/lookup?n={{{{ args.n }}}}", stand_ins.tool.uri())}}]);
        }
        json!({"steps": [step]})
    };
    bench
        .stack
        .create_workflow(
            "agent_base",
            json!({"steps": [{"name": "s", "type": "transform", "value": 1}]}),
        )
        .await;
    bench.stack.create_workflow("agent_one", agent(false)).await;
    // A build from before agents had tools (BENCH_BIN_DIR) refuses the loop: its row is left
    // empty, the others are measured.
    let body = json!({"name": "agent_loop", "definition": agent(true)});
    let loop_created = matches!(
        bench.stack.try_call("POST", "/workflows", Some(body)).await,
        Ok((201, _))
    );
    let mut rows = serde_json::Map::new();
    for workflow in ["agent_base", "agent_one", "agent_loop"] {
        if workflow == "agent_loop" && !loop_created {
            continue;
        }
        let id = format!("wf_{workflow}");
        let count = scaled(RUNS);
        let failed = bench.trigger_paced(&id, RATE, count).await;
        let times = latencies(&bench.settle(&id, count, Duration::from_secs(120)).await);
        rows.insert(
            workflow.to_string(),
            json!({
                "runs": times.len(), "failed_triggers": failed,
                "p50_ms": ms(percentile(&times, 50.0)), "p99_ms": ms(percentile(&times, 99.0)),
                "mean_ms": ms(mean(&times)),
            }),
        );
    }
    // Means: the timestamps are whole milliseconds, so differences of percentiles are too.
    let mean_of = |k: &str| {
        rows.get(k)
            .and_then(|r| r["mean_ms"].as_f64())
            .unwrap_or(f64::NAN)
    };
    let per_turn = (mean_of("agent_loop") - mean_of("agent_one")) / 3.0;
    let one_turn = mean_of("agent_one") - mean_of("agent_base");
    json!({
        "rate": RATE,
        "rows": rows,
        "one_turn_over_transform_ms": ms(one_turn / 1000.0),
        "per_tool_turn_ms": ms(per_turn / 1000.0),
        "model_requests": stand_ins.model.received_requests().await.map_or(0, |r| r.len()),
    })
}
