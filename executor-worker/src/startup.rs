//! Wires a worker process: the engine, the queue consumer and the health endpoints.

use crate::agents::AgentRegistry;
use crate::config::Settings;
use crate::consumer::{Consumer, WorkerState};
use crate::engine::Engine;
use crate::outbound::Outbound;
use crate::storage::LeaseHolder;
use actix_web::dev::Server;
use actix_web::{web, App, HttpResponse, HttpServer};
use shared_models::db::{self, PgPool};
use shared_models::metrics::{Endpoint, Exposition, MetricsServer};
use shared_models::queue::QueueNames;
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub fn build_engine(
    settings: &Settings,
    pool: PgPool,
    agents: AgentRegistry,
) -> Result<Engine, String> {
    let http = Outbound::new(settings.outbound.clone())?;
    let me = LeaseHolder {
        worker_id: settings.worker_id.clone(),
        lease: settings.lease,
    };
    // Once per process, before the first render.
    shared_models::template::set_limits(settings.templates);
    let mut engine = Engine::new(
        pool,
        agents,
        http,
        me,
        settings.agent_timeout,
        settings.max_running_per_org,
    );
    engine.limits = settings.limits;
    Ok(engine)
}

pub fn build_consumer(
    settings: &Settings,
    engine: Arc<Engine>,
    state: Arc<WorkerState>,
) -> Arc<Consumer> {
    Arc::new(Consumer {
        broker: settings.common.broker.clone(),
        names: QueueNames::new(&settings.common.queue_prefix),
        concurrency: settings.concurrency,
        shutdown_grace: settings.shutdown_grace,
        engine,
        state,
    })
}

/// This worker's presence row, beating every `WORKER_HEARTBEAT_SECONDS`.
pub fn build_presence(
    settings: &Settings,
    pool: PgPool,
    state: Arc<WorkerState>,
) -> Arc<crate::presence::Presence> {
    Arc::new(crate::presence::Presence::new(
        pool,
        &settings.worker_id,
        settings.concurrency,
        settings.heartbeat,
        state,
    ))
}

struct HealthState {
    pool: PgPool,
    worker: Arc<WorkerState>,
    worker_id: String,
}

/// `/healthz`, `/readyz` (database reachable and consuming), `/status` and `/metrics` for one
/// worker; `/metrics` on a server of its own (the second one) when `metrics` is
/// [`Endpoint::Own`] (`METRICS_ADDR`). Neither handles signals: the worker stops them
/// ([`MetricsServer::run_beside`] stops the second after the first).
pub fn health_server(
    listener: TcpListener,
    metrics: Endpoint,
    pool: PgPool,
    worker: Arc<WorkerState>,
    worker_id: String,
) -> std::io::Result<(Server, MetricsServer)> {
    // Registered before the first scrape, so it shows them before their first sample.
    crate::metrics::register();
    let exposition = Exposition::default();
    let metrics_on_main = metrics.on_main();
    let metrics = metrics.serve(exposition.clone())?;
    let state = web::Data::new(HealthState {
        pool,
        worker,
        worker_id,
    });
    let health = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/healthz", web::get().to(shared_models::http::healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/status", web::get().to(status))
            .configure(|cfg| exposition.route_if(metrics_on_main, cfg))
            .default_service(web::to(shared_models::http::route_not_found))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok((health, metrics))
}

async fn readyz(state: web::Data<HealthState>) -> HttpResponse {
    let pool = state.pool.clone();
    let database = tokio::task::spawn_blocking(move || db::ping(&pool))
        .await
        .unwrap_or(false);
    let broker = state.worker.consuming.load(Ordering::SeqCst);
    shared_models::http::readiness(&[("database", database), ("broker", broker)])
}

async fn status(state: web::Data<HealthState>) -> HttpResponse {
    shared_models::envelope::ok(serde_json::json!({
        "workerId": state.worker_id,
        "consuming": state.worker.consuming.load(Ordering::SeqCst),
        "inFlight": state.worker.in_flight(),
    }))
}

/// The worker process, for the shared `main` ([`shared_models::service::main`]).
pub struct Worker;

impl shared_models::service::Service for Worker {
    const NAME: &'static str = "executor-worker";
    const DEFAULT_HTTP_ADDR: &'static str = crate::config::DEFAULT_HTTP_ADDR;
    const RUNTIME: shared_models::service::Runtime = shared_models::service::Runtime::Tokio;
    type Settings = Settings;

    fn settings() -> Result<Settings, String> {
        Settings::from_env()
    }

    fn common(settings: &Settings) -> &shared_models::config::CommonConfig {
        &settings.common
    }

    async fn serve(settings: Settings) -> Result<(), String> {
        serve(settings).await
    }
}

/// Consume jobs until SIGINT/SIGTERM, then drain: no new jobs; in-flight ones get
/// `SHUTDOWN_GRACE_SECONDS`, and what is left is handed back; the heartbeat stops last.
async fn serve(settings: Settings) -> Result<(), String> {
    let agents = AgentRegistry::from_env()?;
    // The worker's hot statements are written for their generic plans (tests/plans.rs), and
    // planned at every call otherwise (the claim: about 1.5 ms of planning each).
    let pool_settings = db::PoolSettings {
        generic_plans: true,
        ..settings.common.pool.clone()
    };
    let pool = db::pool_with(&settings.common.database_url, &pool_settings);
    db::pool_metrics::register(&pool);
    let engine = Arc::new(build_engine(&settings, pool.clone(), agents)?);
    let state = Arc::new(WorkerState::default());
    let listener = TcpListener::bind(&settings.http_addr)
        .map_err(|e| format!("cannot bind {}: {e}", settings.http_addr))?;
    let metrics = Endpoint::bind(settings.common.metrics_addr).map_err(|e| e.to_string())?;
    let presence = build_presence(&settings, pool.clone(), state.clone());
    let (health, metrics) = health_server(
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
    let consumer = tokio::spawn(build_consumer(&settings, engine, state).run(stopped));
    shared_models::service::shutdown_signal().await;
    log::info!(
        "shutting down: no new jobs; waiting up to {:?} for in-flight ones",
        settings.shutdown_grace
    );
    let _ = stop.send(true);
    // The consumer drains within the grace period and hands back what is left; the margin
    // covers the handback and closing the channel, so the process never outlives both.
    let margin = settings.shutdown_grace + std::time::Duration::from_secs(5);
    if tokio::time::timeout(margin, consumer).await.is_err() {
        log::warn!("the consumer did not stop within {margin:?}; exiting anyway");
    }
    let _ = stop_beating.send(true);
    let _ = heartbeat.await;
    if let Err(e) = presence.remove().await {
        log::warn!("cannot remove this worker's row from workers: {e}");
    }
    health_handle.stop(true).await;
    Ok(())
}
