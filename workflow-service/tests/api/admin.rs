//! `/admin`: orgs and their API keys, for the operator's key only (docs/API.md "Tenancy and
//! keys"). Keys are shown once and stored as SHA-256 only.

use crate::helpers::{assert_error, fields, spawn_app, workflow, Reply, TestApp, ORG};
use diesel::prelude::*;
use diesel::sql_types::Text;
use serde_json::{json, Value};
use shared_models::schema::{api_keys, orgs, workflows};
use std::collections::BTreeSet;
use thygon_testkit::ADMIN_KEY;

async fn admin(app: &TestApp, method: &str, path: &str, body: Option<Value>) -> Reply {
    app.send_as(Some(ADMIN_KEY), method, path, body).await
}

async fn create_org(app: &TestApp, id: &str) -> Reply {
    admin(
        app,
        "POST",
        "/admin/orgs",
        Some(json!({"id": id, "name": format!("Org {id}")})),
    )
    .await
}

/// A new key of `org_id` through the API: `(id, key)`.
async fn create_key(app: &TestApp, org_id: &str, name: &str) -> (String, String) {
    let r = admin(
        app,
        "POST",
        &format!("/admin/orgs/{org_id}/keys"),
        Some(json!({"name": name})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let d = &r.body["data"];
    (
        d["id"].as_str().unwrap().to_string(),
        d["key"].as_str().unwrap().to_string(),
    )
}

fn object_keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

fn assert_timestamp(v: &Value) {
    let t = v.as_str().unwrap_or_else(|| panic!("not a timestamp: {v}"));
    assert_eq!(t.len(), "2026-06-16T17:15:00.000Z".len(), "{t}");
    assert!(t.ends_with('Z'), "{t}");
    chrono::DateTime::parse_from_rfc3339(t).expect("RFC 3339");
}

fn org_ids(app: &TestApp) -> Vec<String> {
    orgs::table
        .select(orgs::id)
        .order(orgs::id)
        .load(&mut app.conn())
        .expect("orgs")
}

/// Every item of a paged admin list, following `nextCursor` with pages of `limit`.
async fn all_pages(app: &TestApp, path: &str, limit: u32) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let url = match &cursor {
            Some(c) => format!("{path}?limit={limit}&cursor={c}"),
            None => format!("{path}?limit={limit}"),
        };
        let r = admin(app, "GET", &url, None).await;
        assert_eq!(r.status, 200, "{url}: {}", r.body);
        let page = r.body["data"].as_array().expect("a list").clone();
        assert!(page.len() <= limit as usize);
        items.extend(page);
        match r.body["pagination"]["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return items,
        }
    }
    panic!("{path}: the pages never end");
}

