//! Connection pools and the embedded migrations.
//!
//! Diesel is synchronous: use the pool only from blocking contexts (`web::block`,
//! `tokio::task::spawn_blocking`), never on an async executor thread.

use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, ManageConnection, Pool, PooledConnection, R2D2Connection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use std::cell::Cell;
use std::time::{Duration, Instant};

pub type PgPool = Pool<Manager>;
pub type PgPooled = PooledConnection<Manager>;

/// By default, a pooled connection that ran a statement successfully this recently is
/// handed out again without a `SELECT 1` first ([`checkout`]); one idle for longer is
/// checked, as every connection used to be (`DB_TRUSTED_SECONDS`, [`PoolSettings::trusted_for`];
/// 0 checks every checkout). A round trip saved on every busy checkout (three on a trigger's
/// way to its run's end), at a cost: a server connection killed within this window (the
/// server restarted that fast, an operator's `pg_terminate_backend`) fails the one statement
/// sent on it (an outage error: a 503, or a job retried) instead of being replaced unseen.
pub const TRUSTED_FOR: Duration = Duration::from_secs(1);

/// This process's [`PoolSettings::trusted_for`], in milliseconds (set by [`pool_with`]).
static TRUSTED_MS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(TRUSTED_FOR.as_millis() as u64);

/// When a pooled connection last ran a statement successfully (its r2d2 extension).
struct LastGood(Instant);

thread_local! {
    /// Set just before a connection is dropped back into the pool to make the pool close it.
    static DISCARD: Cell<bool> = const { Cell::new(false) };
}

/// diesel's connection manager, with one addition: a connection [`checkout`] found dead, or
/// one whose statement failed because the server went away, is closed when it goes back to
/// the pool instead of kept (r2d2 asks `has_broken` on the thread that returns it).
#[derive(Debug)]
pub struct Manager(ConnectionManager<PgConnection>);

impl ManageConnection for Manager {
    type Connection = PgConnection;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<PgConnection, Self::Error> {
        self.0.connect()
    }

    fn is_valid(&self, conn: &mut PgConnection) -> Result<(), Self::Error> {
        self.0.is_valid(conn)
    }

    fn has_broken(&self, conn: &mut PgConnection) -> bool {
        DISCARD.with(|d| d.replace(false)) || self.0.has_broken(conn)
    }
}

/// Give `conn` back to the pool to be closed, not kept.
fn discard(conn: PgPooled) {
    DISCARD.with(|d| d.set(true));
    drop(conn);
    DISCARD.with(|d| d.set(false));
}

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Any number from one place; all processes take the same lock, so migrations run once.
const MIGRATION_LOCK_KEY: i64 = 0x7468_7967_6f6e; // "thygon"

#[derive(Debug, thiserror::Error)]
pub enum DbSetupError {
    #[error("cannot connect to the database: {0}")]
    Connect(#[from] diesel::ConnectionError),
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("cannot apply migrations: {0}")]
    Migrate(String),
    /// The schema is not the one this binary needs (what to do is in the text).
    #[error("{0}")]
    Schema(String),
    #[error("cannot build the connection pool: {0}")]
    Pool(#[from] diesel::r2d2::PoolError),
}

/// How a process's pool is sized and behaves (`DB_POOL_SIZE`, `DB_POOL_IDLE_SECONDS`,
/// `DB_STATEMENT_CACHE`); docs/DEPLOY.md "Sizing" has the connection budget these add up to.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// The most connections this process ever holds.
    pub max_size: u32,
    /// A connection idle this long is closed, so a burst (or the reconnect storm after an
    /// outage) does not leave the pool holding its peak.
    pub idle_timeout: Duration,
    /// Named prepared statements (diesel's statement cache). Off behind PgBouncer in
    /// transaction mode before 1.21, where a named statement prepared through one server
    /// connection is not there on the next: every statement is then sent unnamed, parsed and
    /// bound in one round trip.
    pub statement_cache: bool,
    /// Every connection plans its prepared statements once, generically
    /// (`plan_cache_mode = force_generic_plan`), instead of PostgreSQL's choice, which keeps
    /// planning a statement whose generic plan it estimates dearer than a custom one: the
    /// worker's claim was planned at every call (about 1.5 ms of planning for 0.2 ms of
    /// execution). Only for a process whose statements are written for their generic plans
    /// (the worker's: `executor-worker/tests/plans.rs` reads them); not from the environment.
    pub generic_plans: bool,
    /// A connection that worked this recently goes out without a check ([`TRUSTED_FOR`]).
    pub trusted_for: Duration,
}

