//! The plans PostgreSQL keeps for the claim's prepared statements stay lookups by key.
//!
//! A prepared statement settles on a generic plan, made once from the statistics of that
//! moment. Statistics taken while `runs` and `step_runs` were small and no run was PENDING
//! (a new deployment's first `ANALYZE`, a quiet hour) once gave plans that scanned every
//! PENDING run (through `runs_pending_by_age`) and all of `step_runs` at each claim batch,
//! which a backlog made slower as it grew. These tests make exactly those statistics, then a
//! backlog, and read the generic plans (`EXPLAIN`, nothing executed).

mod common;

use common::*;
use diesel::prelude::*;
use diesel::sql_types::Text;
use executor_worker::storage::{CHECKPOINT_BATCH, CLAIM_PENDING, FENCE_STEPS, STEPS_OF};
use serde_json::json;
use shared_models::db::blocking;
use shared_models::schema::{runs, step_runs};
use thygon_testkit::fixtures;

#[derive(QueryableByName)]
struct Line {
    #[diesel(sql_type = Text)]
    line: String,
}

/// The generic plan of `statement` (parameters of `types`), as `EXPLAIN` prints it for
/// `arguments`, on one connection of a database analysed while small.
async fn generic_plans(statements: Vec<(&'static str, &'static str, &'static str)>) -> Vec<String> {
    let db = test_db().await;
    let workflow = json!({"steps": [{"name": "a", "type": "transform", "value": {}}]});
    let (workflow_id, first) = workflow_with_run(&db.pool, "small", workflow, json!({})).await;
    blocking(&db.pool, move |conn| {
        // Small and quiet: 300 ended runs with a step each, none PENDING; analysed so.
        let mut ids = vec![first];
        ids.extend((1..300).map(|_| fixtures::insert_run(conn, ORG, &workflow_id, json!({}))));
        for id in &ids {
            diesel::insert_into(step_runs::table)
                .values(step_row(id, "a", 0, "COMPLETED", 1, Some(json!({}))))
                .execute(conn)?;
        }
        diesel::update(runs::table)
            .set(runs::status.eq("COMPLETED"))
            .execute(conn)?;
        diesel::sql_query("ANALYZE").execute(conn)?;
        // Then a backlog: 2,000 PENDING runs the statistics know nothing of.
        for _ in 0..2000 {
            fixtures::insert_run(conn, ORG, &workflow_id, json!({}));
        }
        diesel::sql_query("SET plan_cache_mode = force_generic_plan").execute(conn)?;
        diesel::sql_query(
            "CREATE FUNCTION pg_temp.plan_of(statement text) RETURNS SETOF text
             LANGUAGE plpgsql AS $$
             DECLARE line text;
             BEGIN
                 FOR line IN EXECUTE 'EXPLAIN ' || statement LOOP RETURN NEXT line; END LOOP;
             END $$",
        )
        .execute(conn)?;
        let mut plans = Vec::new();
        for (i, (statement, types, arguments)) in statements.into_iter().enumerate() {
            diesel::sql_query(format!("PREPARE s{i}({types}) AS {statement}")).execute(conn)?;
            let lines: Vec<Line> = diesel::sql_query("SELECT pg_temp.plan_of($1) AS line")
                .bind::<Text, _>(format!("EXECUTE s{i}({arguments})"))
                .load(conn)?;
            plans.push(
                lines
                    .into_iter()
                    .map(|l| l.line)
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
        }
        Ok(plans)
    })
    .await
    .expect("the plans")
}

#[tokio::test]
async fn the_claim_and_checkpoint_statements_stay_lookups_by_key_with_a_backlog_unknown_to_the_statistics(
) {
    let plans = generic_plans(vec![
        (
            CLAIM_PENDING,
            "text[], text[], timestamptz, text, timestamptz, text, bigint, text",
            "ARRAY['run_a', 'run_b'], ARRAY['org_test', 'org_test'], now(), 'w', now(), 'm', \
             100, 'PENDING'",
        ),
        (STEPS_OF, "text[]", "ARRAY['run_a', 'run_b']"),
        (
            FENCE_STEPS,
            "timestamptz, timestamptz, text[], text",
            "now(), now(), ARRAY['run_a', 'run_b'], 'w'",
        ),
        (
            CHECKPOINT_BATCH,
            "text[], timestamptz[], text[], text[], text[], text[], text[], text[], \
             timestamptz, timestamptz, text[], text, text[], text[], int4[], text[], text[], \
             int4[], timestamptz[], timestamptz[], jsonb[], text[], text[], jsonb[], text[]",
            "ARRAY['run_a'], ARRAY[now()], ARRAY['transition'], ARRAY[NULL], \
             ARRAY['RUNNING'], ARRAY['COMPLETED'], ARRAY[NULL], ARRAY[NULL], now(), now(), \
             ARRAY['run_b'], 'w', ARRAY['run_a', 'run_b'], ARRAY['s', 's'], ARRAY[0, 0], \
             ARRAY['transform', 'transform'], ARRAY['COMPLETED', 'COMPLETED'], ARRAY[1, 1], \
             ARRAY[now(), now()], ARRAY[now(), now()], ARRAY['1'::jsonb, '1'::jsonb], \
             ARRAY['run_a'], ARRAY['COMPLETED'], ARRAY['{}'::jsonb], ARRAY[NULL]",
        ),
    ])
    .await;
    let (claim, steps, fence, batch) = (&plans[0], &plans[1], &plans[2], &plans[3]);
    assert!(!claim.contains("runs_pending_by_age"), "{claim}");
    assert!(!claim.contains("Seq Scan on runs"), "{claim}");
    assert!(
        claim.contains("Index Scan using runs_pkey on runs"),
        "{claim}"
    );
    assert!(!steps.contains("Seq Scan"), "{steps}");
    assert!(steps.contains("Index Scan using step_runs_pkey"), "{steps}");
    // The checkpoint batch's fence and its run ends: the runs by key, not a scan of `runs`
    // filtered on the lease (which statistics taken with few leases make look cheap).
    assert!(!fence.contains("Seq Scan"), "{fence}");
    assert!(fence.contains("using runs_pkey on runs"), "{fence}");
    assert!(!batch.contains("Seq Scan on runs"), "{batch}");
    assert_eq!(
        batch.matches("using runs_pkey on runs").count(),
        2,
        "the fence and the ends, each by key: {batch}"
    );
    assert!(fence.contains("Index Scan using step_runs_pkey"), "{fence}");
}
