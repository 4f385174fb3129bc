//! Connection pools and the embedded migrations.
//!
//! Diesel is synchronous: use the pool only from blocking contexts (`web::block`,
//! `tokio::task::spawn_blocking`), never on an async executor thread.

use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool, PooledConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use std::time::Duration;

pub type PgPool = Pool<ConnectionManager<PgConnection>>;
pub type PgPooled = PooledConnection<ConnectionManager<PgConnection>>;

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
    #[error("cannot build the connection pool: {0}")]
    Pool(#[from] diesel::r2d2::PoolError),
}

/// A pool that does not fail at start when the database is down: connections are made on
/// demand, so a service starts, reports not-ready, and recovers when PostgreSQL returns.
pub fn pool(database_url: &str, max_size: u32) -> PgPool {
    Pool::builder()
        .max_size(max_size)
        .min_idle(Some(0))
        .connection_timeout(Duration::from_secs(5))
        .test_on_check_out(true)
        .build_unchecked(ConnectionManager::new(database_url))
}

/// Apply pending migrations under a PostgreSQL advisory lock: when many processes start at
/// once, one migrates and the rest wait, then find nothing to do.
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

/// `SELECT 1` through the pool: the database half of `/readyz`.
pub fn ping(pool: &PgPool) -> bool {
    pool.get()
        .map(|mut c| diesel::sql_query("SELECT 1").execute(&mut c).is_ok())
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
            let mut conn = pool
                .get()
                .map_err(|e| StorageError::Unavailable(e.to_string()))?;
            f(&mut conn).map_err(StorageError::from)
        })
    })
    .await
    .map_err(|e| StorageError::Unavailable(format!("blocking task failed: {e}")))?
}
