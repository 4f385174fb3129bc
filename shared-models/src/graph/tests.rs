use super::*;
use crate::body::Errors;
use serde_json::{json, Value};
use std::time::Duration;

fn fields(errors: &Errors) -> Vec<&str> {
    errors.iter().map(|e| e.field.as_str()).collect()
}

#[test]
fn the_seed_definition_parses_into_one_root_step() {
    let def = json!({"steps": [{"name": "classify", "type": "agent", "agentId": "support-classifier",
        "instructions": "Determine ticket category and priority."}]});
    let g = WorkflowGraph::parse(&def, "definition").unwrap();
    assert_eq!(g.steps.len(), 1);
    assert!(g.steps[0].depends_on.is_empty());
    assert_eq!(g.leaves(), vec![0]);
}

#[test]
fn steps_default_to_depending_on_the_one_before() {
    let def = json!({"steps": [
        {"name": "a", "type": "transform", "value": 1},
        {"name": "b", "type": "transform", "value": 2},
        {"name": "c", "type": "transform", "value": 3, "dependsOn": []}]});
    let g = WorkflowGraph::parse(&def, "definition").unwrap();
    assert_eq!(g.steps[1].depends_on, vec![0]);
    assert!(g.steps[2].depends_on.is_empty());
    assert_eq!(g.leaves(), vec![1, 2]);
}

#[test]
fn bad_steps_are_named_by_path() {
    let def = json!({"steps": [
        {"name": "a", "type": "agnet"},
        {"name": "a", "type": "transform", "value": 1},
        {"name": "c", "type": "agent", "agentId": "x", "instructions": "{{ oops", "dependson": []},
        {"type": "transform", "value": 1}]});
    let errors = WorkflowGraph::parse(&def, "definition").unwrap_err();
    assert_eq!(
        fields(&errors),
        [
            "definition.steps[0].type",
            "definition.steps[2].instructions",
            "definition.steps[2].dependson",
            "definition.steps[3].name"
        ]
    );
}

#[test]
fn duplicate_names_missing_dependencies_and_cycles_are_refused() {
    let dup = json!({"steps": [{"name": "a", "type": "transform", "value": 1}, {"name": "a", "type": "transform", "value": 1}]});
    assert_eq!(
        fields(&WorkflowGraph::parse(&dup, "d").unwrap_err()),
        ["d.steps[1].name"]
    );
    let missing =
        json!({"steps": [{"name": "a", "type": "transform", "value": 1, "dependsOn": ["zz"]}]});
    assert_eq!(
        fields(&WorkflowGraph::parse(&missing, "d").unwrap_err()),
        ["d.steps[0].dependsOn[0]"]
    );
    let cycle = json!({"steps": [
        {"name": "a", "type": "transform", "value": 1, "dependsOn": ["b"]},
        {"name": "b", "type": "transform", "value": 1, "dependsOn": ["a"]}]});
    let errors = WorkflowGraph::parse(&cycle, "d").unwrap_err();
    assert!(errors[0].message.contains("cycle"), "{errors:?}");
}

#[test]
fn empty_and_oversized_step_lists_are_refused() {
    assert_eq!(
        fields(&WorkflowGraph::parse(&json!({"steps": []}), "d").unwrap_err()),
        ["d.steps"]
    );
    let many: Vec<Value> = (0..=MAX_STEPS)
        .map(|i| json!({"name": format!("s{i}"), "type": "transform", "value": i}))
        .collect();
    assert_eq!(
        fields(&WorkflowGraph::parse(&json!({"steps": many}), "d").unwrap_err()),
        ["d.steps"]
    );
    assert_eq!(
        fields(&WorkflowGraph::parse(&json!([]), "d").unwrap_err()),
        ["d"]
    );
}

#[test]
fn outline_lists_names_and_types() {
    let def = json!({"steps": [{"name": "a", "type": "transform", "value": 1}]});
    assert_eq!(
        step_outline(&def),
        vec![("a".to_string(), "transform".to_string())]
    );
}

