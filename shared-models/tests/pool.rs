//! The connection pool against a real PostgreSQL: its size is a hard ceiling, idle
//! connections are closed, and `/metrics` shows it (in use, idle, waits, timeouts); a
//! connection that just worked is handed out without a check, any other is checked, and a
//! dead one is replaced.

use shared_models::db::{self, PoolSettings};
use shared_models::metrics::{render, sample};
use std::time::Duration;
use thygon_testkit::TestDb;

#[test]
fn the_pool_never_holds_more_than_its_size_and_reports_itself() {
    let test_db = TestDb::create();
    let settings = PoolSettings {
        max_size: 2,
        idle_timeout: Duration::from_secs(1),
        statement_cache: false,
        generic_plans: false,
        trusted_for: db::TRUSTED_FOR,
    };
    let pool = db::pool_with(&test_db.url, &settings);
    db::pool_metrics::register(&pool);

    let first = db::checkout(&pool).expect("first connection");
    let second = db::checkout(&pool).expect("second connection");
    let text = render().unwrap();
    assert_eq!(
        sample(&text, "thygon_db_pool_connections", "state=\"in_use\""),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "thygon_db_pool_max_connections", ""),
        Some(2.0)
    );

    // A third checkout waits (counted while it does), then times out after 5 s.
    let waiter = {
        let pool = pool.clone();
        std::thread::spawn(move || db::checkout(&pool).is_err())
    };
    // The waiter is counted once its thread asks: polled (its checkout gives up after 5 s).
    let asked = std::time::Instant::now();
    loop {
        let text = render().unwrap();
        let waiting = sample(&text, "thygon_db_pool_waiting", "");
        if waiting == Some(1.0) {
            break;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(4) && !waiter.is_finished(),
            "the third checkout was never counted as waiting ({waiting:?})"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        waiter.join().unwrap(),
        "a pool of 2 with 2 out hands out no third"
    );
    let text = render().unwrap();
    assert!(sample(&text, "thygon_db_pool_timeouts_total", "").unwrap() >= 1.0);
    assert!(sample(&text, "thygon_db_pool_wait_seconds_count", "").unwrap() >= 2.0);

    drop((first, second));
    let text = render().unwrap();
    assert_eq!(
        sample(&text, "thygon_db_pool_connections", "state=\"in_use\""),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "thygon_db_pool_connections", "state=\"idle\""),
        Some(2.0)
    );
}

#[test]
fn without_the_statement_cache_statements_still_run() {
    // DB_STATEMENT_CACHE=false (PgBouncer in transaction mode): the same fixed-text
    // statement, many times over, through connections that keep no named statement.
    use diesel::RunQueryDsl;
    let test_db = TestDb::create();
    let settings = PoolSettings {
        statement_cache: false,
        ..PoolSettings::sized(1)
    };
    let pool = db::pool_with(&test_db.url, &settings);
    let mut conn = db::checkout(&pool).unwrap();
    for _ in 0..3 {
        let n = shared_models::prepared::prepared("SELECT 1 AS id")
            .execute(&mut conn)
            .unwrap();
        assert_eq!(n, 1);
    }
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let named = diesel::sql_query("SELECT count(*) AS n FROM pg_prepared_statements")
        .get_result::<Count>(&mut conn)
        .unwrap();
    assert_eq!(named.n, 0, "no named prepared statement on the connection");
}

#[test]
fn with_generic_plans_a_prepared_statement_is_planned_once_and_kept() {
    // The worker's pools: a statement PostgreSQL would keep planning for each call (its
    // generic plan estimated dearer than a custom one) is planned once, generically.
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Plans {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        generic_plans: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        custom_plans: i64,
    }
    // A partial index the statement can use only when it knows its parameter's value: a
    // custom plan uses it, so PostgreSQL's own choice keeps planning custom ones.
    let plans_after_ten_calls = |generic_plans: bool| {
        let test_db = TestDb::create();
        let settings = PoolSettings {
            generic_plans,
            ..PoolSettings::sized(1)
        };
        let pool = db::pool_with(&test_db.url, &settings);
        let mut conn = db::checkout(&pool).unwrap();
        for _ in 0..10 {
            shared_models::prepared::prepared(
                "SELECT id FROM runs WHERE status = $1 ORDER BY created_at LIMIT 1",
            )
            .bind::<diesel::sql_types::Text, _>("PENDING")
            .execute(&mut conn)
            .unwrap();
        }
        diesel::sql_query(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements
             WHERE statement LIKE 'SELECT id FROM runs WHERE status%'",
        )
        .get_result::<Plans>(&mut conn)
        .unwrap()
    };
    let forced = plans_after_ten_calls(true);
    assert_eq!((forced.generic_plans, forced.custom_plans), (10, 0));
    let chosen = plans_after_ten_calls(false);
    assert!(
        chosen.custom_plans >= 5,
        "PostgreSQL's first five plans are custom"
    );
}

