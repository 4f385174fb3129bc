//! The seed document's examples, verbatim, through the gateway against the real binaries.

use serde_json::json;
use std::time::Duration;
use thygon_e2e::Stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_examples_work_end_to_end_through_the_gateway() {
    let stack = Stack::start(2).await;

    // Create workflow
    let (status, body) = stack
        .call(
            "POST",
            "/workflows",
            Some(json!({
              "name": "support_triage",
              "description": "Categorize and route incoming support tickets",
              "definition": {
                "steps": [
                  {
                    "name": "classify",
                    "type": "agent",
                    "agentId": "support-classifier",
                    "instructions": "Determine ticket category and priority."
                  }
                ]
              }
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["data"]["id"], "wf_support_triage");
    assert_eq!(body["data"]["isActive"], true);

    // List, get
    let (status, body) = stack.call("GET", "/workflows", None).await;
    assert_eq!(
        (status, &body["data"][0]["id"]),
        (200, &json!("wf_support_triage"))
    );
    let (status, body) = stack
        .call("GET", "/workflows/wf_support_triage", None)
        .await;
    assert_eq!(
        (status, &body["data"]["definition"]["steps"][0]["name"]),
        (200, &json!("classify"))
    );

    // Trigger workflow run
    let (status, body) = stack
        .call(
            "POST",
            "/workflows/wf_support_triage/trigger",
            Some(json!({"variables": {"priorityOverride": "high"}})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["message"], "Run queued — execution is asynchronous");
    assert_eq!(body["data"]["status"], "PENDING");
    assert_eq!(body["data"]["workflowId"], "wf_support_triage");
    assert_eq!(
        body["data"]["variables"],
        json!({"priorityOverride": "high"})
    );
    let triggered = body["data"]["id"].as_str().unwrap().to_string();

    // Create and queue a run directly
    let (status, body) = stack
        .call("POST", "/workflows/runs", Some(json!({"workflowId": "wf_support_triage", "variables": {"ticketId": "TCK-101"}, "orgId": "org_acme_123"})))
        .await;
    assert_eq!(status, 201, "{body}");
    let direct = body["data"]["id"].as_str().unwrap().to_string();

    // Get run details: both reach COMPLETED with progress recorded.
    for id in [&triggered, &direct] {
        let run = stack.wait_for_run(id, Duration::from_secs(30)).await;
        assert_eq!(run["status"], "COMPLETED", "{run}");
        assert_eq!(run["steps"][0]["status"], "COMPLETED");
        assert_eq!(run["steps"][0]["attempt"], 1);
        assert!(run["output"]["classify"]["category"].is_string(), "{run}");
        let transitions: Vec<(String, String)> = run["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["from"].as_str().unwrap().to_string(),
                    t["to"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            transitions.first(),
            Some(&("PENDING".to_string(), "RUNNING".to_string()))
        );
        assert_eq!(
            transitions.last(),
            Some(&("RUNNING".to_string(), "COMPLETED".to_string()))
        );
        assert!(!run["logs"].as_array().unwrap().is_empty());
    }
    let triggered_run = stack.wait_for_run(&triggered, Duration::from_secs(1)).await;
    assert_eq!(triggered_run["output"]["classify"]["priority"], "high");

    // List runs
    let (status, body) = stack.call("GET", "/workflows/runs", None).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [direct.as_str(), triggered.as_str()], "newest first");

    // Update, then delete: old runs stay readable.
    let (status, body) = stack
        .call("PUT", "/workflows/wf_support_triage", Some(json!({"definition": {"steps": [{"name": "classify", "type": "agent", "agentId": "support-classifier", "instructions": "Classify {{ variables.ticketId }}."}]}})))
        .await;
    assert_eq!((status, &body["data"]["version"]), (200, &json!(2)));
    let (status, body) = stack
        .call("DELETE", "/workflows/wf_support_triage", None)
        .await;
    assert_eq!((status, &body["data"]["deleted"]), (200, &json!(true)));
    let (status, _) = stack
        .call("GET", "/workflows/wf_support_triage", None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = stack
        .call(
            "POST",
            "/workflows/wf_support_triage/trigger",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 404);
    let (status, body) = stack
        .call("GET", &format!("/workflows/runs/{triggered}"), None)
        .await;
    assert_eq!((status, &body["data"]["workflowVersion"]), (200, &json!(1)));

    // The gateway answers envelopes for what no service serves.
    let (status, body) = stack.call("GET", "/nowhere", None).await;
    assert_eq!((status, &body["error"]["code"]), (404, &json!("NOT_FOUND")));
    let (status, body) = stack.call("DELETE", "/workflows/runs", None).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (405, &json!("METHOD_NOT_ALLOWED"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_agent_triage_passes_outputs_along_and_failures_name_the_agent() {
    let stack = Stack::start(1).await;
    let definition = json!({"steps": [
        {"name": "classify", "type": "agent", "agentId": "support-classifier",
         "instructions": "Classify ticket {{ variables.ticketId }}."},
        {"name": "draft", "type": "agent", "agentId": "reply-drafter",
         "instructions": "Draft a reply for a {{ steps.classify.output.category }} ticket.",
         "inputs": {"category": "{{ steps.classify.output.category }}", "priority": "{{ steps.classify.output.priority }}"}},
        {"name": "route", "type": "agent", "agentId": "ticket-router", "instructions": "Route it.",
         "inputs": {"category": "{{ steps.classify.output.category }}", "priority": "{{ steps.classify.output.priority }}"}}
    ]});
    let (status, body) = stack
        .call(
            "POST",
            "/workflows",
            Some(json!({"name": "triage", "definition": definition})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = stack
        .call("POST", "/workflows/wf_triage/trigger", Some(json!({"variables": {"ticketId": "TCK-7", "subject": "I was charged twice", "body": "refund please, my invoice is wrong"}})))
        .await;
    assert_eq!(status, 201, "{body}");
    let run = stack
        .wait_for_run(
            body["data"]["id"].as_str().unwrap(),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["steps"][0]["output"]["category"], "billing");
    assert!(
        run["output"]["route"]["team"].is_string(),
        "only the leaf is the run's output: {run}"
    );
    assert_eq!(run["output"].as_object().unwrap().len(), 1);

    // An agent no one configured: the definition is accepted (agents are the workers'
    // configuration), the run fails naming it.
    let (status, body) = stack
        .call("POST", "/workflows", Some(json!({"name": "ghost", "definition": {"steps": [
            {"name": "ask", "type": "agent", "agentId": "nobody-configured-this", "instructions": "hi"},
            {"name": "after", "type": "transform", "value": 1}]}})))
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = stack
        .call("POST", "/workflows/wf_ghost/trigger", None)
        .await;
    assert_eq!(status, 201, "{body}");
    let run = stack
        .wait_for_run(
            body["data"]["id"].as_str().unwrap(),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(run["status"], "FAILED");
    assert!(
        run["steps"][0]["error"]
            .as_str()
            .unwrap()
            .contains("nobody-configured-this"),
        "{run}"
    );
    assert_eq!(run["steps"][1]["status"], "CANCELLED");
    assert!(run["error"].as_str().unwrap().contains("ask"));
}