fn parse(steps: Value) -> Result<WorkflowGraph, Errors> {
    WorkflowGraph::parse(&json!({ "steps": steps }), "definition")
}

/// The fields of the errors of a one-step definition.
fn step_errors(step: Value) -> Vec<String> {
    parse(json!([step]))
        .unwrap_err()
        .iter()
        .map(|e| e.field.clone())
        .collect()
}

fn only_step(step: Value) -> Step {
    let mut g = parse(json!([step])).unwrap();
    g.steps.remove(0)
}

#[test]
fn every_step_type_has_a_valid_example() {
    let g = parse(json!([
        {"name": "classify", "type": "agent", "agentId": "support-classifier",
         "instructions": "Classify {{ variables.ticketId }}.", "inputs": {"id": "{{ variables.ticketId }}"}},
        {"name": "notify", "type": "http",
         "request": {"method": "POST", "url": "{{ variables.webhookUrl }}",
                     "headers": {"X-Ticket": "{{ variables.ticketId }}"},
                     "body": {"priority": "{{ steps.classify.output.priority }}"}},
         "allowStatus": [404, 409]},
        {"name": "shape", "type": "transform", "value": {"p": "{{ steps.classify.output.priority }}"}},
        {"name": "pause", "type": "delay", "seconds": 1.5},
        {"name": "signoff", "type": "approval", "timeoutSeconds": 86400},
        {"name": "child", "type": "subworkflow", "workflowId": "wf_support_triage",
         "variables": {"ticketId": "{{ variables.ticketId }}"}}
    ]))
    .unwrap();
    let types: Vec<_> = g.steps.iter().map(|s| s.kind.type_name()).collect();
    assert_eq!(types, STEP_TYPES);
    assert_eq!(
        g.steps[1].kind,
        StepKind::Http {
            request: HttpRequestSpec {
                method: "POST".into(),
                url: "{{ variables.webhookUrl }}".into(),
                headers: json!({"X-Ticket": "{{ variables.ticketId }}"})
                    .as_object()
                    .unwrap()
                    .clone(),
                body: Some(json!({"priority": "{{ steps.classify.output.priority }}"})),
            },
            allow_status: vec![404, 409],
        }
    );
    assert_eq!(g.steps[3].kind, StepKind::Delay { seconds: 1.5 });
    assert_eq!(g.steps[4].timeout, Some(Duration::from_secs(86400)));
    assert_eq!(
        g.steps[5].kind,
        StepKind::Subworkflow {
            workflow_id: "wf_support_triage".into(),
            variables: Some(json!({"ticketId": "{{ variables.ticketId }}"})),
        }
    );
    let waiting: Vec<_> = g.steps.iter().map(|s| s.kind.waits()).collect();
    assert_eq!(waiting, [false, false, false, true, true, true]);
}

#[test]
fn an_http_method_defaults_to_get_and_a_bad_one_is_named() {
    let step = only_step(json!({"name": "h", "type": "http", "request": {"url": "http://x"}}));
    let StepKind::Http {
        request,
        allow_status,
    } = step.kind
    else {
        panic!("not http: {step:?}");
    };
    assert_eq!((request.method.as_str(), request.body), ("GET", None));
    assert!(request.headers.is_empty() && allow_status.is_empty());
    let lower = only_step(json!({"name": "h", "type": "http",
        "request": {"method": "delete", "url": "http://x"}}));
    assert!(matches!(lower.kind, StepKind::Http { request, .. } if request.method == "DELETE"));
    let errors = parse(json!([{"name": "h", "type": "http",
        "request": {"method": "FETCH", "url": "http://x"}}]))
    .unwrap_err();
    assert_eq!(fields(&errors), ["definition.steps[0].request.method"]);
    assert!(errors[0].message.contains("'FETCH'"), "{errors:?}");
}

#[test]
fn an_http_step_needs_a_request_with_a_url() {
    assert_eq!(
        step_errors(json!({"name": "h", "type": "http", "request": {"method": "GET"}})),
        ["definition.steps[0].request.url"]
    );
    assert_eq!(
        step_errors(json!({"name": "h", "type": "http"})),
        ["definition.steps[0].request"]
    );
    assert_eq!(
        step_errors(json!({"name": "h", "type": "http",
            "request": {"url": "http://x", "methd": "POST"}})),
        ["definition.steps[0].request.methd"]
    );
}

