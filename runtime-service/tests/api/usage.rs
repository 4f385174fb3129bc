//! `GET /usage` (docs/API.md "Usage"): sums of an org's agent turns over `[from, to)`, in
//! total and by workflow, agent, model or UTC day; only ever the caller's org.

use crate::helpers::{assert_error, fields, spawn_app, TestApp, Turn, ORG};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::Text;
use serde_json::{json, Value};
use thygon_testkit::{fixtures, ADMIN_KEY};

const OTHER: &str = "org_other";
const FROM: &str = "2026-11-01T00:00:00Z";
const TO: &str = "2026-11-03T00:00:00Z";

fn at(t: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc)
}

fn sums(input: i64, output: i64, cached: i64, cost_usd: f64, turns: i64) -> Value {
    json!({"inputTokens": input, "outputTokens": output, "cachedTokens": cached,
           "costUsd": cost_usd, "turns": turns})
}

fn group(key: &str, sums: Value) -> Value {
    let mut g = sums;
    g["key"] = json!(key);
    g
}

/// Two workflows of [`ORG`] with turns in, on the edges of and outside `[FROM, TO)`, and a
/// big turn of [`OTHER`] in the window under the same agent and model names. Returns
/// `OTHER`'s key.
fn seed(app: &TestApp) -> String {
    let triage = app.workflow_with(
        "support_triage",
        json!({"steps": [{"name": "classify", "type": "agent", "agentId": "support-classifier",
            "instructions": "Classify."}]}),
    );
    let billing = app.workflow_with(
        "billing",
        json!({"steps": [{"name": "classify", "type": "agent", "agentId": "billing-agent",
            "instructions": "Bill."}]}),
    );
    let (r1, r2) = (
        app.run_in(&triage, "COMPLETED"),
        app.run_in(&billing, "COMPLETED"),
    );
    let turn = |wf: &str,
                run: &str,
                step: &'static str,
                n: i32,
                agent: &'static str,
                model: &'static str,
                at_: &str,
                tokens: (i64, i64, i64),
                cost: i64| {
        let wf = if wf == "triage" { &triage } else { &billing };
        let mut t = Turn::of(ORG, wf, run, n, at(at_));
        t.step = step;
        t.agent_id = agent;
        t.model = model;
        t.tokens = tokens;
        t.cost_picos = cost;
        app.turn(t);
    };
    // At `from`: in.
    turn(
        "triage",
        &r1,
        "classify",
        1,
        "support-classifier",
        "gpt-a",
        FROM,
        (100, 10, 40),
        400_000_000,
    );
    turn(
        "triage",
        &r1,
        "classify",
        2,
        "support-classifier",
        "gpt-b",
        "2026-11-01T12:00:00Z",
        (200, 20, 0),
        700_000_000,
    );
    turn(
        "billing",
        &r2,
        "classify",
        1,
        "billing-agent",
        "gpt-a",
        "2026-11-02T23:59:59.999Z",
        (50, 5, 0),
        2_000_000_000,
    );
    // At `to`, and just before `from`: out.
    turn(
        "billing",
        &r2,
        "classify",
        2,
        "billing-agent",
        "gpt-a",
        TO,
        (9, 9, 9),
        9_000_000_000_000,
    );
    turn(
        "billing",
        &r2,
        "classify",
        3,
        "billing-agent",
        "gpt-a",
        "2026-10-31T23:59:59.999Z",
        (9, 9, 9),
        9_000_000_000_000,
    );
    // Free turns: equal costs are ordered by key.
    turn(
        "triage",
        &r1,
        "summarize",
        1,
        "summarizer",
        "gpt-c",
        "2026-11-02T01:00:00Z",
        (10, 1, 0),
        0,
    );
    turn(
        "billing",
        &r2,
        "archive",
        1,
        "archiver",
        "gpt-c",
        "2026-11-02T02:00:00Z",
        (20, 2, 0),
        0,
    );

    let key = app.key_for(OTHER);
    let def = json!({"steps": [{"name": "classify", "type": "agent", "agentId": "support-classifier",
        "instructions": "Classify."}]});
    let theirs = fixtures::insert_workflow(&mut app.conn(), OTHER, "support_triage", def, true);
    let run = app.run_of(OTHER, &theirs, "COMPLETED");
    let mut t = Turn::of(OTHER, &theirs, &run, 1, at("2026-11-01T06:00:00Z"));
    t.tokens = (1000, 1000, 1000);
    t.cost_picos = 5_000_000_000_000;
    app.turn(t);
    key
}

