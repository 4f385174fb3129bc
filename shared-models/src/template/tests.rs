use super::*;
use serde_json::json;

fn ctx() -> Value {
    json!({"variables": {"ticketId": "TCK-101", "n": 3, "o": {"a": 1}}, "steps": {}, "run": {"id": "run_x"}})
}

#[test]
fn a_sole_expression_keeps_its_json_type() {
    assert_eq!(render_str("{{ variables.n }}", &ctx()).unwrap(), json!(3));
    assert_eq!(
        render_str(" {{ variables.o }} ", &ctx()).unwrap(),
        json!({"a": 1})
    );
    assert_eq!(
        render_str("n={{ variables.n }}", &ctx()).unwrap(),
        json!("n=3")
    );
    assert_eq!(render_str("plain", &ctx()).unwrap(), json!("plain"));
}

#[test]
fn undefined_names_are_errors() {
    assert!(render_str("{{ variables.missing }}", &ctx()).is_err());
    assert!(render_str("x {{ nope }}", &ctx()).is_err());
}

#[test]
fn syntax_errors_are_caught_by_check() {
    assert!(check("{{ variables.ticketId ").is_err());
    assert!(check("{% if %}").is_err());
    assert!(check("Ticket {{ variables.ticketId }}").is_ok());
    let err = check_json(&json!({"a": ["ok", "{{ ("]}), "inputs").unwrap_err();
    assert_eq!(err.0, "inputs.a[1]");
}

#[test]
fn conditions_use_jinja_truthiness_and_refuse_undefined_names() {
    let c = json!({"steps": {"classify": {"output": {"priority": "high"}, "status": "COMPLETED"}}, "variables": {}});
    assert_eq!(
        eval_condition("steps.classify.output.priority == 'high'", &c),
        Ok(true)
    );
    assert_eq!(
        eval_condition("steps.classify.output.priority == 'low'", &c),
        Ok(false)
    );
    assert!(eval_condition("steps.nope.output", &c).is_err());
    assert!(check_condition("a ==").is_err());
}

#[test]
fn stray_delimiters_in_expressions_are_errors_not_panics() {
    for expr in ["}}{{", "x }} y", "1 }}", "}}x", "a %} b", "{# c"] {
        assert!(check_condition(expr).is_err(), "{expr}");
        assert!(eval_condition(expr, &ctx()).is_err(), "{expr}");
    }
}

#[test]
fn chains_too_long_for_the_parser_are_refused() {
    let chain = format!("{{{{ {}1 }}}}", "-".repeat(5000));
    assert!(check(&chain).unwrap_err().contains("chains more than"));
    let attrs = format!("x {{{{ a{} }}}} y", ".b".repeat(3000));
    assert!(check(&attrs).unwrap_err().contains("chains more than"));
    assert!(check_condition(&"not ".repeat(1000)).is_err());
    assert!(check("{{ a.b.c | lower }} and {{ x + 1 }}").is_ok());
}

#[test]
fn oversized_templates_and_conditions_are_refused() {
    assert!(check(&"a".repeat(MAX_TEMPLATE_CHARS)).is_ok());
    assert_eq!(
        check(&"a".repeat(MAX_TEMPLATE_CHARS + 1)),
        Err(format!("is longer than {MAX_TEMPLATE_CHARS} characters"))
    );
    assert!(check_condition(&format!("{} == 1", "a".repeat(MAX_CONDITION_CHARS))).is_err());
}

#[test]
fn render_json_walks_nested_values() {
    let out = render_json(
        &json!({"t": "{{ variables.ticketId }}", "l": [1, "{{ run.id }}"]}),
        &ctx(),
    )
    .unwrap();
    assert_eq!(out, json!({"t": "TCK-101", "l": [1, "run_x"]}));
}

/// The two templates of issue 13 that wedged every worker.
const NESTED_LOOPS: &str =
    "{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}";
const HUGE_OUTPUT: &str =
    "{% set s = 'x' * 1000000 %}{% for i in range(2000) %}{{ s }}{% endfor %}";