#[test]
fn http_header_templates_are_checked_and_named_with_their_path() {
    assert_eq!(
        step_errors(
            json!({"name": "h", "type": "http", "request": {"url": "http://x",
            "headers": {"X-Ok": "{{ variables.a }}", "X-Token": "Bearer {{ variables.token ",
                        "X-Count": 3},
            "body": {"a": ["{{ ("]}}})
        ),
        [
            "definition.steps[0].request.headers.X-Count",
            "definition.steps[0].request.headers.X-Token",
            "definition.steps[0].request.body.a[0]"
        ]
    );
    assert_eq!(
        step_errors(json!({"name": "h", "type": "http", "request": {"url": "{{ broken"}})),
        ["definition.steps[0].request.url"]
    );
}

#[test]
fn allow_status_must_list_http_status_codes() {
    assert_eq!(
        step_errors(
            json!({"name": "h", "type": "http", "request": {"url": "http://x"},
            "allowStatus": [404, 600, 99, "500", 201.5]})
        ),
        [
            "definition.steps[0].allowStatus[1]",
            "definition.steps[0].allowStatus[2]",
            "definition.steps[0].allowStatus[3]",
            "definition.steps[0].allowStatus[4]"
        ]
    );
    let ok = only_step(
        json!({"name": "h", "type": "http", "request": {"url": "http://x"},
        "allowStatus": [100, 599]}),
    );
    assert!(matches!(ok.kind, StepKind::Http { allow_status, .. } if allow_status == [100, 599]));
    // 404.0 is the whole number 404, as JSON Schema (and the API description) has it.
    let whole = only_step(
        json!({"name": "h", "type": "http", "request": {"url": "http://x"},
        "allowStatus": [404.0]}),
    );
    assert!(matches!(whole.kind, StepKind::Http { allow_status, .. } if allow_status == [404]));
}

#[test]
fn an_agent_id_is_counted_in_characters() {
    let agent =
        |id: String| json!({"name": "a", "type": "agent", "agentId": id, "instructions": "x"});
    // 128 characters of two bytes each: within the limit the description states.
    only_step(agent("é".repeat(128)));
    assert_eq!(
        step_errors(agent("é".repeat(129))),
        ["definition.steps[0].agentId"]
    );
}

#[test]
fn a_delay_needs_seconds_in_range() {
    let missing = parse(json!([{"name": "d", "type": "delay"}])).unwrap_err();
    assert_eq!(fields(&missing), ["definition.steps[0].seconds"]);
    assert_eq!(missing[0].message, "is required");
    for bad in [json!(-1), json!(MAX_DELAY_SECONDS + 1.0), json!("10")] {
        assert_eq!(
            step_errors(json!({"name": "d", "type": "delay", "seconds": bad})),
            ["definition.steps[0].seconds"],
            "{bad}"
        );
    }
    for good in [0.0, 0.5, MAX_DELAY_SECONDS] {
        let step = only_step(json!({"name": "d", "type": "delay", "seconds": good}));
        assert_eq!(step.kind, StepKind::Delay { seconds: good });
    }
}

#[test]
fn a_subworkflow_names_a_workflow_id() {
    for bad in ["support_triage", "wf_", "wf_9bad", "run_x"] {
        let errors =
            parse(json!([{"name": "s", "type": "subworkflow", "workflowId": bad}])).unwrap_err();
        assert_eq!(fields(&errors), ["definition.steps[0].workflowId"], "{bad}");
        assert!(errors[0].message.contains("wf_<name>"), "{errors:?}");
    }
    assert_eq!(
        step_errors(json!({"name": "s", "type": "subworkflow"})),
        ["definition.steps[0].workflowId"]
    );
    assert_eq!(
        step_errors(
            json!({"name": "s", "type": "subworkflow", "workflowId": "wf_a",
            "variables": [1]})
        ),
        ["definition.steps[0].variables"]
    );
    let templated = only_step(json!({"name": "s", "type": "subworkflow",
        "workflowId": "wf_a", "variables": "{{ variables }}"}));
    assert!(matches!(
        templated.kind,
        StepKind::Subworkflow {
            variables: Some(_),
            ..
        }
    ));
    let bare = only_step(json!({"name": "s", "type": "subworkflow", "workflowId": "wf_a"}));
    assert_eq!(
        bare.kind,
        StepKind::Subworkflow {
            workflow_id: "wf_a".into(),
            variables: None
        }
    );
}