async fn usage(app: &TestApp, query: &str) -> Value {
    let r = app.get(&format!("/usage?from={FROM}&to={TO}{query}")).await;
    assert_eq!(r.status, 200, "{query}: {}", r.body);
    assert_eq!(r.body["success"], true);
    r.body["data"].clone()
}

#[tokio::test]
async fn usage_sums_the_window_in_total_and_by_each_key() {
    let app = spawn_app().await;
    seed(&app);
    let total = sums(380, 38, 40, 0.0031, 5);

    let d = usage(&app, "").await;
    assert_eq!(d["from"], "2026-11-01T00:00:00.000Z");
    assert_eq!(d["to"], "2026-11-03T00:00:00.000Z");
    assert_eq!(d["groupBy"], Value::Null);
    assert_eq!(
        d["total"], total,
        "a turn at `from` counts, one at `to` does not"
    );
    assert_eq!(d["groups"], json!([]));
    assert_eq!(d["truncated"], false);

    let expected = [
        (
            "workflow",
            json!([
                group("wf_billing", sums(70, 7, 0, 0.002, 2)),
                group("wf_support_triage", sums(310, 31, 40, 0.0011, 3)),
            ]),
        ),
        (
            "agent",
            json!([
                group("billing-agent", sums(50, 5, 0, 0.002, 1)),
                group("support-classifier", sums(300, 30, 40, 0.0011, 2)),
                group("archiver", sums(20, 2, 0, 0.0, 1)),
                group("summarizer", sums(10, 1, 0, 0.0, 1)),
            ]),
        ),
        (
            "model",
            json!([
                group("gpt-a", sums(150, 15, 40, 0.0024, 2)),
                group("gpt-b", sums(200, 20, 0, 0.0007, 1)),
                group("gpt-c", sums(30, 3, 0, 0.0, 2)),
            ]),
        ),
        (
            // By day in day order, though the second cost more.
            "day",
            json!([
                group("2026-11-01", sums(300, 30, 40, 0.0011, 2)),
                group("2026-11-02", sums(80, 8, 0, 0.002, 3)),
            ]),
        ),
    ];
    for (key, groups) in expected {
        let d = usage(&app, &format!("&groupBy={key}")).await;
        assert_eq!(d["groupBy"], key);
        assert_eq!(d["total"], total, "{key}");
        assert_eq!(d["groups"], groups, "{key}");
        assert_eq!(d["truncated"], false, "{key}");
    }
}

