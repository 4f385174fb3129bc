//! Tampered cursors on `GET /workflows/runs`: a cursor that is not one this API returned is
//! the 400 envelope naming `cursor` (docs/API.md "Pagination"); a cursor that still names a
//! position (a bit flipped into another valid run id, another org's cursor) pages through the
//! caller's own runs only. Never a 500, never another org's run.

use crate::helpers::{assert_error, fields, spawn_app, Reply, TestApp, ORG};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::json;
use thygon_testkit::fixtures;

const OTHER: &str = "org_cursor_other";

async fn trigger(app: &TestApp, key: &str, wf: &str) -> String {
    let auth = format!("Bearer {key}");
    let r = app
        .send(
            "POST",
            &format!("/workflows/{wf}/trigger"),
            Some(json!({})),
            &[("authorization", auth.as_str())],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["data"]["id"].as_str().expect("run id").to_string()
}

/// The run ids of a page, in order.
fn ids_of(r: &Reply) -> Vec<&str> {
    r.body["data"]
        .as_array()
        .expect("page")
        .iter()
        .filter_map(|v| v["id"].as_str())
        .collect()
}

async fn page(app: &TestApp, key: &str, query: &str) -> Reply {
    let auth = format!("Bearer {key}");
    app.send(
        "GET",
        &format!("/workflows/runs?{query}"),
        None,
        &[("authorization", auth.as_str())],
    )
    .await
}

/// The answer to `cursor` is either the 400 naming `cursor` or a page of `ORG`'s runs only.
fn assert_refused_or_own(r: &Reply, what: &str) {
    assert!(
        r.status == 400 || r.status == 200,
        "{what}: {} {}",
        r.status,
        r.body
    );
    if r.status == 400 {
        assert_error(r, 400, "VALIDATION_ERROR", what);
        assert_eq!(fields(&r.body), vec!["cursor"], "{what}: {}", r.body);
    } else {
        for run in r.body["data"].as_array().expect("a page") {
            assert_eq!(run["orgId"], ORG, "{what}: another org's run {run}");
        }
    }
}

#[tokio::test]
async fn tampered_cursors_are_a_400_or_the_callers_own_runs_never_a_500_or_another_orgs() {
    let app = spawn_app().await;
    let wf = app.workflow("cursors", true);
    let other_key = app.key_for(OTHER);
    let other_wf = fixtures::insert_workflow(
        &mut app.conn(),
        OTHER,
        "cursors",
        json!({"steps": [{"name": "only", "type": "transform", "value": 1}]}),
        true,
    );
    // Interleaved, so another org's cursor points between the caller's runs.
    let mut own = vec![
        trigger(&app, &app.key, &wf).await,
        trigger(&app, &app.key, &wf).await,
    ];
    let mut theirs = Vec::new();
    for _ in 0..3 {
        theirs.push(trigger(&app, &other_key, &other_wf).await);
    }
    own.push(trigger(&app, &app.key, &wf).await);

    let first = page(&app, &app.key, "limit=1").await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["data"][0]["id"], own[2].as_str());
    let cursor = first.body["pagination"]["nextCursor"]
        .as_str()
        .expect("a next cursor")
        .to_string();
    // Premise: the cursor as returned works and pages on through the caller's runs.
    let r = page(&app, &app.key, &format!("limit=10&cursor={cursor}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let ids = ids_of(&r);
    assert_eq!(ids, vec![own[1].as_str(), own[0].as_str()]);

    // Another org's cursor, used by the caller: a position, so the caller's own older runs,
    // and none of the other org's (a page that is not empty: own[0..2] are older).
    let theirs_first = page(&app, &other_key, "limit=1").await;
    assert_eq!(theirs_first.status, 200, "{}", theirs_first.body);
    let their_cursor = theirs_first.body["pagination"]["nextCursor"]
        .as_str()
        .expect("their next cursor")
        .to_string();
    let r = page(&app, &app.key, &format!("limit=10&cursor={their_cursor}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let ids = ids_of(&r);
    assert_eq!(
        ids,
        vec![own[1].as_str(), own[0].as_str()],
        "another org's cursor"
    );
    // And the other way round: the caller's cursor walks only the other org's runs.
    let r = page(&app, &other_key, &format!("limit=10&cursor={cursor}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    for run in r.body["data"].as_array().expect("page") {
        assert_eq!(run["orgId"], OTHER, "{run}");
        assert!(theirs.contains(&run["id"].as_str().unwrap_or_default().to_string()));
    }

    // Never a cursor: each is the 400 naming `cursor`.
    let decoded =
        String::from_utf8(URL_SAFE_NO_PAD.decode(&cursor).expect("base64url")).expect("utf-8");
    assert!(
        decoded.starts_with("run_"),
        "the cursor is a run id: {decoded}"
    );
    let not_cursors = [
        ("truncated by one", cursor[..cursor.len() - 1].to_string()),
        ("truncated to half", cursor[..cursor.len() / 2].to_string()),
        ("one character more", format!("{cursor}A")),
        ("padded", format!("{cursor}==")),
        (
            "standard base64 of another text",
            STANDARD.encode(format!("{decoded}??>")),
        ),
        ("not base64", "!!!not*base64!!!".to_string()),
        (
            "base64 of invalid UTF-8",
            URL_SAFE_NO_PAD.encode([0xff, 0xfe, 0x00]),
        ),
        ("base64 of NUL bytes", URL_SAFE_NO_PAD.encode([0u8; 30])),
        (
            "a workflows-list cursor",
            URL_SAFE_NO_PAD.encode(format!("1764979200000000|{wf}")),
        ),
        ("a versions-list cursor", URL_SAFE_NO_PAD.encode("v3")),
        ("an orgs-list cursor", URL_SAFE_NO_PAD.encode(ORG)),
        ("a workflow id", URL_SAFE_NO_PAD.encode(&wf)),
        ("the run id in clear", decoded.clone()),
        (
            "a run id with SQL",
            URL_SAFE_NO_PAD.encode(format!("{decoded}' OR '1'='1")),
        ),
        ("a huge cursor", "A".repeat(8_000)),
    ];
    for (what, tampered) in &not_cursors {
        let query = format!("limit=10&cursor={}", urlencode(tampered));
        let r = page(&app, &app.key, &query).await;
        assert_error(&r, 400, "VALIDATION_ERROR", what);
        assert_eq!(fields(&r.body), vec!["cursor"], "{what}: {}", r.body);
    }

    // Every single-bit flip of every character: refused, or the caller's own runs.
    let mut refused = 0;
    for i in 0..cursor.len() {
        for bit in [0u8, 1, 2, 5] {
            let mut bytes = cursor.clone().into_bytes();
            bytes[i] ^= 1 << bit;
            let tampered = String::from_utf8_lossy(&bytes).to_string();
            let r = page(
                &app,
                &app.key,
                &format!("limit=10&cursor={}", urlencode(&tampered)),
            )
            .await;
            let what = format!("bit {bit} of character {i} flipped: {tampered:?}");
            assert_refused_or_own(&r, &what);
            refused += usize::from(r.status == 400);
        }
    }
    // Premise: most flips break the cursor (they must be seen to be refused).
    assert!(refused > cursor.len(), "only {refused} flips were refused");
}

/// Percent-encode everything but the unreserved characters.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
