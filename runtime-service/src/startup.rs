//! Builds the HTTP server and its background tasks (the trigger batcher, the outbox relay,
//! the wake-up scheduler, the queue sampler of `GET /ops/queues` and the reads of the
//! database gauges of `GET /metrics`). The listener is bound here (port 0 in tests) so
//! callers can ask for the port before the server runs.

use crate::batcher::Batcher;
use crate::config::Settings;
use crate::metrics::DatabaseGauges;
use crate::publisher::{AmqpPublisher, JobPublisher};
use crate::queue_stats::{QueueStats, Sampler, SharedQueueStats};
use crate::routes::events::EventStreams;
use crate::sweeper::PendingSweeper;
use crate::{relay, routes, scheduler};
use actix_web::dev::Server;
use actix_web::{web, HttpServer};
use shared_models::auth::{AuthConfig, Authenticator};
use shared_models::db::{self, PgPool};
use shared_models::metrics::{Endpoint, Exposition, MetricsServer};
use shared_models::queue::QueueNames;
use std::net::TcpListener;
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub struct Application {
    port: u16,
    server: Server,
    /// `/metrics` on `METRICS_ADDR`, when set (then not on the main port).
    metrics: MetricsServer,
    /// The runs and outbox gauges of `/metrics`; [`Application::build`] reads them every
    /// `METRICS_REFRESH_SECONDS`, tests call [`DatabaseGauges::refresh`].
    gauges: DatabaseGauges,
    /// The trigger batcher, the outbox relay, the scheduler and the gauges' reads; aborted
    /// once the server has stopped (every request answered).
    background: Vec<tokio::task::JoinHandle<()>>,
}

/// What the HTTP layer needs besides the request.
pub struct AppState {
    pub pool: PgPool,
    pub publisher: Arc<dyn JobPublisher>,
    /// Where triggers without an Idempotency-Key go to be written together.
    pub batcher: Batcher,
    pub ops: OpsState,
    /// The event streams open on this replica, per key (`maxEventStreams`).
    pub streams: EventStreams,
    /// How long an event stream stays open (`EVENT_STREAM_MAX_SECONDS`).
    pub event_stream_max: Duration,
}

/// What the `/ops` routes read: the queue sampler's numbers, and the workers' heartbeat
/// interval (a worker is live while its last beat is at most three intervals old).
#[derive(Clone)]
pub struct OpsState {
    pub queues: SharedQueueStats,
    pub worker_heartbeat: Duration,
}

impl OpsState {
    /// Queues never sampled (`GET /ops/queues` answers 503), the default heartbeat.
    pub fn unsampled(names: &QueueNames) -> Self {
        let interval = Duration::from_secs(5);
        Self {
            queues: Arc::new(RwLock::new(QueueStats::new(names, interval))),
            worker_heartbeat: interval,
        }
    }
}

impl Application {
    pub fn build(settings: &Settings) -> std::io::Result<Self> {
        let pool = db::pool_with(&settings.common.database_url, &settings.common.pool);
        db::pool_metrics::register(&pool);
        let publisher: Arc<dyn JobPublisher> = Arc::new(AmqpPublisher::new(
            &settings.common.broker,
            QueueNames::new(&settings.common.queue_prefix),
        ));
        let listener = TcpListener::bind(&settings.http_addr)?;
        let metrics = Endpoint::bind(settings.common.metrics_addr)?;
        let sampler = Sampler::new(
            &settings.common.broker,
            &QueueNames::new(&settings.common.queue_prefix),
            pool.clone(),
            settings.ops_sample_interval,
        );
        let ops = OpsState {
            queues: sampler.stats(),
            worker_heartbeat: settings.worker_heartbeat,
        };
        let mut app = Self::assemble(
            listener,
            metrics,
            pool.clone(),
            publisher.clone(),
            &settings.auth,
            ops,
            settings.event_stream_max,
        )?;
        app.background.extend([
            tokio::spawn(app.gauges.clone().run(settings.metrics_refresh)),
            tokio::spawn(sampler.run()),
            tokio::spawn(relay::run(
                pool.clone(),
                publisher,
                settings.relay_interval,
                settings.relay_grace,
            )),
            tokio::spawn(scheduler::run(
                pool,
                settings.scheduler_interval,
                settings.reaper_grace,
                settings
                    .pending_requeue
                    .map(|p| PendingSweeper::new(p.after, p.batch)),
                settings.outbox_retention,
            )),
        ]);
        Ok(app)
    }

