//! Tenancy: a key sees and controls only its org's runs; another org's ids answer 404,
//! exactly as ids that do not exist, and change nothing.

use crate::auth::{seed, snapshot, Seeded};
use crate::helpers::{assert_error, spawn_app, Reply, TestApp, ORG};
use serde_json::{json, Value};
use thygon_testkit::fixtures;

const OTHER: &str = "org_other";
const NOBODYS_RUN: &str = "run_01m8hcprkqey8xhsdk0tek7x7n";

/// Org B ([`OTHER`]): its key, and a workflow and runs like [`seed`] makes for org A.
fn seed_other(app: &TestApp) -> (String, Seeded) {
    let key = app.key_for(OTHER);
    let def = json!({"steps": [
        {"name": "classify", "type": "agent", "agentId": "a", "instructions": "Classify."},
        {"name": "review", "type": "approval"}
    ]});
    let workflow = fixtures::insert_workflow(&mut app.conn(), OTHER, "beta", def, true);
    let waiting = app.run_of(OTHER, &workflow, "WAITING");
    app.step(&waiting, 0, "classify", "agent", "COMPLETED", |r| {
        r.attempt = 1
    });
    app.step(&waiting, 1, "review", "approval", "WAITING", |r| {
        r.attempt = 1;
        r.wake_at = Some(crate::helpers::seconds_from_now(3600));
    });
    let seeded = Seeded {
        pending: app.run_of(OTHER, &workflow, "PENDING"),
        failed: app.run_of(OTHER, &workflow, "FAILED"),
        completed: app.run_of(OTHER, &workflow, "COMPLETED"),
        waiting,
        workflow,
    };
    (key, seeded)
}

async fn as_key(app: &TestApp, key: &str, method: &str, path: &str, body: Option<Value>) -> Reply {
    let bearer = format!("Bearer {key}");
    app.send_auth(Some(&bearer), method, path, body, &[]).await
}

/// Every route that takes a run or workflow id of `s`, with a body where it needs one.
fn id_routes(s: &Seeded) -> Vec<(&'static str, String, Option<Value>)> {
    vec![
        ("GET", format!("/workflows/runs/{}", s.pending), None),
        ("GET", format!("/workflows/runs/{}", s.waiting), None),
        (
            "POST",
            format!("/workflows/runs/{}/cancel", s.pending),
            None,
        ),
        (
            "POST",
            format!("/workflows/runs/{}/cancel", s.waiting),
            None,
        ),
        ("POST", format!("/workflows/runs/{}/retry", s.failed), None),
        (
            "POST",
            format!("/workflows/runs/{}/steps/review/approve", s.waiting),
            Some(json!({"approved": true, "comment": "not mine to approve"})),
        ),
        (
            "POST",
            format!("/workflows/runs/{}/steps/review/approve", s.waiting),
            Some(json!({"approved": false})),
        ),
        (
            "GET",
            format!("/workflows/runs/{}/events", s.completed),
            None,
        ),
        ("GET", format!("/workflows/runs/{}/events", s.waiting), None),
        (
            "POST",
            format!("/workflows/{}/trigger", s.workflow),
            Some(json!({"variables": {}})),
        ),
        (
            "POST",
            "/workflows/runs".to_string(),
            Some(json!({"workflowId": s.workflow})),
        ),
    ]
}

fn nobodys() -> Seeded {
    Seeded {
        workflow: "wf_nobody_has_it".into(),
        pending: NOBODYS_RUN.into(),
        failed: NOBODYS_RUN.into(),
        waiting: NOBODYS_RUN.into(),
        completed: NOBODYS_RUN.into(),
    }
}

/// The 404's message with the ids of `s` (or of nobody) blanked out.
fn message_without_ids(r: &Reply, s: &Seeded) -> String {
    let mut m = r.body["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    for id in [&s.workflow, &s.pending, &s.failed, &s.waiting, &s.completed] {
        m = m.replace(id.as_str(), "<id>");
    }
    m
}