impl PoolSettings {
    /// `max_size` connections, idle ones closed after 30 s, statements cached.
    pub fn sized(max_size: u32) -> PoolSettings {
        PoolSettings {
            max_size,
            idle_timeout: Duration::from_secs(30),
            statement_cache: true,
            generic_plans: false,
            trusted_for: TRUSTED_FOR,
        }
    }

    /// `DB_POOL_SIZE` (default `default_size`, this process's share of the budget),
    /// `DB_POOL_IDLE_SECONDS` (30), `DB_STATEMENT_CACHE` (true) and `DB_TRUSTED_SECONDS` (1).
    pub fn from_env(default_size: u32) -> Result<PoolSettings, String> {
        let max_size: u32 = crate::config::env_parse("DB_POOL_SIZE", default_size)?;
        if !(1..=1000).contains(&max_size) {
            return Err(format!(
                "DB_POOL_SIZE={max_size} must be between 1 and 1000"
            ));
        }
        let idle_timeout = crate::config::env_seconds("DB_POOL_IDLE_SECONDS", 30.0)?;
        if idle_timeout < Duration::from_secs(1) {
            return Err("DB_POOL_IDLE_SECONDS must be at least 1".to_string());
        }
        Ok(PoolSettings {
            max_size,
            idle_timeout,
            statement_cache: crate::config::env_bool("DB_STATEMENT_CACHE", true)?,
            generic_plans: false,
            trusted_for: crate::config::env_seconds("DB_TRUSTED_SECONDS", 1.0)?,
        })
    }
}

/// A pool that does not fail at start when the database is down: connections are made on
/// demand, so a service starts, reports not-ready, and recovers when PostgreSQL returns.
pub fn pool(database_url: &str, max_size: u32) -> PgPool {
    pool_with(database_url, &PoolSettings::sized(max_size))
}

/// [`pool`] with every setting. The pool keeps no idle connection (`min_idle` 0), closes
/// idle ones after [`PoolSettings::idle_timeout`], hands a connection out checked unless it
/// worked a moment ago ([`checkout`], [`TRUSTED_FOR`]), and reports checkouts, waits and
/// timeouts to [`pool_metrics`].
pub fn pool_with(database_url: &str, settings: &PoolSettings) -> PgPool {
    TRUSTED_MS.store(
        settings.trusted_for.as_millis() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    Pool::builder()
        .max_size(settings.max_size)
        .min_idle(Some(0))
        .idle_timeout(Some(settings.idle_timeout))
        .max_lifetime(Some(Duration::from_secs(30 * 60)))
        .connection_timeout(Duration::from_secs(5))
        // `checkout` checks what needs it.
        .test_on_check_out(false)
        .connection_customizer(Box::new(Customizer {
            statement_cache: settings.statement_cache,
            generic_plans: settings.generic_plans,
        }))
        .event_handler(Box::new(pool_metrics::Events))
        .build_unchecked(Manager(ConnectionManager::new(database_url)))
}

/// Applied to every new connection of a pool.
#[derive(Debug)]
struct Customizer {
    statement_cache: bool,
    generic_plans: bool,
}

impl diesel::r2d2::CustomizeConnection<PgConnection, diesel::r2d2::Error> for Customizer {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        if !self.statement_cache {
            use diesel::connection::{CacheSize, Connection};
            conn.set_prepared_statement_cache_size(CacheSize::Disabled);
        }
        if self.generic_plans {
            diesel::sql_query("SET plan_cache_mode = force_generic_plan")
                .execute(conn)
                .map_err(diesel::r2d2::Error::QueryError)?;
        }
        Ok(())
    }
}

