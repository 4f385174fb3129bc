//! The transition tables of the module's documentation and of the code are the same.

use super::*;

/// The rows of the Markdown table under `heading` in this module's documentation, as
/// (from, to) name pairs.
fn documented(heading: &str) -> Vec<(String, String)> {
    let text = include_str!("mod.rs");
    let mut lines = text
        .lines()
        .skip_while(|l| !l.starts_with(heading))
        .skip(1)
        .map(|l| l.trim_start_matches("//!").trim())
        .skip_while(|l| l.is_empty())
        .take_while(|l| l.starts_with('|'));
    lines.next().expect("header");
    lines.next().expect("separator");
    let mut pairs = Vec::new();
    for row in lines {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        for from in cells[1].split(", ") {
            for to in cells[2].split(", ") {
                pairs.push((from.to_string(), to.to_string()));
            }
        }
    }
    pairs
}

fn sorted(mut v: Vec<(String, String)>) -> Vec<(String, String)> {
    v.sort();
    v
}

#[test]
fn the_documented_run_transitions_are_the_code_s() {
    let code = RUN_TRANSITIONS
        .iter()
        .map(|(from, to)| {
            let from = from.map_or("(none)", RunStatus::as_str);
            (from.to_string(), to.as_str().to_string())
        })
        .collect();
    assert_eq!(sorted(documented("//! Runs (")), sorted(code));
}

#[test]
fn the_documented_step_transitions_are_the_code_s() {
    let code = STEP_TRANSITIONS
        .iter()
        .map(|(from, to)| (from.as_str().to_string(), to.as_str().to_string()))
        .collect();
    assert_eq!(sorted(documented("//! Steps (")), sorted(code));
}

#[test]
fn an_ended_run_is_only_retried_and_a_new_run_is_pending() {
    for (from, to) in RUN_TRANSITIONS {
        if let Some(from) = from.filter(|f| f.is_terminal()) {
            assert_eq!(*to, RunStatus::Pending, "{from:?} -> {to:?}");
            assert_ne!(
                from,
                RunStatus::Completed,
                "a completed run is never retried"
            );
        }
    }
    assert!(run_may_become(None, RunStatus::Pending));
    assert!(!run_may_become(None, RunStatus::Running));
    assert!(!step_may_become(StepStatus::Completed, StepStatus::Pending));
    assert!(!step_may_become(StepStatus::Skipped, StepStatus::Running));
}