#[test]
fn an_approval_takes_no_fields_of_its_own() {
    assert_eq!(
        only_step(json!({"name": "ok", "type": "approval"})).kind,
        StepKind::Approval
    );
    assert_eq!(
        step_errors(json!({"name": "ok", "type": "approval", "seconds": 5})),
        ["definition.steps[0].seconds"]
    );
}

#[test]
fn retry_defaults_to_one_attempt_and_omitted_fields_take_the_defaults() {
    let plain = only_step(json!({"name": "t", "type": "transform", "value": 1}));
    assert_eq!(
        plain.retry,
        RetryPolicy {
            max_attempts: 1,
            backoff_seconds: 1.0,
            backoff_multiplier: 2.0
        }
    );
    assert_eq!(plain.retry, RetryPolicy::default());
    assert_eq!(plain.timeout, None);
    let partial = only_step(json!({"name": "t", "type": "transform", "value": 1,
        "retry": {"maxAttempts": 3}}));
    assert_eq!(
        partial.retry,
        RetryPolicy {
            max_attempts: 3,
            backoff_seconds: 1.0,
            backoff_multiplier: 2.0
        }
    );
    let full = only_step(json!({"name": "t", "type": "transform", "value": 1,
        "retry": {"maxAttempts": 20, "backoffSeconds": 0.5, "backoffMultiplier": 3}}));
    assert_eq!(
        full.retry,
        RetryPolicy {
            max_attempts: 20,
            backoff_seconds: 0.5,
            backoff_multiplier: 3.0
        }
    );
    let null = only_step(json!({"name": "t", "type": "transform", "value": 1, "retry": null}));
    assert_eq!(null.retry, RetryPolicy::default());
}

#[test]
fn retry_names_unknown_fields_and_bad_attempt_counts() {
    let errors = parse(json!([{"name": "t", "type": "transform", "value": 1,
        "retry": {"maxAttempt": 3}}]))
    .unwrap_err();
    assert_eq!(fields(&errors), ["definition.steps[0].retry.maxAttempt"]);
    assert!(errors[0].message.contains("maxAttempts"), "{errors:?}");
    for bad in [json!(0), json!(2.5), json!(21), json!(-1), json!("3")] {
        assert_eq!(
            step_errors(json!({"name": "t", "type": "transform", "value": 1,
                "retry": {"maxAttempts": bad}})),
            ["definition.steps[0].retry.maxAttempts"],
            "{bad}"
        );
    }
    assert_eq!(
        step_errors(json!({"name": "t", "type": "transform", "value": 1,
            "retry": {"backoffSeconds": -1, "backoffMultiplier": 0.5}})),
        [
            "definition.steps[0].retry.backoffSeconds",
            "definition.steps[0].retry.backoffMultiplier"
        ]
    );
    assert_eq!(
        step_errors(json!({"name": "t", "type": "transform", "value": 1, "retry": 3})),
        ["definition.steps[0].retry"]
    );
}