/// A working connection from the pool, counted in `thygon_db_pool_waiting` while it is
/// awaited: one that ran a statement within [`TRUSTED_FOR`] as it is, any other once a
/// `SELECT 1` answered on it (a dead one is closed and the next tried, as r2d2's own check
/// does).
pub fn checkout(pool: &PgPool) -> Result<PgPooled, diesel::r2d2::PoolError> {
    pool_metrics::WAITING.inc();
    let conn = checked(pool);
    pool_metrics::WAITING.dec();
    conn
}

fn checked(pool: &PgPool) -> Result<PgPooled, diesel::r2d2::PoolError> {
    // Each failed check closes a connection; past the pool's size the next ones are new.
    for _ in 0..=pool.max_size() {
        let mut conn = pool.get()?;
        let trusted = PooledConnection::extensions(&conn)
            .get::<LastGood>()
            .is_some_and(|at| {
                let trusted = TRUSTED_MS.load(std::sync::atomic::Ordering::Relaxed);
                at.0.elapsed() < Duration::from_millis(trusted)
            });
        if trusted || conn.ping().is_ok() {
            return Ok(conn);
        }
        discard(conn);
    }
    pool.get()
}

/// After a statement on `conn`: remember it worked, or close the connection when the server
/// is gone ([`is_unavailable`]).
fn after<T>(mut conn: PgPooled, result: &Result<T, diesel::result::Error>) {
    match result {
        Ok(_) => {
            PooledConnection::extensions_mut(&mut conn).insert(LastGood(Instant::now()));
        }
        Err(e) if is_unavailable(e) => discard(conn),
        Err(_) => {}
    }
}

/// The pool's state and history in `/metrics`: connections in use and idle (read from the
/// pool at each scrape), threads waiting for one, checkouts with their wait, and timeouts.
pub mod pool_metrics {
    use super::PgPool;
    use prometheus::core::{Collector, Desc};
    use prometheus::proto::MetricFamily;
    use prometheus::{
        register_histogram, register_int_counter, register_int_gauge, Histogram, IntCounter,
        IntGauge, IntGaugeVec, Opts,
    };
    use std::sync::LazyLock;

    pub static WAITING: LazyLock<IntGauge> = LazyLock::new(|| {
        register_int_gauge!(
            "thygon_db_pool_waiting",
            "Threads waiting for a connection from this process's pool now"
        )
        .expect("register thygon_db_pool_waiting")
    });
    pub static WAIT_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
        register_histogram!(
            "thygon_db_pool_wait_seconds",
            "How long each checkout waited for a connection",
            vec![0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]
        )
        .expect("register thygon_db_pool_wait_seconds")
    });
    pub static TIMEOUTS: LazyLock<IntCounter> = LazyLock::new(|| {
        register_int_counter!(
            "thygon_db_pool_timeouts_total",
            "Checkouts that found no connection within the pool's timeout (5 s)"
        )
        .expect("register thygon_db_pool_timeouts_total")
    });

    /// r2d2's events, into the metrics above.
    #[derive(Debug)]
    pub(super) struct Events;

    impl diesel::r2d2::HandleEvent for Events {
        fn handle_checkout(&self, event: diesel::r2d2::event::CheckoutEvent) {
            WAIT_SECONDS.observe(event.duration().as_secs_f64());
        }

        fn handle_timeout(&self, _event: diesel::r2d2::event::TimeoutEvent) {
            TIMEOUTS.inc();
        }
    }

    /// Connections in use and idle, read from the pool when scraped.
    struct State {
        pool: PgPool,
        connections: IntGaugeVec,
        max: IntGauge,
    }

    impl Collector for State {
        fn desc(&self) -> Vec<&Desc> {
            let mut d = self.connections.desc();
            d.extend(self.max.desc());
            d
        }

        fn collect(&self) -> Vec<MetricFamily> {
            let state = self.pool.state();
            let idle = i64::from(state.idle_connections);
            self.connections.with_label_values(&["idle"]).set(idle);
            self.connections
                .with_label_values(&["in_use"])
                .set(i64::from(state.connections) - idle);
            self.max.set(i64::from(self.pool.max_size()));
            let mut families = self.connections.collect();
            families.extend(self.max.collect());
            families
        }
    }

    /// Report `pool` in `/metrics`: the process's own pool, registered once at start (a
    /// second call, as in tests that start several apps in one process, changes nothing).
    pub fn register(pool: &PgPool) {
        let connections = IntGaugeVec::new(
            Opts::new(
                "thygon_db_pool_connections",
                "Connections of this process's pool, by state (in_use, idle)",
            ),
            &["state"],
        )
        .expect("thygon_db_pool_connections");
        let max = IntGauge::new(
            "thygon_db_pool_max_connections",
            "The most connections this process's pool holds (DB_POOL_SIZE)",
        )
        .expect("thygon_db_pool_max_connections");
        // Touch the lazily registered ones so they are in the exposition from the start.
        LazyLock::force(&WAITING);
        LazyLock::force(&WAIT_SECONDS);
        LazyLock::force(&TIMEOUTS);
        let state = State {
            pool: pool.clone(),
            connections,
            max,
        };
        if let Err(e) = prometheus::register(Box::new(state)) {
            log::debug!("pool metrics already registered: {e}");
        }
    }
}

