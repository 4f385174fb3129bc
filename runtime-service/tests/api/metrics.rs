//! `GET /metrics`: public, Prometheus text; runs by status, the oldest due PENDING run and
//! the unsent outbox read from the database at each scrape; request durations by route.

use crate::helpers::{seconds_from_now, spawn_app, ORG};
use diesel::prelude::*;
use runtime_service::publisher::{AmqpPublisher, JobPublisher};
use runtime_service::startup::Application;
use shared_models::metrics::sample;
use shared_models::schema::{outbox, runs};
use shared_models::testing;
use std::net::TcpListener;
use std::sync::Arc;

/// `GET /metrics` with no key: (status, content type, body).
async fn scrape(address: &str) -> (u16, String, String) {
    let res = reqwest::get(format!("{address}/metrics"))
        .await
        .expect("scrape");
    let status = res.status().as_u16();
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, content_type, res.text().await.expect("body"))
}

fn runs_with(text: &str, status: &str) -> Option<f64> {
    sample(text, "thygon_runs", &format!(r#"status="{status}""#))
}

#[tokio::test]
async fn the_runs_gauges_show_this_database_at_each_scrape() {
    let app = spawn_app().await;
    let wf = app.workflow("metrics_gauges", true);
    let due_old = app.run_in(&wf, "PENDING");
    let _due_new = app.run_in(&wf, "PENDING");
    let not_due = app.run_in(&wf, "PENDING");
    let _done = app.run_in(&wf, "COMPLETED");
    let _running = app.run_in(&wf, "RUNNING");
    {
        let mut conn = app.conn();
        // The oldest due PENDING run was created 60 s ago; an older one is not due yet (held
        // back until wake_at), so it does not count.
        diesel::update(runs::table.find(&due_old))
            .set(runs::created_at.eq(seconds_from_now(-60)))
            .execute(&mut conn)
            .unwrap();
        diesel::update(runs::table.find(&not_due))
            .set((
                runs::created_at.eq(seconds_from_now(-600)),
                runs::wake_at.eq(Some(seconds_from_now(600))),
            ))
            .execute(&mut conn)
            .unwrap();
        for run in [&due_old, &not_due] {
            shared_models::runs::enqueue_job(&mut conn, run, ORG, None, None).unwrap();
        }
        diesel::update(outbox::table.filter(outbox::run_id.eq(&not_due)))
            .set(outbox::sent_at.eq(Some(shared_models::time::now())))
            .execute(&mut conn)
            .unwrap();
    }

    let (status, content_type, text) = scrape(&app.address).await;
    assert_eq!(status, 200, "{text}");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert_eq!(runs_with(&text, "PENDING"), Some(3.0), "{text}");
    assert_eq!(runs_with(&text, "COMPLETED"), Some(1.0), "{text}");
    assert_eq!(runs_with(&text, "RUNNING"), Some(1.0), "{text}");
    assert_eq!(
        runs_with(&text, "FAILED"),
        Some(0.0),
        "every status is shown"
    );
    let age = sample(&text, "thygon_oldest_pending_run_age_seconds", "").expect("age");
    assert!((60.0..120.0).contains(&age), "{age}");
    assert_eq!(sample(&text, "thygon_outbox_unsent", ""), Some(1.0));

    // The next scrape reads again: no PENDING run left, so no age.
    diesel::update(runs::table.filter(runs::status.eq("PENDING")))
        .set(runs::status.eq("CANCELLED"))
        .execute(&mut app.conn())
        .unwrap();
    let (_, _, text) = scrape(&app.address).await;
    assert_eq!(runs_with(&text, "PENDING"), Some(0.0), "{text}");
    assert_eq!(runs_with(&text, "CANCELLED"), Some(3.0), "{text}");
    assert_eq!(
        sample(&text, "thygon_oldest_pending_run_age_seconds", ""),
        Some(0.0)
    );
}

#[tokio::test]
async fn request_durations_are_labelled_by_route_pattern_never_by_path() {
    let app = spawn_app().await;
    let wf = app.workflow("metrics_routes", true);
    let run = app.run_in(&wf, "COMPLETED");
    assert_eq!(app.get(&format!("/workflows/runs/{run}")).await.status, 200);
    assert_eq!(app.get("/workflows/runs").await.status, 200);

    let (_, _, text) = scrape(&app.address).await;
    for route in ["/workflows/runs/{id}", "/workflows/runs"] {
        let labels =
            format!(r#"method="GET",route="{route}",service="runtime-service",status="200""#);
        assert!(
            sample(&text, "thygon_http_request_duration_seconds_count", &labels)
                .is_some_and(|n| n >= 1.0),
            "{route}: {text}"
        );
    }
    assert!(!text.contains(&run), "a run id never becomes a label");
}

#[tokio::test]
async fn a_scrape_succeeds_with_the_last_values_when_the_database_is_away() {
    // A scrape that reads a database first, so the gauges have values to keep.
    let good = spawn_app().await;
    let (status, _, _) = scrape(&good.address).await;
    assert_eq!(status, 200);

    let pool = shared_models::db::pool("postgres://thygon:thygon@127.0.0.1:1/nowhere", 1);
    let prefix = testing::unique_queue_prefix();
    let publisher: Arc<dyn JobPublisher> = Arc::new(AmqpPublisher::new(
        &crate::helpers::broker(),
        shared_models::queue::QueueNames::new(&prefix),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let app = Application::with_parts(listener, pool, publisher, &testing::auth_config())
        .expect("build app");
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());

    let failures = |text: &str| sample(text, "thygon_metrics_refresh_failures_total", "");
    let before = failures(&scrape(&good.address).await.2).expect("the failure counter");
    let (status, _, text) = scrape(&address).await;
    assert_eq!(status, 200, "{text}");
    assert!(failures(&text).expect("the failure counter") >= before + 1.0);
    assert!(runs_with(&text, "PENDING").is_some(), "{text}");
    assert!(text.contains("thygon_outbox_unsent"), "{text}");
}