#[test]
fn the_delay_before_an_attempt_grows_by_the_multiplier() {
    let p = RetryPolicy {
        max_attempts: 5,
        backoff_seconds: 1.5,
        backoff_multiplier: 2.0,
    };
    assert_eq!(p.delay_before(2), Duration::from_secs_f64(1.5));
    assert_eq!(p.delay_before(3), Duration::from_secs_f64(3.0));
    assert_eq!(p.delay_before(4), Duration::from_secs_f64(6.0));
    // Attempt 1 (or less) has no earlier attempt; it is treated like attempt 2.
    assert_eq!(p.delay_before(1), Duration::from_secs_f64(1.5));
    // Capped, however many attempts a retried run has made.
    assert_eq!(
        p.delay_before(40),
        Duration::from_secs_f64(MAX_BACKOFF_SECONDS)
    );
    assert_eq!(
        p.delay_before(5000),
        Duration::from_secs_f64(MAX_BACKOFF_SECONDS)
    );
    let none = RetryPolicy {
        max_attempts: 5,
        backoff_seconds: 0.0,
        backoff_multiplier: 10.0,
    };
    assert_eq!(none.delay_before(3), Duration::ZERO);
    assert_eq!(none.delay_before(5000), Duration::ZERO);
}

#[test]
fn timeout_seconds_must_be_in_range() {
    for bad in [
        json!(0),
        json!(-5),
        json!(MAX_TIMEOUT_SECONDS + 1.0),
        json!("30"),
    ] {
        assert_eq!(
            step_errors(json!({"name": "t", "type": "transform", "value": 1,
                "timeoutSeconds": bad})),
            ["definition.steps[0].timeoutSeconds"],
            "{bad}"
        );
    }
    let step = only_step(json!({"name": "t", "type": "transform", "value": 1,
        "timeoutSeconds": 2.5}));
    assert_eq!(step.timeout, Some(Duration::from_millis(2500)));
    // A delay may carry one (it is ignored when the step runs, not refused).
    let delay = only_step(json!({"name": "d", "type": "delay", "seconds": 60,
        "timeoutSeconds": 1}));
    assert_eq!(delay.timeout, Some(Duration::from_secs(1)));
}

#[test]
fn calls_may_not_wait_longer_than_an_hour() {
    let http = json!({"name": "h", "type": "http", "request": {"url": "https://example.com"}});
    let agent = json!({"name": "a", "type": "agent", "agentId": "x", "instructions": "go"});
    for step in [http, agent] {
        let mut long = step.clone();
        long["timeoutSeconds"] = json!(MAX_CALL_TIMEOUT_SECONDS + 1.0);
        assert_eq!(
            step_errors(long),
            ["definition.steps[0].timeoutSeconds"],
            "{step}"
        );
        let mut hour = step.clone();
        hour["timeoutSeconds"] = json!(MAX_CALL_TIMEOUT_SECONDS);
        assert_eq!(
            only_step(hour).timeout,
            Some(Duration::from_secs(3600)),
            "{step}"
        );
    }
    // Waits hold no worker slot: an approval may wait a day.
    let approval = only_step(json!({"name": "ok", "type": "approval",
        "timeoutSeconds": 86400}));
    assert_eq!(approval.timeout, Some(Duration::from_secs(86400)));
}

#[test]
fn a_when_that_does_not_compile_is_named() {
    let errors = parse(json!([
        {"name": "a", "type": "transform", "value": 1},
        {"name": "b", "type": "transform", "value": 1, "when": "steps.a.output =="}
    ]))
    .unwrap_err();
    assert_eq!(fields(&errors), ["definition.steps[1].when"]);
    assert!(errors[0].message.contains("condition"), "{errors:?}");
    assert_eq!(
        step_errors(json!({"name": "a", "type": "transform", "value": 1, "when": true})),
        ["definition.steps[0].when"]
    );
    let ok = only_step(json!({"name": "a", "type": "transform", "value": 1,
        "when": "variables.priority != 'low'"}));
    assert_eq!(ok.when.as_deref(), Some("variables.priority != 'low'"));
}

#[test]
fn a_misspelt_depends_on_is_named_not_ignored() {
    let errors = parse(json!([
        {"name": "a", "type": "transform", "value": 1},
        {"name": "b", "type": "transform", "value": 1, "dependson": []}
    ]))
    .unwrap_err();
    assert_eq!(fields(&errors), ["definition.steps[1].dependson"]);
    assert!(errors[0].message.contains("dependsOn"), "{errors:?}");
    assert_eq!(
        step_errors(json!({"name": "a", "type": "transform", "value": 1, "dependsOn": "x"})),
        ["definition.steps[0].dependsOn"]
    );
    assert_eq!(
        step_errors(json!({"name": "a", "type": "transform", "value": 1, "dependsOn": [1]})),
        ["definition.steps[0].dependsOn[0]"]
    );
}

