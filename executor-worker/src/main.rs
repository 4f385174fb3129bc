use executor_worker::agents::AgentRegistry;
use executor_worker::config::Settings;
use executor_worker::consumer::WorkerState;
use executor_worker::startup;
use std::process::ExitCode;
use std::sync::Arc;

#[tokio::main]
async fn main() -> ExitCode {
    shared_models::config::init_logging();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let settings = Settings::from_env()?;
    shared_models::db::run_migrations(&settings.common.database_url)
        .map_err(|e| format!("migrations: {e}"))?;
    let agents = AgentRegistry::from_env()?;
    let pool = shared_models::db::pool(
        &settings.common.database_url,
        settings
            .common
            .db_pool_size
            .max(settings.concurrency as u32 + 2),
    );
    let engine = Arc::new(startup::build_engine(&settings, pool.clone(), agents)?);
    let state = Arc::new(WorkerState::default());
    let listener = std::net::TcpListener::bind(&settings.http_addr)
        .map_err(|e| format!("cannot bind {}: {e}", settings.http_addr))?;
    let presence = startup::build_presence(&settings, pool.clone(), state.clone());
    let health = startup::health_server(listener, pool, state.clone(), settings.worker_id.clone())
        .map_err(|e| e.to_string())?;
    let health_handle = health.handle();
    tokio::spawn(health);
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
    let _ = consumer.await;
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