/// Apply pending migrations under a PostgreSQL advisory lock: when many processes start at
/// once, one migrates and the rest wait, then find nothing to do. The lock is a session
/// lock, so `database_url` must reach PostgreSQL directly, not through a pooler in
/// transaction mode (`MIGRATION_DATABASE_URL`).
pub fn run_migrations(database_url: &str) -> Result<usize, DbSetupError> {
    let mut conn = PgConnection::establish(database_url)?;
    diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
        .execute(&mut conn)?;
    let applied = conn
        .run_pending_migrations(MIGRATIONS)
        .map(|v| v.len())
        .map_err(|e| DbSetupError::Migrate(e.to_string()));
    diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"))
        .execute(&mut conn)?;
    applied
}

/// The versions of the embedded migrations that `database_url`'s schema lacks: empty when
/// this binary can run on it. Reads `__diesel_schema_migrations` only (no DDL, so the app's
/// role needs none); a schema never migrated lacks all of them.
pub fn missing_migrations(database_url: &str) -> Result<Vec<String>, DbSetupError> {
    use diesel::migration::MigrationSource;
    #[derive(QueryableByName)]
    struct Applied {
        #[diesel(sql_type = diesel::sql_types::Text)]
        version: String,
    }
    let mut conn = PgConnection::establish(database_url)?;
    let exists: Vec<Applied> = diesel::sql_query(
        "SELECT 'x' AS version WHERE to_regclass('__diesel_schema_migrations') IS NOT NULL",
    )
    .load(&mut conn)?;
    let applied: std::collections::HashSet<String> = if exists.is_empty() {
        Default::default()
    } else {
        diesel::sql_query("SELECT version FROM __diesel_schema_migrations")
            .load::<Applied>(&mut conn)?
            .into_iter()
            .map(|a| a.version)
            .collect()
    };
    let embedded = MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
        .map_err(|e| DbSetupError::Migrate(e.to_string()))?;
    Ok(embedded
        .iter()
        .map(|m| m.name().version().to_string())
        .filter(|v| !applied.contains(v))
        .collect())
}