#[test]
fn fan_out_and_fan_in_resolve_to_indexes_with_the_right_leaves() {
    // classify -> (draft, route) -> notify
    let g = parse(json!([
        {"name": "classify", "type": "transform", "value": 1},
        {"name": "draft", "type": "transform", "value": 2},
        {"name": "route", "type": "transform", "value": 3, "dependsOn": ["classify"]},
        {"name": "notify", "type": "transform", "value": 4, "dependsOn": ["draft", "route"]}
    ]))
    .unwrap();
    let deps: Vec<_> = g.steps.iter().map(|s| s.depends_on.clone()).collect();
    assert_eq!(deps, [vec![], vec![0], vec![0], vec![1, 2]]);
    assert_eq!(g.leaves(), [3]);
    assert_eq!(g.index_of("route"), Some(2));

    // Two roots, each with its own branch, and a fan-in listed before its parents.
    let g = parse(json!([
        {"name": "join", "type": "transform", "value": 0, "dependsOn": ["b2", "a1"]},
        {"name": "a", "type": "transform", "value": 1, "dependsOn": []},
        {"name": "a1", "type": "transform", "value": 2},
        {"name": "b", "type": "transform", "value": 3, "dependsOn": []},
        {"name": "b2", "type": "transform", "value": 4, "dependsOn": ["b"]},
        {"name": "b3", "type": "transform", "value": 5, "dependsOn": ["b"]}
    ]))
    .unwrap();
    let deps: Vec<_> = g.steps.iter().map(|s| s.depends_on.clone()).collect();
    assert_eq!(
        deps,
        [vec![4, 2], vec![], vec![1], vec![], vec![3], vec![3]]
    );
    assert_eq!(g.leaves(), [0, 5]);
}

#[test]
fn self_and_repeated_dependencies_are_refused() {
    assert_eq!(
        fields(
            &parse(json!([
                {"name": "a", "type": "transform", "value": 1},
                {"name": "b", "type": "transform", "value": 1, "dependsOn": ["a", "a", "b"]}
            ]))
            .unwrap_err()
        ),
        [
            "definition.steps[1].dependsOn[1]",
            "definition.steps[1].dependsOn[2]"
        ]
    );
}

#[test]
fn http_header_names_are_checked_when_the_workflow_is_saved() {
    let def = json!({"steps": [{"name": "h", "type": "http",
        "request": {"url": "http://x", "headers": {"X Token": "a", "X-Ok": "b"}}}]});
    let errors = WorkflowGraph::parse(&def, "definition").unwrap_err();
    assert_eq!(
        fields(&errors),
        ["definition.steps[0].request.headers.X Token"]
    );
}

/// Each error of a one-step definition as "field: message", the field without "definition.".
fn step_problems(step: Value) -> Vec<String> {
    parse(json!([step]))
        .unwrap_err()
        .iter()
        .map(|e| {
            format!(
                "{}: {}",
                e.field.trim_start_matches("definition."),
                e.message
            )
        })
        .collect()
}

fn agent(extra: Value) -> Value {
    let mut step =
        json!({"name": "triage", "type": "agent", "agentId": "triage", "instructions": "go"});
    if let (Value::Object(step), Value::Object(extra)) = (&mut step, extra) {
        step.extend(extra);
    }
    step
}

