//! Builds the HTTP server and its background tasks (the trigger batcher, the outbox relay,
//! the wake-up scheduler, the queue sampler of `GET /ops/queues` and the reads of the
//! database gauges of `GET /metrics`). The listener is bound here (port 0 in tests) so
//! callers can ask for the port before the server runs.

use crate::batcher::Batcher;
use crate::config::Settings;
use crate::metrics::DatabaseGauges;
use crate::publisher::{AmqpPublisher, JobPublisher};
use crate::queue_stats::{Sampler, SharedQueueStats};
use crate::routes::events::EventStreams;
use crate::sweeper::PendingSweeper;
use crate::{relay, routes, scheduler};
use actix_web::dev::Server;
use actix_web::{web, HttpServer};
use shared_models::auth::Authenticator;
use shared_models::db::{self, PgPool};
use shared_models::metrics::{Endpoint, Exposition, MetricsServer};
use shared_models::queue::QueueNames;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

pub struct Application {
    port: u16,
    server: Server,
    /// `/metrics` on `METRICS_ADDR`, when set (then not on the main port).
    metrics: MetricsServer,
    /// The runs and outbox gauges of `/metrics`, read every `METRICS_REFRESH_SECONDS` (or by
    /// [`DatabaseGauges::refresh`] when that task is off).
    gauges: DatabaseGauges,
    /// The queue sampler, when its task is off ([`crate::config::Tasks::queue_sampler`]).
    sampler: Option<Sampler>,
    /// The trigger batcher and the tasks of [`crate::config::Tasks`]; aborted once the server has stopped
    /// (every request answered).
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

impl Application {
    /// The server on `HTTP_ADDR` (port 0: any free port, see [`Application::port`]), `/metrics`
    /// on `METRICS_ADDR` when set, the trigger batcher, and the background tasks that
    /// `settings.tasks` names. Spawns tasks: call it inside a tokio runtime.
    pub fn build(settings: &Settings) -> std::io::Result<Self> {
        shared_models::metrics::set_service_name("runtime-service");
        crate::metrics::register_counters();
        let common = &settings.common;
        let pool = db::pool_with(&common.database_url, &common.pool);
        db::pool_metrics::register(&pool);
        let names = QueueNames::new(&common.queue_prefix);
        let publisher: Arc<dyn JobPublisher> =
            Arc::new(AmqpPublisher::new(&common.broker, names.clone()));
        let listener = TcpListener::bind(&settings.http_addr)?;
        let port = listener.local_addr()?.port();
        let metrics = Endpoint::bind(common.metrics_addr)?;
        let sampler = Sampler::new(
            &common.broker,
            &names,
            pool.clone(),
            settings.ops_sample_interval,
        );
        let ops = OpsState {
            queues: sampler.stats(),
            worker_heartbeat: settings.worker_heartbeat,
        };
        let auth = web::Data::new(Authenticator::new(pool.clone(), &settings.auth));
        let (batcher, batch_loop) = Batcher::new(pool.clone(), publisher.clone());
        let gauges = DatabaseGauges::new(pool.clone());
        let exposition = Exposition::with_registry(gauges.registry());
        let metrics_on_main = metrics.on_main();
        let metrics = metrics.serve(exposition.clone())?;
        let state = web::Data::new(AppState {
            pool: pool.clone(),
            publisher: publisher.clone(),
            batcher,
            ops,
            streams: EventStreams::default(),
            event_stream_max: settings.event_stream_max,
        });
        let streams = state.streams.clone();
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

        let tasks = settings.tasks;
        let mut background = vec![tokio::spawn(batch_loop.run())];
        // The server stops on SIGTERM/SIGINT and waits for the responses in flight; the event
        // streams would hold it for its whole grace and then be cut: end them at once instead.
        background.push(tokio::spawn(async move {
            shared_models::service::shutdown_signal().await;
            streams.stop_all();
        }));
        if tasks.gauges {
            background.push(tokio::spawn(gauges.clone().run(settings.metrics_refresh)));
        }
        let sampler = if tasks.queue_sampler {
            background.push(tokio::spawn(sampler.run()));
            None
        } else {
            Some(sampler)
        };
        if tasks.relay {
            background.push(tokio::spawn(relay::run(
                pool.clone(),
                publisher,
                settings.relay_interval,
                settings.relay_grace,
            )));
        }
        if tasks.scheduler {
            background.push(tokio::spawn(scheduler::run(
                pool,
                settings.scheduler_interval,
                settings.reaper_grace,
                settings
                    .pending_requeue
                    .map(|p| PendingSweeper::new(p.after, p.batch)),
                settings.outbox_retention,
            )));
        }
        Ok(Self {
            port,
            server,
            metrics,
            gauges,
            sampler,
            background,
        })
    }

    /// The queue sampler, not running ([`crate::config::Tasks::queue_sampler`] off), once: the caller
    /// samples when it chooses, and `GET /ops/queues` shows what it wrote.
    pub fn take_sampler(&mut self) -> Option<Sampler> {
        self.sampler.take()
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
