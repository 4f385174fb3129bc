//! Statements of fixed text (`shared_models::prepared`): prepared once per connection and
//! executed by name after, and the batch statements built on them write exactly the rows
//! they are given, in order, whatever their number.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Int4, Text};
use serde_json::json;
use shared_models::models::{NewRunEvent, RunEventRow, RunRow};
use shared_models::prepared::prepared;
use shared_models::runs::{self, NewRun};
use shared_models::schema::{outbox, run_events, runs as runs_table};
use thygon_testkit::{fixtures, TestDb};

#[derive(QueryableByName, Debug)]
struct Sum {
    #[diesel(sql_type = Int4)]
    n: i32,
}

#[derive(QueryableByName, Debug)]
struct PreparedRow {
    #[diesel(sql_type = Text)]
    statement: String,
    #[diesel(sql_type = BigInt)]
    executions: i64,
}

/// What this connection has prepared, and how many times each was executed.
fn prepared_here(conn: &mut PgConnection) -> Vec<PreparedRow> {
    diesel::sql_query(
        "SELECT statement, generic_plans + custom_plans AS executions
         FROM pg_prepared_statements",
    )
    .load(conn)
    .expect("read pg_prepared_statements")
}

/// Org `org_a` and a workflow of it; returns the workflow's id.
fn org_a_workflow(conn: &mut PgConnection) -> String {
    fixtures::org_key(conn, "org_a");
    fixtures::insert_workflow(
        conn,
        "org_a",
        "w",
        json!({"steps": [{"name": "t", "type": "transform", "value": 1}]}),
        true,
    )
}

#[test]
fn a_fixed_statement_is_prepared_once_per_connection_and_executed_by_name() {
    let db = TestDb::create();
    let mut conn = PgConnection::establish(&db.url).expect("connect");
    const SQL: &str = "SELECT $1::int4 + 1 AS n";
    for i in 0..7 {
        let sum: Sum = prepared(SQL)
            .bind::<Int4, _>(i)
            .get_result(&mut conn)
            .expect("run the prepared statement");
        assert_eq!(sum.n, i + 1);
    }
    let mine: Vec<PreparedRow> = prepared_here(&mut conn)
        .into_iter()
        .filter(|p| p.statement.starts_with(SQL))
        .collect();
    assert_eq!(
        mine.len(),
        1,
        "one prepared statement for one text: {mine:?}"
    );
    assert_eq!(mine[0].executions, 7, "every call executed it by name");

    // What the module is for: diesel prepares nothing it would keep for raw SQL.
    const RAW: &str = "SELECT $1::int4 + 2 AS n";
    let _: Sum = diesel::sql_query(RAW)
        .bind::<Int4, _>(1)
        .get_result(&mut conn)
        .expect("raw query");
    assert!(prepared_here(&mut conn)
        .iter()
        .all(|p| !p.statement.starts_with(RAW)));
}

#[test]
fn the_hot_statements_are_prepared_once_for_every_batch_size() {
    let db = TestDb::create();
    let mut conn = PgConnection::establish(&db.url).expect("connect");
    let wf = org_a_workflow(&mut conn);
    for size in [1, 3, 17] {
        let rows: Vec<RunRow> = (0..size).map(|_| new_run(&wf)).collect();
        let payload = json!({});
        let jobs: Vec<(&str, &serde_json::Value)> =
            rows.iter().map(|r| (r.id.as_str(), &payload)).collect();
        let written = runs::insert_runs_with_jobs(&mut conn, &rows, &jobs).expect("insert");
        assert_eq!(written.len(), size);
        assert!(written.iter().all(|(_, outbox)| outbox.is_some()));
        let ids: Vec<String> = written.into_iter().map(|(id, _)| id).collect();
        let events: Vec<NewRunEvent> = ids
            .iter()
            .map(|id| NewRunEvent::log(id, shared_models::time::now(), None, "INFO", "x"))
            .collect();
        runs::insert_events(&mut conn, &events).expect("events");
    }
    let statements = prepared_here(&mut conn);
    // The runs and their jobs are one statement.
    for table in ["runs", "run_events"] {
        let mine: Vec<&PreparedRow> = statements
            .iter()
            .filter(|p| p.statement.contains(&format!("INSERT INTO {table} ")))
            .collect();
        assert_eq!(mine.len(), 1, "{table}: one statement for 3 batch sizes");
        assert_eq!(mine[0].executions, 3, "{table}");
    }
}

