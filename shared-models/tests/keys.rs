//! The outbox's dedupe keys (`shared_models::runs::keys`) as the set-based statements spell
//! them in SQL are the keys the functions build: the scheduler, the lease reaper and the
//! PENDING sweeper write keys that tests (and any Rust lookup) find with the functions.

use diesel::prelude::*;
use diesel::sql_types::Text;
use serde_json::json;
use shared_models::runs::keys;
use shared_models::schema::runs;
use thygon_testkit::{fixtures, TestDb};

#[derive(QueryableByName)]
struct SqlKeys {
    #[diesel(sql_type = Text)]
    wake: String,
    #[diesel(sql_type = Text)]
    reap: String,
    #[diesel(sql_type = Text)]
    pending: String,
}

#[test]
fn each_key_spelt_in_sql_is_the_key_its_function_builds() {
    let db = TestDb::create();
    let mut conn = db.pool.get().expect("a connection");
    let definition = json!({"steps": [{"name": "only", "type": "transform", "value": 1}]});
    let workflow = fixtures::insert_workflow(&mut conn, "org_keys", "keys", definition, true);
    let id = fixtures::insert_run(&mut conn, "org_keys", &workflow, json!({}));
    // Moments with microseconds, before and after now, as the database stores them.
    let now = shared_models::time::now();
    let wake_at = now + chrono::Duration::microseconds(90_000_123);
    let expires = now - chrono::Duration::microseconds(45_000_007);
    let queued_at = now - chrono::Duration::microseconds(3_000_001);
    diesel::update(runs::table.find(&id))
        .set((
            runs::wake_at.eq(wake_at),
            runs::lease_expires_at.eq(expires),
            runs::queued_at.eq(queued_at),
        ))
        .execute(&mut conn)
        .expect("set the run's moments");
    type Moment = Option<chrono::DateTime<chrono::Utc>>;
    let stored: (Moment, Moment, Moment) = runs::table
        .find(&id)
        .select((runs::wake_at, runs::lease_expires_at, runs::queued_at))
        .first(&mut conn)
        .expect("read the run back");
    let (Some(wake_at), Some(expires), Some(queued_at)) = stored else {
        panic!("the run's moments were not stored: {stored:?}");
    };

    let sql: SqlKeys = diesel::sql_query(concat!(
        "SELECT ",
        shared_models::wake_key_sql!(),
        " AS wake, ",
        shared_models::reap_key_sql!(),
        " AS reap, ",
        shared_models::pending_key_sql!(),
        " AS pending FROM runs r WHERE r.id = $1"
    ))
    .bind::<Text, _>(&id)
    .get_result(&mut conn)
    .expect("the keys in SQL");

    assert_eq!(sql.wake, keys::wake(&id, wake_at));
    assert_eq!(sql.reap, keys::reap(&id, expires));
    assert_eq!(sql.pending, keys::pending(&id, queued_at));
}