/// The schema check every process makes before it starts: processes never migrate (the
/// migrate step does: `workflow-service migrate`, run by `make run`, the compose `migrate`
/// service and the Kubernetes migrate Job). A schema that lacks a migration this binary
/// embeds is refused, with what to run; `common.schema_wait` (`SCHEMA_WAIT_SECONDS`, default
/// 0) is how long to wait first, checking every 2 s, for a migrate step running beside the
/// process (a Kubernetes rollout starts the Job and the pods together). A schema with
/// migrations this binary does not know is fine: migrations only expand, so the previous
/// release runs on the next one's schema (docs/DEPLOY.md "Upgrade"). Blocks; call it before
/// the process's runtime starts its work.
pub fn check_schema(common: &crate::config::CommonConfig) -> Result<(), DbSetupError> {
    let started = std::time::Instant::now();
    let mut last_log: Option<std::time::Instant> = None;
    loop {
        let missing = missing_migrations(&common.database_url);
        let waited = started.elapsed();
        match &missing {
            Ok(missing) if missing.is_empty() => {
                log::info!("schema ready: every migration of this binary is applied");
                return Ok(());
            }
            Ok(missing) if waited >= common.schema_wait => {
                return Err(DbSetupError::Schema(schema_behind(missing, waited)))
            }
            Err(e) if waited >= common.schema_wait => {
                return Err(DbSetupError::Schema(format!(
                    "cannot read the schema's migrations: {e}"
                )))
            }
            _ if last_log.is_some_and(|t| t.elapsed() < Duration::from_secs(10)) => {}
            Ok(missing) => {
                last_log = Some(std::time::Instant::now());
                log::warn!(
                    "waiting for the migrate step: {}",
                    schema_behind(missing, waited)
                );
            }
            Err(e) => {
                last_log = Some(std::time::Instant::now());
                log::warn!("waiting {}s for the schema: {e}", waited.as_secs());
            }
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// What a process says of a schema older than it needs.
fn schema_behind(missing: &[String], waited: Duration) -> String {
    format!(
        "the database schema is older than this binary: {} migration(s) not applied (newest \
         {}); run `workflow-service migrate` first (MIGRATION_DATABASE_URL; `make run`, the \
         compose `migrate` service and the Kubernetes migrate Job do){}",
        missing.len(),
        missing.last().map(String::as_str).unwrap_or("?"),
        if waited.is_zero() {
            String::new()
        } else {
            format!("; waited {}s (SCHEMA_WAIT_SECONDS)", waited.as_secs())
        }
    )
}

/// `SELECT 1` through the pool: the database half of `/readyz`.
pub fn ping(pool: &PgPool) -> bool {
    checkout(pool)
        .map(|mut c| {
            let answer = diesel::sql_query("SELECT 1").execute(&mut c);
            let ok = answer.is_ok();
            after(c, &answer);
            ok
        })
        .unwrap_or(false)
}

/// Is this diesel error the database being unreachable (503) rather than a bug (500)?
pub fn is_unavailable(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    match e {
        Error::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            _,
        ) => true,
        Error::DatabaseError(_, info) => {
            let m = info.message();
            m.contains("terminating connection")
                || m.contains("server closed the connection")
                || m.contains("the database system is")
        }
        _ => false,
    }
}

/// A storage failure as the HTTP edge and the worker see it.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No connection could be had, or the server went away: retry later (HTTP 503).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Anything else is a bug or a broken invariant (HTTP 500).
    #[error("database error: {0}")]
    Query(diesel::result::Error),
}

impl From<diesel::result::Error> for StorageError {
    fn from(e: diesel::result::Error) -> Self {
        if is_unavailable(&e) {
            StorageError::Unavailable(e.to_string())
        } else {
            StorageError::Query(e)
        }
    }
}

impl StorageError {
    /// The client's view: 503 for an outage, 500 for the rest; the cause goes to the log only.
    pub fn to_api(&self) -> crate::envelope::ApiError {
        match self {
            StorageError::Unavailable(cause) => {
                log::warn!("database unavailable: {cause}");
                crate::envelope::ApiError::unavailable()
            }
            StorageError::Query(cause) => {
                log::error!("database query failed: {cause:?}");
                crate::envelope::ApiError::internal()
            }
        }
    }
}

/// Run diesel work on the blocking pool with a pooled connection, off the async executor.
pub async fn blocking<T, F>(pool: &PgPool, f: F) -> Result<T, StorageError>
where
    F: FnOnce(&mut PgConnection) -> Result<T, diesel::result::Error> + Send + 'static,
    T: Send + 'static,
{
    let pool = pool.clone();
    // The caller's log context goes along, so lines logged by `f` carry its ids.
    let ctx = crate::logctx::current();
    tokio::task::spawn_blocking(move || {
        crate::logctx::sync_scope(ctx, || {
            let mut conn = checkout(&pool).map_err(|e| StorageError::Unavailable(e.to_string()))?;
            let result = f(&mut conn);
            after(conn, &result);
            result.map_err(StorageError::from)
        })
    })
    .await
    .map_err(|e| StorageError::Unavailable(format!("blocking task failed: {e}")))?
}