#[tokio::test]
async fn another_orgs_runs_are_404_on_every_route_and_stay_unchanged() {
    let app = spawn_app().await;
    let a = seed(&app);
    let (b_key, b) = seed_other(&app);
    let before = snapshot(&app);
    let unknown = nobodys();
    for (key, theirs) in [(b_key.as_str(), &a), (app.key.as_str(), &b)] {
        for ((method, path, body), (_, nobody_path, nobody_body)) in
            id_routes(theirs).into_iter().zip(id_routes(&unknown))
        {
            let what = format!("{method} {path}");
            let r = as_key(&app, key, method, &path, body).await;
            assert_error(&r, 404, "NOT_FOUND", &what);
            let u = as_key(&app, key, method, &nobody_path, nobody_body).await;
            assert_error(&u, 404, "NOT_FOUND", &nobody_path);
            assert_eq!(
                message_without_ids(&r, theirs),
                message_without_ids(&u, &unknown),
                "{what}: another org's id answers as an unknown one"
            );
        }
    }
    assert_eq!(
        snapshot(&app),
        before,
        "no run, step, outbox row or event changed"
    );

    // Each org still reads and controls its own.
    for (key, own) in [(app.key.as_str(), &a), (b_key.as_str(), &b)] {
        let r = as_key(
            &app,
            key,
            "GET",
            &format!("/workflows/runs/{}", own.waiting),
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["data"]["steps"][1]["status"], "WAITING");
        let r = as_key(
            &app,
            key,
            "POST",
            &format!("/workflows/runs/{}/cancel", own.pending),
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

/// Return once the clock's millisecond has changed (polling it), so the next run id sorts
/// after every id made before.
fn next_millisecond() {
    let now = || shared_models::time::now().timestamp_millis();
    let start = now();
    while now() == start {
        std::thread::yield_now();
    }
}

/// Every run id a list shows `key`, page by page.
async fn listed(app: &TestApp, key: &str, query: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut path = format!("/workflows/runs?limit=1{query}");
    for _ in 0..50 {
        let r = as_key(app, key, "GET", &path, None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        for run in r.body["data"].as_array().unwrap() {
            ids.push(run["id"].as_str().unwrap().to_string());
        }
        match r.body["pagination"]["nextCursor"].as_str() {
            Some(c) => path = format!("/workflows/runs?limit=1{query}&cursor={c}"),
            None => {
                ids.sort();
                return ids;
            }
        }
    }
    panic!("the pages never end");
}

fn run_ids(s: &Seeded) -> Vec<String> {
    let mut v = vec![
        s.pending.clone(),
        s.failed.clone(),
        s.waiting.clone(),
        s.completed.clone(),
    ];
    v.sort();
    v
}

#[tokio::test]
async fn lists_show_only_the_callers_runs() {
    let app = spawn_app().await;
    let a = seed(&app);
    let (b_key, b) = seed_other(&app);
    let a_key = app.key.clone();
    assert_eq!(listed(&app, &a_key, "").await, run_ids(&a));
    assert_eq!(listed(&app, &b_key, "").await, run_ids(&b));
    assert_eq!(
        listed(&app, &a_key, &format!("&orgId={ORG}")).await,
        run_ids(&a)
    );
    assert_eq!(
        listed(&app, &b_key, &format!("&orgId={OTHER}")).await,
        run_ids(&b)
    );
    assert_eq!(
        listed(&app, &b_key, "&status=WAITING").await,
        [b.waiting.as_str()]
    );
    assert_eq!(
        listed(&app, &a_key, "&status=WAITING").await,
        [a.waiting.as_str()]
    );
    // Filtering on the other org's workflow finds nothing.
    assert!(listed(&app, &b_key, &format!("&workflowId={}", a.workflow))
        .await
        .is_empty());
    assert!(listed(&app, &a_key, &format!("&workflowId={}", b.workflow))
        .await
        .is_empty());

    // The other org as a filter is refused, not obeyed.
    for (key, other) in [(&b_key, ORG), (&a_key, OTHER)] {
        let r = as_key(
            &app,
            key,
            "GET",
            &format!("/workflows/runs?orgId={other}"),
            None,
        )
        .await;
        assert_error(&r, 403, "FORBIDDEN", other);
        assert!(r.body["data"].is_null());
    }
    // A cursor of one org's list walks only the other's own runs, from where it points. A's
    // newest run is newer than all of B's but one (made after it), so every other run of
    // both orgs lies past A's first page.
    // (Run ids are ULIDs, ordered by their millisecond: each new run starts a new one.)
    next_millisecond();
    let newest = app.run_in(&a.workflow, "PENDING");
    next_millisecond();
    let b_newer = app.run_of(OTHER, &b.workflow, "PENDING");
    let r = as_key(&app, &a_key, "GET", "/workflows/runs?limit=1", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let first: Vec<&str> = r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|run| run["id"].as_str())
        .collect();
    assert_eq!(first, [newest.as_str()], "A's first page");
    let cursor = r.body["pagination"]["nextCursor"]
        .as_str()
        .expect("A's first page has a next one")
        .to_string();
    let r = as_key(
        &app,
        &b_key,
        "GET",
        &format!("/workflows/runs?limit=200&cursor={cursor}"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut seen: Vec<String> = r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|run| run["id"].as_str().map(str::to_string))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        run_ids(&b),
        "B's own runs past the cursor (not {b_newer}), none of A's"
    );
}

#[tokio::test]
async fn acting_for_another_org_by_body_is_refused() {
    let app = spawn_app().await;
    let a = seed(&app);
    let (b_key, b) = seed_other(&app);
    let before = snapshot(&app);
    // `orgId` of the other org: 403, whether the workflow is the caller's or not.
    for (key, wf, other) in [
        (b_key.as_str(), &b.workflow, ORG),
        (b_key.as_str(), &a.workflow, ORG),
        (app.key.as_str(), &a.workflow, OTHER),
        (app.key.as_str(), &b.workflow, OTHER),
    ] {
        let body = json!({"workflowId": wf, "orgId": other});
        let r = as_key(&app, key, "POST", "/workflows/runs", Some(body.clone())).await;
        assert_error(&r, 403, "FORBIDDEN", &body.to_string());
    }
    // The trigger route takes no orgId at all.
    let r = as_key(
        &app,
        &b_key,
        "POST",
        &format!("/workflows/{}/trigger", b.workflow),
        Some(json!({"orgId": ORG})),
    )
    .await;
    assert_error(&r, 400, "VALIDATION_ERROR", "orgId on trigger");
    assert_eq!(snapshot(&app), before, "nothing was created");

    // Its own org by name is fine, and the run is its own.
    let r = as_key(
        &app,
        &b_key,
        "POST",
        "/workflows/runs",
        Some(json!({"workflowId": b.workflow, "orgId": OTHER})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["data"]["orgId"], OTHER);
}

#[tokio::test]
async fn the_same_workflow_name_in_two_orgs_is_independent() {
    let app = spawn_app().await;
    let b_key = app.key_for(OTHER);
    let def = json!({"steps": [{"name": "classify", "type": "agent", "agentId": "a", "instructions": "x"}]});
    // `wf_shared` in both orgs: inactive in A, active in B.
    let wf = fixtures::insert_workflow(&mut app.conn(), ORG, "shared", def.clone(), false);
    assert_eq!(
        fixtures::insert_workflow(&mut app.conn(), OTHER, "shared", def.clone(), true),
        wf
    );
    let trigger = format!("/workflows/{wf}/trigger");
    let r = as_key(&app, &b_key, "POST", &trigger, Some(json!({}))).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["data"]["orgId"], OTHER);
    let b_run = r.body["data"]["id"].as_str().unwrap().to_string();
    let r = app.post(&trigger, json!({})).await;
    assert_error(&r, 409, "CONFLICT", "A's wf_shared is inactive");
    let r = app.get(&format!("/workflows/runs/{b_run}")).await;
    assert_error(&r, 404, "NOT_FOUND", "B's run of the shared name");

    // One Idempotency-Key, one body, two orgs: two runs, each replayed only in its org.
    let both = fixtures::insert_workflow(&mut app.conn(), ORG, "both", def.clone(), true);
    fixtures::insert_workflow(&mut app.conn(), OTHER, "both", def, true);
    let idem = [("Idempotency-Key", "order-42")];
    let body = json!({"variables": {"ticketId": "T-1"}});
    let path = format!("/workflows/{both}/trigger");
    let a1 = app.send("POST", &path, Some(body.clone()), &idem).await;
    assert_eq!(a1.status, 201, "{}", a1.body);
    let bearer = format!("Bearer {b_key}");
    let with_b = [("Authorization", bearer.as_str()), idem[0]];
    let b1 = app.send("POST", &path, Some(body.clone()), &with_b).await;
    assert_eq!(
        b1.status, 201,
        "B's first use of the key creates B's run: {}",
        b1.body
    );
    assert_ne!(a1.body["data"]["id"], b1.body["data"]["id"]);
    assert_eq!(
        (
            a1.body["data"]["orgId"].as_str(),
            b1.body["data"]["orgId"].as_str()
        ),
        (Some(ORG), Some(OTHER))
    );
    let a2 = app.send("POST", &path, Some(body.clone()), &idem).await;
    let b2 = app.send("POST", &path, Some(body), &with_b).await;
    assert_eq!((a2.status, b2.status), (200, 200), "replays");
    assert_eq!(a2.body["data"]["id"], a1.body["data"]["id"]);
    assert_eq!(b2.body["data"]["id"], b1.body["data"]["id"]);
}
