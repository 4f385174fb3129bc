//! Rendering off the async runtime's threads. A template is a tenant's code: with fuel and an
//! output cap ([`shared_models::template::Limits`]) it ends, but it may still take a while,
//! and a worker thread of the runtime busy rendering is one that drives no other run, timer
//! or heartbeat (issue 13: two templates stopped every worker). So every render runs on a
//! render thread of its own pool, at a lower priority than the rest of the worker
//! ([`RENDER_NICE`]), and the step waits for it at most `TEMPLATE_DEADLINE_SECONDS`; a render
//! past it goes on (until its fuel runs out) while its step has already failed.
//!
//! What is provably short is rendered inline, which costs nothing extra: a string with no
//! template syntax, a template of lookups only ([`template::is_lookup_only`]), a condition
//! that compares lookups and literals ([`template::is_simple_condition`]). The rest (loops,
//! filters, calls, operators) goes to the blocking pool; handing a render there costs some
//! microseconds (measured in `cost_of_a_render_off_thread`).

use serde_json::Value;
use shared_models::template;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The template context (`variables`, `steps`, `run`), shared with the blocking pool.
pub type Ctx = Arc<Value>;

/// Threads that may render at once; more renders wait for one of them.
pub const MAX_RENDER_THREADS: usize = 64;
/// The nice value of the render threads: a tenant's template gets the cores the others
/// leave, so a template that burns its fuel slows its own run, not the other runs of the
/// worker (their claims, steps, heartbeats and database calls run at the normal priority).
pub const RENDER_NICE: i32 = 10;

/// The render threads: a blocking pool of their own (threads made on demand and kept a while,
/// as tokio's are), each lowered to [`RENDER_NICE`] as it starts. Never dropped.
fn renderers() -> &'static tokio::runtime::Runtime {
    static RENDERERS: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RENDERERS.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(MAX_RENDER_THREADS)
            .thread_name("render")
            .on_thread_start(lower_priority)
            .build()
            .expect("the render threads start")
    })
}

/// Lower the calling thread's priority (on Linux a nice value is per thread). Raising it
/// back would need a privilege the worker does not have, hence threads of their own.
fn lower_priority() {
    // SAFETY: setpriority only reads its arguments; `0` names the calling thread.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, RENDER_NICE) };
    if rc != 0 {
        log::warn!(
            "cannot lower the render threads' priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Run `render` on a render thread; wait for it at most `deadline`.
async fn off_thread<T, F>(deadline: Duration, render: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, String> + Send + 'static,
{
    match tokio::time::timeout(deadline, renderers().spawn_blocking(render)).await {
        Ok(Ok(rendered)) => rendered,
        // A panic inside the template engine fails the render, not the worker.
        Ok(Err(e)) => Err(format!("the template could not be rendered: {e}")),
        Err(_) => Err(format!(
            "template took longer than TEMPLATE_DEADLINE_SECONDS ({}s)",
            deadline.as_secs_f64()
        )),
    }
}

/// [`template::render_json`], off the runtime's threads.
pub async fn json(value: &Value, ctx: &Ctx, deadline: Duration) -> Result<Value, String> {
    if !template::is_templated_json(value) {
        return Ok(value.clone());
    }
    if lookups_only(value) {
        return template::render_json(value, ctx);
    }
    let (value, ctx) = (value.clone(), ctx.clone());
    off_thread(deadline, move || template::render_json(&value, &ctx)).await
}

/// [`template::render_text`], off the runtime's threads.
pub async fn text(src: &str, ctx: &Ctx, deadline: Duration) -> Result<String, String> {
    if !template::is_templated(src) {
        return Ok(src.to_string());
    }
    if template::is_lookup_only(src) {
        return template::render_text(src, ctx);
    }
    let (src, ctx) = (src.to_string(), ctx.clone());
    off_thread(deadline, move || template::render_text(&src, &ctx)).await
}

/// [`template::eval_condition`], off the runtime's threads.
pub async fn condition(expr: &str, ctx: &Ctx, deadline: Duration) -> Result<bool, String> {
    if template::is_simple_condition(expr) {
        return template::eval_condition(expr, ctx);
    }
    let (expr, ctx) = (expr.to_string(), ctx.clone());
    off_thread(deadline, move || template::eval_condition(&expr, &ctx)).await
}

/// Whether every string inside `value` is rendered inline ([`template::is_lookup_only`]).
fn lookups_only(value: &Value) -> bool {
    match value {
        Value::String(s) => template::is_lookup_only(s),
        Value::Array(items) => items.iter().all(lookups_only),
        Value::Object(map) => map.values().all(lookups_only),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn renders_come_back_and_plain_strings_are_not_rendered() {
        let ctx: Ctx = Arc::new(json!({"variables": {"n": 2}}));
        let d = Duration::from_secs(2);
        assert_eq!(
            json(&json!({"a": "{{ variables.n }}"}), &ctx, d).await,
            Ok(json!({"a": 2}))
        );
        assert_eq!(
            json(&json!({"a": "plain"}), &ctx, d).await,
            Ok(json!({"a": "plain"}))
        );
        assert_eq!(
            text("n={{ variables.n }}", &ctx, d).await.as_deref(),
            Ok("n=2")
        );
        assert_eq!(condition("variables.n > 1", &ctx, d).await, Ok(true));
    }

    #[tokio::test]
    async fn a_render_past_the_deadline_fails_naming_the_setting() {
        let ctx: Ctx = Arc::new(json!({}));
        let slow = "{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}";
        let e = text(slow, &ctx, Duration::from_millis(1))
            .await
            .unwrap_err();
        assert_eq!(
            e,
            "template took longer than TEMPLATE_DEADLINE_SECONDS (0.001s)"
        );
    }
}
