use executor_worker::agents::AgentRegistry;
use executor_worker::config::{Settings, DEFAULT_HTTP_ADDR};
use executor_worker::consumer::WorkerState;
use executor_worker::startup;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// How long the runtime's shutdown waits for tasks still running once the worker has
/// stopped (handed back its runs, closed its channel): a render on the blocking pool or a
/// task stuck in a long call must not keep the process alive past its grace period.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    shared_models::config::init_logging();
    // `healthcheck`, `prestop`.
    if let Some(done) = shared_models::cli::dispatch(DEFAULT_HTTP_ADDR, &[]) {
        return done;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            log::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run());
    // Dropping the runtime would wait for every blocking task, however long it runs.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let settings = Settings::from_env()?;
    shared_models::db::prepare_schema(&settings.common).map_err(|e| format!("migrations: {e}"))?;
    let agents = AgentRegistry::from_env()?;
    let pool = shared_models::db::pool_with(&settings.common.database_url, &settings.common.pool);
    shared_models::db::pool_metrics::register(&pool);
    let engine = Arc::new(startup::build_engine(&settings, pool.clone(), agents)?);
    let state = Arc::new(WorkerState::default());
    let listener = std::net::TcpListener::bind(&settings.http_addr)
        .map_err(|e| format!("cannot bind {}: {e}", settings.http_addr))?;
    let metrics = shared_models::metrics::Endpoint::bind(settings.common.metrics_addr)
        .map_err(|e| e.to_string())?;
    let presence = startup::build_presence(&settings, pool.clone(), state.clone());
    let (health, metrics) = startup::health_server(
        listener,
        metrics,
        pool,
        state.clone(),
        settings.worker_id.clone(),
    )
    .map_err(|e| e.to_string())?;
    let health_handle = health.handle();
    tokio::spawn(metrics.run_beside(health));
    log::info!(
        "worker {} up; health on {}",
        settings.worker_id,
        settings.http_addr
    );

    let (stop, stopped) = tokio::sync::watch::channel(false);
    // The heartbeat goes on while in-flight jobs drain, and stops after them.
    let (stop_beating, beating) = tokio::sync::watch::channel(false);
    let heartbeat = tokio::spawn(presence.clone().run(beating));
    let consumer = tokio::spawn(startup::build_consumer(&settings, engine, state).run(stopped));
    shutdown_signal().await;
    log::info!(
        "shutting down: no new jobs; waiting up to {:?} for in-flight ones",
        settings.shutdown_grace
    );
    let _ = stop.send(true);
    // The consumer drains within the grace period and hands back what is left; the margin
    // covers the handback and closing the channel, so the process never outlives both.
    let margin = settings.shutdown_grace + Duration::from_secs(5);
    if tokio::time::timeout(margin, consumer).await.is_err() {
        log::warn!("the consumer did not stop within {margin:?}; exiting anyway");
    }
    let _ = stop_beating.send(true);
    let _ = heartbeat.await;
    if let Err(e) = presence.remove().await {
        log::warn!("cannot remove this worker's row from workers: {e}");
    }
    health_handle.stop(true).await;
    log::info!("worker stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
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