#[tokio::test]
async fn creating_an_org_answers_201_with_the_contract_shape() {
    let app = spawn_app().await;
    let r = admin(
        &app,
        "POST",
        "/admin/orgs",
        Some(json!({"id": "org_acme_123", "name": "Acme"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["success"], true);
    let d = &r.body["data"];
    assert_eq!(object_keys(d), BTreeSet::from(["id", "name", "createdAt"]));
    assert_eq!(
        (d["id"].as_str(), d["name"].as_str()),
        (Some("org_acme_123"), Some("Acme"))
    );
    assert_timestamp(&d["createdAt"]);
    assert_eq!(org_ids(&app), ["org_acme_123", ORG]);
    // Names are trimmed; ids may hold digits, '_' and '-'.
    let r = admin(
        &app,
        "POST",
        "/admin/orgs",
        Some(json!({"id": "acme-eu-2", "name": "  Acme EU  "})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["data"]["name"], "Acme EU");
}

#[tokio::test]
async fn a_taken_org_id_is_a_409_and_the_org_is_unchanged() {
    let app = spawn_app().await;
    assert_eq!(create_org(&app, "org_acme").await.status, 201);
    let r = admin(
        &app,
        "POST",
        "/admin/orgs",
        Some(json!({"id": "org_acme", "name": "Impostor"})),
    )
    .await;
    assert_error(&r, 409, "CONFLICT", "a second org_acme");
    // The helper's org exists already too.
    assert_error(&create_org(&app, ORG).await, 409, "CONFLICT", ORG);
    let name: String = orgs::table
        .find("org_acme")
        .select(orgs::name)
        .first(&mut app.conn())
        .expect("org");
    assert_eq!(name, "Org org_acme");
    assert_eq!(org_ids(&app), ["org_acme", ORG]);
}

#[tokio::test]
async fn bad_org_and_key_bodies_get_400_naming_each_field() {
    let app = spawn_app().await;
    let cases = [
        (json!({}), vec!["id", "name"]),
        (
            json!({"id": "X", "name": "", "plan": 1}),
            vec!["id", "name", "plan"],
        ),
        (json!({"id": "ab", "name": "A"}), vec!["id"]),
        (json!({"id": "1org", "name": "A"}), vec!["id"]),
        (json!({"id": "Org_acme", "name": "A"}), vec!["id"]),
        (json!({"id": "org acme", "name": "A"}), vec!["id"]),
        (json!({"id": "org/acme", "name": "A"}), vec!["id"]),
        (json!({"id": "o".repeat(65), "name": "A"}), vec!["id"]),
        (json!({"id": 12345, "name": "A"}), vec!["id"]),
        (json!({"id": "org_ok", "name": "   "}), vec!["name"]),
        (
            json!({"id": "org_ok", "name": "n".repeat(201)}),
            vec!["name"],
        ),
        (json!({"id": "org_ok", "name": ["A"]}), vec!["name"]),
        (
            json!({"id": "org_ok", "name": "A", "orgId": "org_x"}),
            vec!["orgId"],
        ),
    ];
    for (body, expected) in cases {
        let r = admin(&app, "POST", "/admin/orgs", Some(body.clone())).await;
        assert_error(&r, 400, "VALIDATION_ERROR", &body.to_string());
        assert_eq!(fields(&r.body), expected, "{body}");
    }
    // At the limits, both are fine.
    let r = admin(
        &app,
        "POST",
        "/admin/orgs",
        Some(json!({"id": "o".repeat(64), "name": "n".repeat(200)})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(org_ids(&app), ["o".repeat(64), ORG.to_string()]);

    let keys = format!("/admin/orgs/{ORG}/keys");
    for (body, expected) in [
        (json!({}), vec!["name"]),
        (json!({"name": ""}), vec!["name"]),
        (json!({"name": 7}), vec!["name"]),
        (json!({"name": "ci", "key": "thy_mine"}), vec!["key"]),
        (
            json!({"name": "ci", "orgId": "org_other", "scope": "all"}),
            vec!["orgId", "scope"],
        ),
    ] {
        let r = admin(&app, "POST", &keys, Some(body.clone())).await;
        assert_error(&r, 400, "VALIDATION_ERROR", &body.to_string());
        assert_eq!(fields(&r.body), expected, "{body}");
    }
    let r = app
        .client
        .post(format!("{}/admin/orgs", app.address))
        .bearer_auth(ADMIN_KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 400);
    let count: i64 = api_keys::table
        .count()
        .get_result(&mut app.conn())
        .expect("count");
    assert_eq!(count, 1, "only the app's own key");
}

#[tokio::test]
async fn a_new_key_is_shown_once_and_works_at_once_for_its_org() {
    let app = spawn_app().await;
    assert_eq!(create_org(&app, "org_acme").await.status, 201);
    let r = admin(
        &app,
        "POST",
        "/admin/orgs/org_acme/keys",
        Some(json!({"name": "ci"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["success"], true);
    let d = &r.body["data"];
    assert_eq!(
        object_keys(d),
        BTreeSet::from(["id", "key", "orgId", "name", "prefix", "createdAt"])
    );
    let key = d["key"].as_str().unwrap();
    let id = d["id"].as_str().unwrap();
    assert!(id.starts_with("key_"), "{id}");
    assert_eq!(d["orgId"], "org_acme");
    assert_eq!(d["name"], "ci");
    assert!(key.starts_with("thy_") && key.len() >= 40, "{key}");
    assert_eq!(d["prefix"].as_str(), Some(&key[..8]));
    assert_timestamp(&d["createdAt"]);

    // At once, acting for org_acme: what it creates is org_acme's, and only it sees it.
    let r = app
        .send_as(Some(key), "POST", "/workflows", Some(workflow("acme_flow")))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let owner: String = workflows::table
        .filter(workflows::id.eq("wf_acme_flow"))
        .select(workflows::org_id)
        .first(&mut app.conn())
        .expect("the workflow");
    assert_eq!(owner, "org_acme");
    let r = app.send_as(Some(key), "GET", "/workflows", None).await;
    assert_eq!(r.body["data"][0]["id"], "wf_acme_flow");
    let r = app.send("GET", "/workflows/wf_acme_flow", None).await;
    assert_error(&r, 404, "NOT_FOUND", "org_test reading org_acme's workflow");

    // Two keys of one org are different keys for the same org.
    let (id2, key2) = create_key(&app, "org_acme", "ci").await;
    assert_ne!((id2.as_str(), key2.as_str()), (id, key));
    let r = app
        .send_as(Some(&key2), "GET", "/workflows/wf_acme_flow", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn keys_of_an_unknown_org_are_a_404() {
    let app = spawn_app().await;
    for org in ["org_nobody", "Not_An_Id", "x"] {
        let path = format!("/admin/orgs/{org}/keys");
        let r = admin(&app, "POST", &path, Some(json!({"name": "ci"}))).await;
        assert_error(&r, 404, "NOT_FOUND", &path);
        let r = admin(&app, "GET", &path, None).await;
        assert_error(&r, 404, "NOT_FOUND", &path);
    }
    let count: i64 = api_keys::table
        .count()
        .get_result(&mut app.conn())
        .expect("count");
    assert_eq!(count, 1);
    assert_eq!(org_ids(&app), [ORG]);
}

#[tokio::test]
async fn lists_show_prefixes_never_keys_or_hashes() {
    let app = spawn_app().await;
    for id in ["org_b", "org_c", "org_a"] {
        assert_eq!(create_org(&app, id).await.status, 201);
    }
    let mut made = Vec::new();
    for name in ["one", "two", "three"] {
        made.push(create_key(&app, "org_b", name).await);
        // Key ids sort by creation time to the millisecond.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let (_, key_c) = create_key(&app, "org_c", "other").await;
    let r = admin(&app, "DELETE", &format!("/admin/keys/{}", made[1].0), None).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Orgs, by id, in pages.
    let r = admin(&app, "GET", "/admin/orgs", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body["data"].as_array().unwrap().is_empty(), "{}", r.body);
    for org in r.body["data"].as_array().unwrap() {
        assert_eq!(
            object_keys(org),
            BTreeSet::from(["id", "name", "createdAt"])
        );
    }
    let ids: Vec<Value> = all_pages(&app, "/admin/orgs", 2)
        .await
        .iter()
        .map(|o| o["id"].clone())
        .collect();
    assert_eq!(
        ids,
        [json!("org_a"), json!("org_b"), json!("org_c"), json!(ORG)]
    );

    // An org's keys, newest first, in pages; only that org's.
    let listed = all_pages(&app, "/admin/orgs/org_b/keys", 2).await;
    let listed_ids: Vec<&str> = listed.iter().map(|k| k["id"].as_str().unwrap()).collect();
    assert_eq!(
        listed_ids,
        [made[2].0.as_str(), made[1].0.as_str(), made[0].0.as_str()]
    );
    for (k, (_, key)) in listed.iter().zip(made.iter().rev()) {
        assert_eq!(
            object_keys(k),
            BTreeSet::from(["id", "orgId", "name", "prefix", "createdAt", "revokedAt"])
        );
        assert_eq!(k["orgId"], "org_b");
        assert_eq!(k["prefix"].as_str(), Some(&key[..8]));
        assert_timestamp(&k["createdAt"]);
    }
    assert_eq!(listed[0]["revokedAt"], Value::Null);
    assert_timestamp(&listed[1]["revokedAt"]);
    let names: Vec<&str> = listed.iter().map(|k| k["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["three", "two", "one"]);

    // Nothing any list answers holds a key, a hash, or more of a key than its prefix.
    let mut texts = Vec::new();
    for path in [
        "/admin/orgs",
        "/admin/orgs/org_b/keys",
        "/admin/orgs/org_c/keys",
    ] {
        texts.push(admin(&app, "GET", path, None).await.body.to_string());
    }
    let text = texts.concat();
    let mut every_key: Vec<&str> = made.iter().map(|(_, k)| k.as_str()).collect();
    every_key.push(&key_c);
    for key in every_key {
        assert!(!text.contains(key), "a listing shows a key");
        assert!(
            !text.contains(&key[..12]),
            "a listing shows more than the prefix"
        );
        assert!(
            !text.contains(&sha256_hex(&app, key)),
            "a listing shows a hash"
        );
        assert!(text.contains(&key[..8]), "the prefix tells keys apart");
    }
    let lower = text.to_lowercase();
    assert!(!lower.contains("hash"), "{text}");
}

#[tokio::test]
async fn revoking_a_key_is_200_twice_and_404_for_an_unknown_one() {
    let app = spawn_app().await;
    let (id, key) = create_key(&app, ORG, "ci").await;
    assert_eq!(
        app.send_as(Some(&key), "GET", "/workflows", None)
            .await
            .status,
        200
    );
    let path = format!("/admin/keys/{id}");
    let first = admin(&app, "DELETE", &path, None).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["success"], true);
    let d = &first.body["data"];
    assert_eq!(
        (d["id"].as_str(), d["revoked"].as_bool()),
        (Some(id.as_str()), Some(true))
    );
    assert_eq!(d["orgId"], ORG);
    assert_timestamp(&d["revokedAt"]);
    assert!(
        !first.body.to_string().contains(&key),
        "the key is never shown again"
    );

    let again = admin(&app, "DELETE", &path, None).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["data"]["revoked"], true);
    assert_eq!(
        again.body["data"]["revokedAt"], d["revokedAt"],
        "revoking again changes nothing"
    );

    let revoked_at: Option<chrono::DateTime<chrono::Utc>> = api_keys::table
        .find(&id)
        .select(api_keys::revoked_at)
        .first(&mut app.conn())
        .expect("key row");
    assert!(revoked_at.is_some());
    // Only that key: the app's own key still works.
    assert_eq!(app.send("GET", "/workflows", None).await.status, 200);
    let live: i64 = api_keys::table
        .filter(api_keys::revoked_at.is_null())
        .count()
        .get_result(&mut app.conn())
        .expect("count");
    assert_eq!(live, 1);

    for unknown in ["key_01m8hcprkqey8xhsdk0tek7x7n", "nope", "key_"] {
        let r = admin(&app, "DELETE", &format!("/admin/keys/{unknown}"), None).await;
        assert_error(&r, 404, "NOT_FOUND", unknown);
    }
}

#[tokio::test]
async fn org_keys_get_403_on_every_admin_route_and_change_nothing() {
    let app = spawn_app().await;
    let other = app.key_for("org_other");
    let (victim, victim_key) = create_key(&app, "org_other", "victim").await;
    let own_id: String = api_keys::table
        .filter(api_keys::org_id.eq(ORG))
        .select(api_keys::id)
        .first(&mut app.conn())
        .expect("own key");
    let routes = [
        ("GET", "/admin/orgs".to_string(), None),
        (
            "POST",
            "/admin/orgs".to_string(),
            Some(json!({"id": "org_evil", "name": "Evil"})),
        ),
        ("GET", format!("/admin/orgs/{ORG}/keys"), None),
        (
            "POST",
            format!("/admin/orgs/{ORG}/keys"),
            Some(json!({"name": "mine"})),
        ),
        ("GET", "/admin/orgs/org_other/keys".to_string(), None),
        (
            "POST",
            "/admin/orgs/org_other/keys".to_string(),
            Some(json!({"name": "theirs"})),
        ),
        ("DELETE", format!("/admin/keys/{victim}"), None),
        ("DELETE", format!("/admin/keys/{own_id}"), None),
        // Even an unknown org or key: org keys learn nothing here.
        ("GET", "/admin/orgs/org_nobody/keys".to_string(), None),
        ("DELETE", "/admin/keys/key_nobody".to_string(), None),
    ];
    let keys_before: i64 = api_keys::table
        .count()
        .get_result(&mut app.conn())
        .expect("count");
    for key in [app.key.as_str(), other.as_str(), victim_key.as_str()] {
        for (method, path, body) in &routes {
            let r = app.send_as(Some(key), method, path, body.clone()).await;
            assert_error(&r, 403, "FORBIDDEN", &format!("{method} {path}"));
            assert!(r.body["data"].is_null());
        }
    }
    assert_eq!(org_ids(&app), ["org_other", ORG]);
    let keys_after: i64 = api_keys::table
        .count()
        .get_result(&mut app.conn())
        .expect("count");
    assert_eq!(keys_after, keys_before);
    let revoked: i64 = api_keys::table
        .filter(api_keys::revoked_at.is_not_null())
        .count()
        .get_result(&mut app.conn())
        .expect("count");
    assert_eq!(revoked, 0);
    assert_eq!(
        app.send_as(Some(&victim_key), "GET", "/workflows", None)
            .await
            .status,
        200
    );
}

#[derive(QueryableByName)]
struct Text1 {
    #[diesel(sql_type = Text)]
    text: String,
}

/// SHA-256 of `s` as hex, computed by PostgreSQL (not by the code under test).
fn sha256_hex(app: &TestApp, s: &str) -> String {
    diesel::sql_query("SELECT encode(sha256(convert_to($1, 'UTF8')), 'hex') AS text")
        .bind::<Text, _>(s)
        .get_result::<Text1>(&mut app.conn())
        .expect("sha256")
        .text
}

/// Every row of every table of the database, as text, by table.
fn dump_database(app: &TestApp) -> Vec<(String, String)> {
    let mut conn = app.conn();
    let tables: Vec<Text1> = diesel::sql_query(
        "SELECT table_name::text AS text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .load(&mut conn)
    .expect("tables");
    assert!(tables.iter().any(|t| t.text == "api_keys"));
    tables
        .into_iter()
        .map(|t| {
            let dump = diesel::sql_query(format!(
                "SELECT coalesce(string_agg(t::text, ' '), '') AS text FROM \"{}\" t",
                t.text
            ))
            .get_result::<Text1>(&mut conn)
            .expect("dump")
            .text;
            (t.text, dump)
        })
        .collect()
}

#[tokio::test]
async fn keys_are_stored_as_sha256_only() {
    let app = spawn_app().await;
    assert_eq!(create_org(&app, "org_acme").await.status, 201);
    let mut keys = vec![
        create_key(&app, ORG, "ci").await,
        create_key(&app, "org_acme", "ci").await,
    ];
    let (revoked_id, revoked_key) = create_key(&app, "org_acme", "old").await;
    admin(&app, "DELETE", &format!("/admin/keys/{revoked_id}"), None).await;
    keys.push((revoked_id, revoked_key));
    // Used, so anything a lookup might write down has been written.
    for (_, key) in &keys[..2] {
        assert_eq!(
            app.send_as(Some(key), "POST", "/workflows", Some(workflow("used")))
                .await
                .status,
            201
        );
    }

    let dump = dump_database(&app);
    let api_keys_dump = &dump.iter().find(|(t, _)| t == "api_keys").unwrap().1;
    for (id, key) in &keys {
        let hash = sha256_hex(&app, key);
        assert_eq!(hash.len(), 64);
        for (table, text) in &dump {
            assert!(
                !text.contains(key.as_str()),
                "table {table} holds a key in clear"
            );
            assert!(
                !text.contains(&key[..12]),
                "table {table} holds more of a key than its prefix"
            );
            assert!(
                !text.contains(&key[4..]),
                "table {table} holds a key without its prefix"
            );
        }
        assert!(api_keys_dump.contains(&hash), "the key's SHA-256 is stored");
        let stored: (String, String) = api_keys::table
            .find(id)
            .select((api_keys::key_hash, api_keys::key_prefix))
            .first(&mut app.conn())
            .expect("key row");
        assert_eq!(stored, (hash, key[..8].to_string()));
    }
}
