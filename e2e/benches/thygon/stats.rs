//! Settings from the environment, and the arithmetic of the figures.

use serde_json::{json, Value};

pub(crate) const CLIENTS: usize = 32;

/// The positive number in the environment variable `name`, else `default`.
pub(crate) fn positive_env<T: std::str::FromStr + PartialOrd + Default>(
    name: &str,
    default: T,
) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|v: &T| *v > T::default())
        .unwrap_or(default)
}

pub(crate) fn scale() -> f64 {
    positive_env("BENCH_SCALE", 1.0)
}

/// `WORKER_CONCURRENCY` of each worker process (`BENCH_CONCURRENCY`, default 64 as the worker's).
pub(crate) fn concurrency() -> usize {
    positive_env("BENCH_CONCURRENCY", 64)
}

/// The workers' `MAX_RUNNING_PER_ORG` (`BENCH_MAX_RUNNING_PER_ORG`, default 0 = no cap).
pub(crate) fn running_cap() -> u32 {
    positive_env("BENCH_MAX_RUNNING_PER_ORG", 0)
}

pub(crate) fn scaled(n: usize) -> usize {
    ((n as f64 * scale()).round() as usize).max(1)
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub(crate) fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

pub(crate) fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

pub(crate) fn chain(prefix: &str, n: usize) -> Value {
    let steps: Vec<Value> = (0..n)
        .map(|i| json!({"name": format!("{prefix}{i}"), "type": "transform", "value": {"i": i, "previous": if i == 0 { Value::Null } else { json!(format!("{{{{ steps.{prefix}{}.output.i }}}}", i - 1)) }}}))
        .collect();
    json!({ "steps": steps })
}

pub(crate) fn ms(s: f64) -> f64 {
    (s * 1000.0 * 100.0).round() / 100.0
}
