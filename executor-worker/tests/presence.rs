//! The worker's row in `workers`: written at once when the heartbeat starts, kept fresh with
//! the in-flight count, left alone when it stops (a crash looks the same), deleted by a
//! clean shutdown. Real PostgreSQL, a database per test.

mod common;

use common::*;
use diesel::prelude::*;
use executor_worker::consumer::WorkerState;
use executor_worker::presence::Presence;
use shared_models::db::{blocking, PgPool};
use shared_models::models::WorkerRow;
use shared_models::schema::workers;
use std::sync::Arc;
use std::time::Duration;

async fn rows(pool: &PgPool) -> Vec<WorkerRow> {
    blocking(pool, |conn| {
        workers::table
            .select(WorkerRow::as_select())
            .order(workers::id)
            .load(conn)
    })
    .await
    .expect("read workers")
}

#[tokio::test]
async fn presence_upserts_its_row_while_beating_and_deletes_it_on_shutdown() {
    let db = test_db().await;
    let state = Arc::new(WorkerState::default());
    let presence = Arc::new(Presence::new(
        db.pool.clone(),
        "w-presence-1",
        6,
        Duration::from_millis(100),
        state.clone(),
    ));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(presence.clone().run(stopped));

    let first = wait_for("the first heartbeat", Duration::from_secs(10), || async {
        rows(&db.pool).await.into_iter().next()
    })
    .await;
    assert_eq!(first.id, "w-presence-1");
    assert_eq!(first.pid, std::process::id() as i32);
    assert_eq!(first.concurrency, 6);
    assert_eq!(first.in_flight, 0);
    assert!(!first.hostname.is_empty());
    assert_eq!(first.started_at, presence.started_at);

    // Two runs in flight: the next beats say so, and move the heartbeat on (one row only).
    state
        .in_flight
        .lock()
        .unwrap()
        .extend(["run_a".to_string(), "run_b".to_string()]);
    let later = wait_for(
        "a beat with 2 in flight",
        Duration::from_secs(10),
        || async {
            let rows = rows(&db.pool).await;
            assert_eq!(rows.len(), 1, "one row per worker id: {rows:?}");
            rows.into_iter()
                .find(|r| r.in_flight == 2 && r.last_heartbeat_at > first.last_heartbeat_at)
        },
    )
    .await;
    assert_eq!(later.started_at, first.started_at);

    // Stopping the heartbeat leaves the row (as a crash would); a clean shutdown removes it.
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the heartbeat stops when told")
        .unwrap();
    assert_eq!(rows(&db.pool).await.len(), 1);
    presence.remove().await.expect("remove");
    assert!(rows(&db.pool).await.is_empty());
}

#[tokio::test]
async fn a_beat_replaces_a_stale_row_of_the_same_id_and_remove_spares_a_newer_process() {
    let db = test_db().await;
    let old = Presence::new(
        db.pool.clone(),
        "w-presence-2",
        2,
        Duration::from_secs(5),
        Arc::new(WorkerState::default()),
    );
    old.beat().await.expect("beat");
    tokio::time::sleep(Duration::from_millis(5)).await;
    // The same worker id started again (a restarted pod): its beat takes the row over.
    let new = Presence::new(
        db.pool.clone(),
        "w-presence-2",
        3,
        Duration::from_secs(5),
        Arc::new(WorkerState::default()),
    );
    new.beat().await.expect("beat");
    let r = rows(&db.pool).await;
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].concurrency, r[0].started_at), (3, new.started_at));
    // The old process's clean shutdown does not delete the new one's row.
    old.remove().await.expect("remove");
    assert_eq!(rows(&db.pool).await.len(), 1);
    new.remove().await.expect("remove");
    assert!(rows(&db.pool).await.is_empty());
}
