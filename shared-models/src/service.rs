//! The one `main` of every Thygon binary. A binary describes itself as a [`Service`] and its
//! `main` is `shared_models::service::main::<MyService>()`; this runs, in order:
//!
//! 1. logging (`LOG_FORMAT`, `RUST_LOG`);
//! 2. the shared subcommands ([`crate::cli`]: `healthcheck`, `prestop`), and `migrate` for a
//!    service that has it ([`Service::MIGRATE`]): apply the migrations through
//!    `MIGRATION_DATABASE_URL` and exit;
//! 3. the settings, from the environment;
//! 4. the schema check ([`crate::db::check_schema`]): a process never migrates; it refuses to
//!    start on a schema older than it needs, naming what to run, after waiting at most
//!    `SCHEMA_WAIT_SECONDS` for a migrate step running beside it;
//! 5. the service itself ([`Service::serve`]) until SIGINT/SIGTERM, on its runtime.
//!
//! Every failure is one `error` log line and exit code 1.

use crate::config::CommonConfig;
use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

/// Where a service's async code runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// An actix `System` (the HTTP services: actix-web's own workers serve the requests, the
    /// main thread runs the background tasks).
    Actix,
    /// A multi-threaded tokio runtime, stopped with a bounded wait for blocking tasks
    /// ([`RUNTIME_SHUTDOWN`]): the worker, whose renders and calls must not keep the process
    /// alive past its grace period.
    Tokio,
}

/// How long a [`Runtime::Tokio`] process waits at exit for tasks still running.
pub const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(1);

/// What the shared [`main`] needs to know of a binary.
pub trait Service {
    /// The binary's name, in log lines.
    const NAME: &'static str;
    /// Its `HTTP_ADDR` when unset (the `healthcheck` probe's port).
    const DEFAULT_HTTP_ADDR: &'static str;
    /// Whether it answers `migrate` (one binary does: `workflow-service`).
    const MIGRATE: bool = false;
    const RUNTIME: Runtime;
    type Settings;

    /// The settings, from the environment.
    fn settings() -> Result<Self::Settings, String>;
    /// The settings every process has.
    fn common(settings: &Self::Settings) -> &CommonConfig;
    /// Build everything and serve until SIGINT/SIGTERM, then stop cleanly.
    fn serve(settings: Self::Settings) -> impl Future<Output = Result<(), String>>;
}

/// The whole `main` of a binary.
pub fn main<S: Service>() -> ExitCode {
    crate::config::init_logging();
    let own: &[&str] = if S::MIGRATE { &["migrate"] } else { &[] };
    if let Some(done) = crate::cli::dispatch(S::DEFAULT_HTTP_ADDR, own) {
        return done;
    }
    let settings = match S::settings() {
        Ok(settings) => settings,
        Err(e) => return failure(&format!("configuration: {e}")),
    };
    let common = S::common(&settings);
    if std::env::var_os("MIGRATE_ON_START").is_some() {
        log::warn!(
            "MIGRATE_ON_START is no longer read: processes never migrate, `workflow-service migrate` does"
        );
    }
    if S::MIGRATE && std::env::args().nth(1).as_deref() == Some("migrate") {
        return match crate::db::run_migrations(&common.migration_database_url) {
            Ok(n) => {
                log::info!("migrations: {n} applied");
                ExitCode::SUCCESS
            }
            Err(e) => failure(&format!("migrations: {e}")),
        };
    }
    if let Err(e) = crate::db::check_schema(common) {
        return failure(&format!("{}: {e}", S::NAME));
    }
    let result = match S::RUNTIME {
        Runtime::Actix => actix_web::rt::System::new().block_on(S::serve(settings)),
        Runtime::Tokio => match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => {
                let result = runtime.block_on(S::serve(settings));
                // Dropping the runtime would wait for every blocking task, however long.
                runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
                result
            }
            Err(e) => Err(format!("cannot start the async runtime: {e}")),
        },
    };
    match result {
        Ok(()) => {
            log::info!("{} stopped", S::NAME);
            ExitCode::SUCCESS
        }
        Err(e) => failure(&e),
    }
}

fn failure(message: &str) -> ExitCode {
    log::error!("{message}");
    ExitCode::FAILURE
}

/// Resolves at the first SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        // Without a handler there is no Ctrl-C to wait for (not a stop signal at once).
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
