//! What a log line is about: the request id and the run id of the work being done, held in a
//! task-local for the length of a future, so every line logged while serving a request or
//! executing a run carries them (see [`crate::config::init_logging`]), with no id threaded
//! through each call.
//!
//! - The HTTP edge scopes each request with its id ([`crate::http::request_id_middleware`]).
//! - The worker scopes each job with its run and request ids.
//! - A task-local does not follow `tokio::spawn` nor a blocking thread: wrap a spawned future
//!   in [`inherit`]; [`crate::db::blocking`] carries the context into its closure itself.

use std::future::Future;
use tokio::task::futures::TaskLocalFuture;

/// The ids a log line carries when it is known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogContext {
    pub request_id: Option<String>,
    pub run_id: Option<String>,
}

impl LogContext {
    /// The context of an HTTP request.
    pub(crate) fn request(request_id: impl Into<String>) -> Self {
        Self {
            request_id: Some(request_id.into()),
            run_id: None,
        }
    }

    /// The context of a run's execution (the request that created it, when known).
    pub fn run(run_id: impl Into<String>, request_id: Option<impl Into<String>>) -> Self {
        Self {
            request_id: request_id.map(Into::into),
            run_id: Some(run_id.into()),
        }
    }
}

tokio::task_local! {
    static CONTEXT: LogContext;
}

/// `fut` with `ctx` as its log context (replacing any outer one while it is polled).
pub fn scope<F: Future>(ctx: LogContext, fut: F) -> TaskLocalFuture<LogContext, F> {
    CONTEXT.scope(ctx, fut)
}

/// `fut` with the log context of the caller: for futures given to `tokio::spawn`.
pub fn inherit<F: Future>(fut: F) -> TaskLocalFuture<LogContext, F> {
    scope(current().unwrap_or_default(), fut)
}

/// Run `f` (synchronous, e.g. on a blocking thread) with `ctx` as its log context.
pub fn sync_scope<R>(ctx: Option<LogContext>, f: impl FnOnce() -> R) -> R {
    match ctx {
        Some(ctx) => CONTEXT.sync_scope(ctx, f),
        None => f(),
    }
}

/// The log context of the code running now, if it runs in one.
pub(crate) fn current() -> Option<LogContext> {
    CONTEXT.try_with(LogContext::clone).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_scope_holds_its_context_and_inherit_carries_it_into_a_spawned_task() {
        assert_eq!(current(), None);
        let ctx = LogContext::run("run_1", Some("req_1"));
        let seen = scope(ctx.clone(), async {
            let inner = tokio::spawn(inherit(async { current() }));
            let bare = tokio::spawn(async { current() });
            (
                current(),
                inner.await.unwrap(),
                bare.await.unwrap(),
                tokio::task::spawn_blocking({
                    let ctx = current();
                    move || sync_scope(ctx, current)
                })
                .await
                .unwrap(),
            )
        })
        .await;
        assert_eq!(
            seen,
            (Some(ctx.clone()), Some(ctx.clone()), None, Some(ctx))
        );
        assert_eq!(current(), None, "the context ends with its scope");
    }
}