#[test]
fn nested_loops_use_up_their_fuel_quickly_naming_the_setting() {
    let started = std::time::Instant::now();
    let e = render_str(NESTED_LOOPS, &ctx()).unwrap_err();
    assert_eq!(
        e,
        format!("template used up its fuel (TEMPLATE_FUEL = {DEFAULT_TEMPLATE_FUEL})")
    );
    assert!(check(NESTED_LOOPS).is_ok(), "it passes validation");
    // Debug builds are several times slower than the release build the default is
    // measured on; still well under the deadline.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn output_over_the_cap_stops_there_naming_the_setting() {
    let started = std::time::Instant::now();
    let e = render_str(HUGE_OUTPUT, &ctx()).unwrap_err();
    assert_eq!(
        e,
        format!(
            "template output is larger than TEMPLATE_MAX_OUTPUT_BYTES ({DEFAULT_TEMPLATE_MAX_OUTPUT_BYTES} bytes)"
        )
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Just under the cap renders.
    let fits = format!("{{{{ 'x' * {} }}}}", DEFAULT_TEMPLATE_MAX_OUTPUT_BYTES - 10);
    assert_eq!(
        render_text(&format!("a{fits}"), &ctx()).unwrap().len(),
        DEFAULT_TEMPLATE_MAX_OUTPUT_BYTES - 9
    );
}

#[test]
fn a_sole_expression_is_capped_on_its_json() {
    let over = format!("{{{{ 'x' * {DEFAULT_TEMPLATE_MAX_OUTPUT_BYTES} }}}}");
    // Its JSON has two quotes more than the string.
    assert!(render_str(&over, &ctx())
        .unwrap_err()
        .contains("TEMPLATE_MAX_OUTPUT_BYTES"));
    let fits = format!("{{{{ 'x' * {} }}}}", DEFAULT_TEMPLATE_MAX_OUTPUT_BYTES - 2);
    assert!(render_str(&fits, &ctx()).is_ok());
}

#[test]
fn a_json_value_is_capped_as_a_whole() {
    let half = format!("{{{{ 'x' * {} }}}}", DEFAULT_TEMPLATE_MAX_OUTPUT_BYTES / 2);
    assert!(render_json(&json!({"a": half}), &ctx()).is_ok());
    let e = render_json(&json!({"a": half, "b": [half]}), &ctx()).unwrap_err();
    assert!(e.contains("TEMPLATE_MAX_OUTPUT_BYTES"), "{e}");
}

#[test]
fn a_loop_of_some_thousands_is_well_within_the_fuel() {
    let out = render_text("{% for a in range(10000) %}{{ a }},{% endfor %}", &ctx()).unwrap();
    assert!(out.starts_with("0,1,2,") && out.ends_with("9999,"));
}

#[test]
fn lookups_and_simple_conditions_are_told_from_the_rest() {
    for t in [
        "plain",
        "{{ variables.ticketId }}",
        "Ticket {{ variables.ticketId }} is {{ steps.classify.output['priority'] }}",
        "{{ steps.a.output.items[0] }}",
    ] {
        assert!(is_lookup_only(t), "{t}");
    }
    for t in [
        "{% for a in range(3) %}{{ a }}{% endfor %}",
        "{{ 'x' * 1000 }}",
        "{{ a | upper }}",
        "{{ range(10) }}",
        "{{ a ~ b }}",
        "{{ a == b }}",
        "{{ a if b }}",
        "{# c #}",
        "{{ a }",
    ] {
        assert!(!is_lookup_only(t), "{t}");
    }
    for c in [
        "steps.classify.output.priority == 'high'",
        "not variables.skip and variables.n >= 3",
        "steps.a.status != \"FAILED\" or variables.force",
    ] {
        assert!(is_simple_condition(c), "{c}");
    }
    for c in [
        "range(10) | length > 3",
        "'a' in variables.s",
        "a * 3 > 1",
        "x is defined",
    ] {
        assert!(!is_simple_condition(c), "{c}");
    }
}