#[test]
fn an_agent_step_takes_tools_turns_and_an_output_schema() {
    let step = only_step(agent(json!({
        "maxTurns": 4, "repairTurns": 0,
        "outputSchema": {"type": "object", "required": ["label"]},
        "tools": [{"name": "lookup_customer", "description": "Find a customer",
                   "parameters": {"type": "object", "properties": {"email": {"type": "string"}}},
                   "request": {"method": "post", "url": "https://crm.example.com/find", "body": {"q": "{{ args.email }}"}}}]
    })));
    let StepKind::Agent(agent) = step.kind else {
        panic!("an agent step")
    };
    assert_eq!((agent.max_turns, agent.repair_turns), (4, 0));
    assert_eq!(agent.tools.len(), 1);
    assert_eq!(agent.tools[0].name, "lookup_customer");
    let ToolAction::Request(request) = &agent.tools[0].action else {
        panic!("a request tool")
    };
    assert_eq!(request.method, "POST");
    assert!(agent.output_schema.is_some());
}

#[test]
fn an_agent_step_has_eight_turns_and_one_repair_by_default() {
    let StepKind::Agent(agent) = only_step(agent(json!({}))).kind else {
        panic!("an agent step")
    };
    assert_eq!((agent.max_turns, agent.repair_turns), (8, 1));
    assert!(agent.tools.is_empty() && agent.output_schema.is_none());
}

#[test]
fn bad_agent_fields_are_named() {
    let errors = step_problems(agent(json!({
        "maxTurns": 33, "repairTurns": 1.5,
        "outputSchema": {"type": "nope"},
        "tools": [
            {"name": "has space", "request": {"url": "https://x.example"}},
            {"name": "ok", "parameters": {"type": "string"}, "request": {"url": "https://x.example"}},
            {"name": "ok", "request": {"url": "https://x.example"}},
            {"name": "remote", "parameters": {"type": "object", "$ref": "http://192.0.2.1/s.json"}, "request": {"url": "https://x.example"}},
            {"name": "noreq"},
            {"name": "extra", "request": {"url": "https://x.example"}, "workflowid": "wf_x"},
            {"name": "both", "request": {"url": "https://x.example"}, "workflowId": "wf_x"},
            {"name": "badwf", "workflowId": "lookup"},
            {"name": "wf", "workflowId": "wf_lookup"}
        ]
    })));
    let expect = [
        "steps[0].maxTurns: must be a whole number from 1 to 32",
        "steps[0].repairTurns: must be a whole number from 0 to 3",
        "steps[0].outputSchema: is not a valid JSON Schema",
        "steps[0].tools[0].name: must be 1 to 64 letters, digits, '_' or '-'",
        "steps[0].tools[1].parameters: must be a JSON Schema of an object",
        "steps[0].tools[2].name: 'ok' names another tool of this step",
        "steps[0].tools[3].parameters: is not a valid JSON Schema",
        "steps[0].tools[4].request: is required",
        "steps[0].tools[5].workflowid",
        "steps[0].tools[6].workflowId: a tool is either a request or a workflow, not both",
        "steps[0].tools[7].workflowId: is not a workflow id",
    ];
    for e in expect {
        assert!(
            errors.iter().any(|got| got.starts_with(e)),
            "{e} not in {errors:#?}"
        );
    }
}

#[test]
fn an_agent_step_offers_at_most_32_tools() {
    let tools: Vec<Value> = (0..33)
        .map(|i| json!({"name": format!("t{i}"), "request": {"url": "https://x.example"}}))
        .collect();
    let errors = step_problems(agent(json!({ "tools": tools })));
    assert!(
        errors.iter().any(|e| e.contains("at most 32 tools")),
        "{errors:?}"
    );
}

#[test]
fn a_definition_may_set_a_budget_and_a_bad_one_is_named() {
    let g = WorkflowGraph::parse(
        &json!({"steps": [agent(json!({}))], "budget": {"maxTokens": 2000, "maxCostUsd": 0.1}}),
        "definition",
    )
    .unwrap();
    assert_eq!(
        g.budget,
        Some(crate::budget::Budget {
            max_tokens: Some(2000),
            max_cost_usd: Some(0.1)
        })
    );
    let errors = WorkflowGraph::parse(
        &json!({"steps": [agent(json!({}))], "budget": {"maxCostUsd": 0}}),
        "definition",
    )
    .unwrap_err();
    assert_eq!(fields(&errors), ["definition.budget.maxCostUsd"]);
}