#[derive(diesel::QueryableByName)]
struct Pid {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pid: i32,
}

/// The backend of the pool's (one) connection, asked through it.
async fn backend_of(pool: &db::PgPool) -> Result<i32, db::StorageError> {
    use diesel::RunQueryDsl;
    db::blocking(pool, |conn| {
        diesel::sql_query("SELECT pg_backend_pid() AS pid").get_result::<Pid>(conn)
    })
    .await
    .map(|p| p.pid)
}

/// What the backend `pid` last ran, seen from another connection.
fn last_query(observer: &mut diesel::PgConnection, pid: i32) -> String {
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Query {
        #[diesel(sql_type = diesel::sql_types::Text)]
        query: String,
    }
    diesel::sql_query("SELECT query FROM pg_stat_activity WHERE pid = $1")
        .bind::<diesel::sql_types::Integer, _>(pid)
        .get_result::<Query>(observer)
        .expect("the backend is there")
        .query
}

fn terminate(observer: &mut diesel::PgConnection, pid: i32) {
    use diesel::RunQueryDsl;
    diesel::sql_query("SELECT pg_terminate_backend($1, 5000)")
        .bind::<diesel::sql_types::Integer, _>(pid)
        .execute(observer)
        .expect("terminate");
}

#[tokio::test]
async fn a_connection_that_just_worked_goes_out_unchecked_and_an_idle_one_is_checked_first() {
    use diesel::Connection;
    let test_db = TestDb::create();
    let pool = db::pool_with(&test_db.url, &PoolSettings::sized(1));
    let mut observer = diesel::PgConnection::establish(&test_db.url).expect("observer");
    let pid = backend_of(&pool).await.expect("first use");

    // Within TRUSTED_FOR of its last statement: handed out as it is, no `SELECT 1` sent.
    drop(db::checkout(&pool).expect("checkout"));
    assert!(last_query(&mut observer, pid).contains("pg_backend_pid"));

    // Idle for longer: checked before it goes out.
    tokio::time::sleep(db::TRUSTED_FOR + Duration::from_millis(100)).await;
    drop(db::checkout(&pool).expect("checkout"));
    assert_eq!(last_query(&mut observer, pid), "SELECT 1");
}

#[tokio::test]
async fn a_dead_connection_is_replaced_unseen_when_idle_and_after_one_outage_error_when_trusted() {
    use diesel::Connection;
    let test_db = TestDb::create();
    let pool = db::pool_with(&test_db.url, &PoolSettings::sized(1));
    let mut observer = diesel::PgConnection::establish(&test_db.url).expect("observer");

    // Idle past TRUSTED_FOR, then killed: the check finds it dead; a new one answers.
    let first = backend_of(&pool).await.expect("first use");
    tokio::time::sleep(db::TRUSTED_FOR + Duration::from_millis(100)).await;
    terminate(&mut observer, first);
    let second = backend_of(&pool).await.expect("replaced unseen");
    assert_ne!(second, first);

    // Killed right after it worked: the one statement sent on it fails as an outage (a 503,
    // a job retried), and the pool closes it instead of keeping it.
    terminate(&mut observer, second);
    match backend_of(&pool).await {
        Err(db::StorageError::Unavailable(_)) => {}
        other => panic!("expected an outage error, got {other:?}"),
    }
    let third = backend_of(&pool).await.expect("a new connection");
    assert!(third != second && third != first);
}