    /// The HTTP server and its trigger batcher alone (no relay, no scheduler, no queue
    /// sampler): tests drive those themselves.
    pub fn with_parts(
        listener: TcpListener,
        pool: PgPool,
        publisher: Arc<dyn JobPublisher>,
        auth: &AuthConfig,
    ) -> std::io::Result<Self> {
        let ops = OpsState::unsampled(&QueueNames::new(shared_models::queue::DEFAULT_PREFIX));
        Self::with_ops(listener, pool, publisher, auth, ops)
    }

    /// [`Application::with_parts`] with the `/ops` routes reading `ops` (a sampler the
    /// caller runs). Spawns the trigger batcher: call it inside a tokio runtime.
    pub fn with_ops(
        listener: TcpListener,
        pool: PgPool,
        publisher: Arc<dyn JobPublisher>,
        auth: &AuthConfig,
        ops: OpsState,
    ) -> std::io::Result<Self> {
        let lifetime = crate::config::event_stream_max_from_env()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        Self::with_stream_lifetime(listener, pool, publisher, auth, ops, lifetime)
    }

    /// [`Application::with_ops`] with event streams ending after `event_stream_max`.
    pub fn with_stream_lifetime(
        listener: TcpListener,
        pool: PgPool,
        publisher: Arc<dyn JobPublisher>,
        auth: &AuthConfig,
        ops: OpsState,
        event_stream_max: Duration,
    ) -> std::io::Result<Self> {
        let main = Endpoint::Main;
        Self::assemble(listener, main, pool, publisher, auth, ops, event_stream_max)
    }

    fn assemble(
        listener: TcpListener,
        metrics: Endpoint,
        pool: PgPool,
        publisher: Arc<dyn JobPublisher>,
        auth: &AuthConfig,
        ops: OpsState,
        event_stream_max: Duration,
    ) -> std::io::Result<Self> {
        shared_models::metrics::set_service_name("runtime-service");
        crate::metrics::register_counters();
        let port = listener.local_addr()?.port();
        let auth = web::Data::new(Authenticator::new(pool.clone(), auth));
        let (batcher, batch_loop) = Batcher::new(pool.clone(), publisher.clone());
        let gauges = DatabaseGauges::new(pool.clone());
        let exposition = Exposition::with_registry(gauges.registry());
        let metrics_on_main = metrics.on_main();
        let metrics = metrics.serve(exposition.clone())?;
        let state = web::Data::new(AppState {
            pool,
            publisher,
            batcher,
            ops,
            streams: EventStreams::default(),
            event_stream_max,
        });
        let server = HttpServer::new(move || {
            shared_models::http::app(auth.clone())
                .app_data(state.clone())
                .configure(|cfg| exposition.route_if(metrics_on_main, cfg))
                .configure(routes::configure)
        })
        // A client that closes its side has gone: abort the connection at once, so an event
        // stream stops polling then, not after its next failed write.
        .h1_allow_half_closed(false)
        .listen(listener)?
        .shutdown_timeout(10)
        .run();
        Ok(Self {
            port,
            server,
            gauges,
            metrics,
            background: vec![tokio::spawn(batch_loop.run())],
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of `/metrics` when it has one of its own (`METRICS_ADDR`).
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics.port()
    }

    /// The database gauges this application's `/metrics` shows.
    pub fn gauges(&self) -> &DatabaseGauges {
        &self.gauges
    }

    pub fn server_handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Runs until SIGINT/SIGTERM: the server drains in-flight requests, then the batcher, the
    /// relay and the scheduler stop (safe at any point: their work is transactional or
    /// claimed, and a batch already taken finishes in its own task).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.metrics.run_beside(self.server).await;
        for task in self.background {
            task.abort();
        }
        result
    }
}

/// How long `/readyz` waits for the broker before calling it unreachable.
pub const READY_TIMEOUT: Duration = Duration::from_secs(3);

/// The runtime service process, for the shared `main` ([`shared_models::service::main`]).
pub struct RuntimeService;

impl shared_models::service::Service for RuntimeService {
    const NAME: &'static str = "runtime-service";
    const DEFAULT_HTTP_ADDR: &'static str = crate::config::DEFAULT_HTTP_ADDR;
    const RUNTIME: shared_models::service::Runtime = shared_models::service::Runtime::Actix;
    type Settings = Settings;

    fn settings() -> Result<Settings, String> {
        Settings::from_env()
    }

    fn common(settings: &Settings) -> &shared_models::config::CommonConfig {
        &settings.common
    }

    async fn serve(settings: Settings) -> Result<(), String> {
        let app = Application::build(&settings).map_err(|e| format!("cannot start: {e}"))?;
        log::info!("runtime-service listening on {}", settings.http_addr);
        app.run_until_stopped()
            .await
            .map_err(|e| format!("server error: {e}"))
    }
}