fn new_run(workflow_id: &str) -> RunRow {
    runs::pending_run(
        NewRun {
            org_id: "org_a",
            workflow_id,
            version: 1,
            variables: json!({"n": 1, "s": "x"}),
            idempotency_key: None,
            request_hash: None,
            request_id: Some("req_1".into()),
            parent: None,
            budget: None,
        },
        shared_models::time::now(),
    )
}

#[test]
fn runs_and_jobs_inserted_in_a_batch_are_the_rows_given() {
    let db = TestDb::create();
    let mut conn = db.pool.get().expect("connection");
    let wf = org_a_workflow(&mut conn);
    let mut rows: Vec<RunRow> = (0..5).map(|_| new_run(&wf)).collect();
    rows[1].idempotency_key = Some("key-1".into());
    rows[1].request_hash = Some("hash".into());
    rows[3].request_id = None;
    // An id already taken: that row inserts nothing, the others do.
    let taken = fixtures::insert_run(&mut conn, "org_a", &wf, json!({}));
    rows[4].id = taken.clone();

    // A job for each run; the one of the run not inserted is not written either.
    let payloads: Vec<serde_json::Value> = (0..5).map(|i| json!({ "i": i })).collect();
    let jobs: Vec<(&str, &serde_json::Value)> = rows
        .iter()
        .zip(&payloads)
        .map(|(r, p)| (r.id.as_str(), p))
        .collect();
    let written = runs::insert_runs_with_jobs(&mut conn, &rows, &jobs).expect("insert");
    let inserted: Vec<String> = written.iter().map(|(id, _)| id.clone()).collect();
    let expected: Vec<String> = rows[..4].iter().map(|r| r.id.clone()).collect();
    assert_eq!(inserted, expected, "in the order given");
    let taken_jobs: i64 = outbox::table
        .filter(outbox::run_id.eq(&taken))
        .count()
        .get_result(&mut conn)
        .expect("count");
    assert_eq!(taken_jobs, 0, "no job for the run not inserted");
    for row in &rows[..4] {
        let stored: RunRow = runs_table::table
            .find(&row.id)
            .select(RunRow::as_select())
            .first(&mut conn)
            .expect("stored run");
        assert_eq!(format!("{stored:?}"), format!("{row:?}"));
    }

    for (run_id, outbox_id) in &written {
        let outbox_id = outbox_id.expect("a job for every run inserted");
        let (stored_run, payload): (String, serde_json::Value) = outbox::table
            .find(outbox_id)
            .select((outbox::run_id, outbox::payload))
            .first(&mut conn)
            .expect("outbox row");
        assert_eq!(&stored_run, run_id);
        let i = rows
            .iter()
            .position(|r| &r.id == run_id)
            .expect("a given run");
        assert_eq!(payload, json!({ "i": i }));
    }
}

#[test]
fn events_inserted_in_a_batch_keep_their_order_and_their_empty_fields() {
    let db = TestDb::create();
    let mut conn = db.pool.get().expect("connection");
    let wf = org_a_workflow(&mut conn);
    let run = fixtures::insert_run(&mut conn, "org_a", &wf, json!({}));
    let now = shared_models::time::now();
    let events = vec![
        NewRunEvent::transition(&run, now, None, "PENDING", "RUNNING"),
        NewRunEvent::log(&run, now, None, "INFO", "started"),
        NewRunEvent::transition(&run, now, Some("a"), "PENDING", "RUNNING"),
        NewRunEvent::log(&run, now, Some("a"), "WARN", "it's \"quoted\", {braced}"),
        NewRunEvent::transition(&run, now, Some("a"), "RUNNING", "COMPLETED"),
    ];
    runs::insert_events(&mut conn, &events).expect("insert");
    runs::insert_events(&mut conn, &[]).expect("nothing to insert");
    let stored: Vec<RunEventRow> = run_events::table
        .filter(run_events::run_id.eq(&run))
        .order(run_events::id)
        .select(RunEventRow::as_select())
        .load(&mut conn)
        .expect("events");
    assert_eq!(stored.len(), events.len());
    for (got, want) in stored.iter().zip(&events) {
        assert_eq!(got.run_id, want.run_id);
        assert_eq!(got.at, want.at);
        assert_eq!(got.kind, want.kind);
        assert_eq!(got.step, want.step);
        assert_eq!(got.from_status, want.from_status);
        assert_eq!(got.to_status, want.to_status);
        assert_eq!(got.level, want.level);
        assert_eq!(got.message, want.message);
    }
}