#[tokio::test]
async fn another_org_sees_only_its_own_usage_and_cannot_name_another() {
    let app = spawn_app().await;
    let other = seed(&app);
    let bearer = format!("Bearer {other}");
    let path = format!("/usage?from={FROM}&to={TO}&groupBy=agent");
    let r = app.send_auth(Some(&bearer), "GET", &path, None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let theirs = sums(1000, 1000, 1000, 5.0, 1);
    assert_eq!(r.body["data"]["total"], theirs);
    assert_eq!(
        r.body["data"]["groups"],
        json!([group("support-classifier", theirs)])
    );

    // There is no org parameter to point elsewhere.
    for query in ["orgId=org_test", "org_id=org_test", "org=org_test"] {
        let r = app
            .send_auth(Some(&bearer), "GET", &format!("{path}&{query}"), None, &[])
            .await;
        assert_error(&r, 400, "VALIDATION_ERROR", query);
    }
    // An org with no turns at all: zeros.
    let empty = app.key_for("org_empty");
    let r = app
        .send_auth(Some(&format!("Bearer {empty}")), "GET", &path, None, &[])
        .await;
    assert_eq!(r.body["data"]["total"], sums(0, 0, 0, 0.0, 0));
    assert_eq!(r.body["data"]["groups"], json!([]));
    // Not for the operator's key, nor without one.
    let admin = format!("Bearer {ADMIN_KEY}");
    let r = app.send_auth(Some(&admin), "GET", &path, None, &[]).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = app.send_auth(None, "GET", &path, None, &[]).await;
    assert_eq!(r.status, 401, "{}", r.body);
    // And the first org's sums are unchanged by the other's turn.
    let d = usage(&app, "").await;
    assert_eq!(d["total"], sums(380, 38, 40, 0.0031, 5));
}

#[tokio::test]
async fn bad_windows_and_keys_are_400s_naming_the_parameter() {
    let app = spawn_app().await;
    for (query, field) in [
        ("from=yesterday", "from"),
        ("to=2026-13-01T00:00:00Z", "to"),
        ("from=2026-11-01", "from"),
        ("groupBy=week", "groupBy"),
        ("groupBy=", "groupBy"),
        ("groupBy=Agent", "groupBy"),
        // `from` not before `to`.
        ("from=2026-11-01T00:00:00Z&to=2026-11-01T00:00:00Z", "from"),
        ("from=2026-11-02T00:00:00Z&to=2026-11-01T00:00:00Z", "from"),
        ("from=2999-01-01T00:00:00Z", "from"),
        // More than 366 days.
        ("from=2025-01-01T00:00:00Z&to=2026-01-02T00:00:01Z", "from"),
        ("limit=10", "limit"),
        ("groupBy=day&groupBy=agent", "groupBy"),
    ] {
        let r = app.get(&format!("/usage?{query}")).await;
        assert_error(&r, 400, "VALIDATION_ERROR", query);
        assert_eq!(fields(&r.body), vec![field.to_string()], "{query}");
    }
    // 366 days is the longest window; offsets are read as such.
    let r = app
        .get("/usage?from=2025-01-01T00:00:00Z&to=2026-01-02T00:00:00Z")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = app
        .get("/usage?from=2026-11-01T02:00:00%2B02:00&to=2026-11-02T00:00:00Z")
        .await;
    assert_eq!(r.body["data"]["from"], "2026-11-01T00:00:00.000Z");
}

#[tokio::test]
async fn the_window_defaults_to_the_30_days_before_now() {
    let app = spawn_app().await;
    let d = app.get("/usage").await.body["data"].clone();
    let (from, to) = (
        at(d["from"].as_str().unwrap()),
        at(d["to"].as_str().unwrap()),
    );
    assert_eq!(to - from, chrono::Duration::days(30));
    assert!((Utc::now() - to).num_seconds().abs() < 60, "{d}");
    let d = app.get(&format!("/usage?to={TO}")).await.body["data"].clone();
    assert_eq!(d["from"], "2026-10-04T00:00:00.000Z");
}

/// A plain turn of `org_id` for the bulk tests, as the worker writes it.
fn bulk_turn(
    run_id: &str,
    org_id: &str,
    workflow_id: &str,
    turn: i32,
    model: String,
    cost_picos: i64,
    at: DateTime<Utc>,
) -> shared_models::agent_journal::NewTurn {
    shared_models::agent_journal::NewTurn {
        run_id: run_id.into(),
        step: "classify".into(),
        turn,
        attempt: 1,
        org_id: org_id.into(),
        workflow_id: workflow_id.into(),
        agent_id: "a".into(),
        model,
        messages: serde_json::json!([]),
        reply: serde_json::json!({}),
        input_tokens: 1,
        output_tokens: 1,
        cached_tokens: 0,
        cost_picos,
        created_at: at,
    }
}

/// `count` turns of [`ORG`] in one transaction, model `m0001`... costing 1, 2... pico-USD.
fn many_turns(app: &TestApp, count: i32) {
    let wf = app.workflow("support_triage", true);
    let run = app.run_in(&wf, "COMPLETED");
    let at = at("2026-11-01T00:00:00Z");
    app.conn()
        .transaction::<_, diesel::result::Error, _>(|conn| {
            for g in 1..=count {
                let turn = bulk_turn(&run, ORG, &wf, g, format!("m{g:04}"), i64::from(g), at);
                shared_models::agent_journal::insert_turn(conn, &turn)?;
            }
            Ok(())
        })
        .expect("insert turns");
}

#[tokio::test]
async fn at_most_1000_groups_are_listed_and_the_total_counts_every_turn() {
    let app = spawn_app().await;
    many_turns(&app, 1001);
    let d = usage(&app, "&groupBy=model").await;
    let groups = d["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1000);
    assert_eq!(d["truncated"], true);
    assert_eq!(
        (groups[0]["key"].clone(), groups[999]["key"].clone()),
        (json!("m1001"), json!("m0002"))
    );
    assert_eq!(d["total"]["turns"], 1001);
    assert_eq!(d["total"]["costUsd"], json!(501_501.0 / 1e12));
    let d = usage(&app, "&groupBy=agent").await;
    assert_eq!(d["truncated"], false);
}

#[derive(QueryableByName)]
struct Line {
    #[diesel(sql_type = Text)]
    line: String,
}

/// The statement reads `agent_turns` through its (org_id, created_at) index, generic plan
/// or not, on a table of many orgs analysed as such.
#[tokio::test]
async fn the_sums_are_one_range_scan_of_the_org_and_time_index() {
    let app = spawn_app().await;
    many_turns(&app, 1);
    let mut conn = app.conn();
    let run: String = diesel::sql_query("SELECT run_id AS line FROM agent_turns")
        .get_result::<Line>(&mut conn)
        .unwrap()
        .line;
    // 20,000 turns of 200 orgs over a year (of one run: the plan is of the orgs' turns).
    let year = at("2026-01-01T00:00:00Z");
    conn.transaction::<_, diesel::result::Error, _>(|conn| {
        for g in 1..=20_000 {
            let at = year + chrono::Duration::minutes(26 * i64::from(g));
            let org = format!("org_{}", g % 200);
            let mut turn = bulk_turn(&run, &org, "wf", g, "m".into(), 1, at);
            turn.step = "other".into();
            shared_models::agent_journal::insert_turn(conn, &turn)?;
        }
        Ok(())
    })
    .unwrap();
    diesel::sql_query("ANALYZE agent_turns")
        .execute(&mut conn)
        .unwrap();
    diesel::sql_query(
        "CREATE FUNCTION pg_temp.plan_of(statement text) RETURNS SETOF text
         LANGUAGE plpgsql AS $$
         DECLARE line text;
         BEGIN
             FOR line IN EXECUTE 'EXPLAIN ' || statement LOOP RETURN NEXT line; END LOOP;
         END $$",
    )
    .execute(&mut conn)
    .unwrap();
    diesel::sql_query(format!(
        "PREPARE sums(text, timestamptz, timestamptz, text, int8) AS {}",
        runtime_service::storage::usage::USAGE_SUMS
    ))
    .execute(&mut conn)
    .unwrap();
    for mode in ["force_custom_plan", "force_generic_plan"] {
        diesel::sql_query(format!("SET plan_cache_mode = {mode}"))
            .execute(&mut conn)
            .unwrap();
        for group_by in ["", "day", "model"] {
            let lines: Vec<Line> = diesel::sql_query("SELECT pg_temp.plan_of($1) AS line")
                .bind::<Text, _>(format!(
                    "EXECUTE sums('org_7', '2026-06-01T00:00:00Z', '2026-07-01T00:00:00Z', '{group_by}', 1002)"
                ))
                .load(&mut conn)
                .unwrap();
            let plan: Vec<_> = lines.into_iter().map(|l| l.line).collect();
            let plan = plan.join("\n");
            assert!(
                plan.contains("agent_turns_org_time"),
                "{mode} {group_by}:\n{plan}"
            );
            assert!(!plan.contains("Seq Scan"), "{mode} {group_by}:\n{plan}");
        }
    }
}
