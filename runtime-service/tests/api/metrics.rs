//! `GET /metrics`: public, Prometheus text; runs by status, the oldest due PENDING run and
//! the unsent outbox as last read from the database (in the background, never by a scrape);
//! request durations by route; a port of its own with `METRICS_ADDR`.

use crate::helpers::{build_app_configured, seconds_from_now, spawn_app, ORG};
use diesel::prelude::*;
use runtime_service::config::Tasks;
use shared_models::metrics::sample;
use shared_models::schema::{outbox, runs};
use std::time::{Duration, Instant};
use thygon_testkit::http::scrape;

// Public, Prometheus text, request durations by route: the suite every HTTP service runs.
thygon_testkit::metrics_suite!(crate::helpers::TestApp);

fn runs_with(text: &str, status: &str) -> Option<f64> {
    sample(text, "thygon_runs", &format!(r#"status="{status}""#))
}

fn refreshes(text: &str) -> Option<f64> {
    sample(text, "thygon_metrics_refresh_total", "")
}

#[tokio::test]
async fn the_runs_gauges_show_this_database_as_of_the_last_read_never_read_by_a_scrape() {
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

    // Nothing read yet: scrapes show zeros, however many there are.
    for _ in 0..3 {
        let (status, content_type, text) = scrape(&app.address).await;
        assert_eq!(status, 200, "{text}");
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        assert_eq!(runs_with(&text, "PENDING"), Some(0.0), "{text}");
        assert_eq!(refreshes(&text), Some(0.0), "{text}");
    }

    app.gauges.refresh().await;
    let (_, _, text) = scrape(&app.address).await;
    assert_eq!(refreshes(&text), Some(1.0), "{text}");
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

    // A change shows after the next read, not before.
    diesel::update(runs::table.filter(runs::status.eq("PENDING")))
        .set(runs::status.eq("CANCELLED"))
        .execute(&mut app.conn())
        .unwrap();
    let (_, _, text) = scrape(&app.address).await;
    assert_eq!(runs_with(&text, "PENDING"), Some(3.0), "{text}");
    app.gauges.refresh().await;
    let (_, _, text) = scrape(&app.address).await;
    assert_eq!(runs_with(&text, "PENDING"), Some(0.0), "{text}");
    assert_eq!(runs_with(&text, "CANCELLED"), Some(3.0), "{text}");
    assert_eq!(
        sample(&text, "thygon_oldest_pending_run_age_seconds", ""),
        Some(0.0)
    );
    assert_eq!(refreshes(&text), Some(2.0), "{text}");
}

#[tokio::test]
async fn a_failed_read_is_counted_and_the_gauges_are_still_shown() {
    // Nothing listens on port 1: every read of the gauges fails.
    let (app, _fixture) = build_app_configured(|s| {
        s.common.database_url = "postgres://thygon:thygon@127.0.0.1:1/nowhere".into();
    });
    let address = format!("http://127.0.0.1:{}", app.port());
    app.gauges().refresh().await;
    tokio::spawn(app.run_until_stopped());

    let (status, _, text) = scrape(&address).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        sample(&text, "thygon_metrics_refresh_failures_total", ""),
        Some(1.0),
        "{text}"
    );
    assert_eq!(refreshes(&text), Some(1.0), "{text}");
    assert_eq!(runs_with(&text, "PENDING"), Some(0.0), "{text}");
    assert!(text.contains("thygon_outbox_unsent"), "{text}");
}

/// `GET <address>/<path>`: (status, body). One client for all (keep-alive: a scrape costs
/// no new connection).
async fn get(client: &reqwest::Client, address: &str, path: &str) -> (u16, String) {
    let res = client
        .get(format!("{address}{path}"))
        .send()
        .await
        .expect(path);
    (res.status().as_u16(), res.text().await.expect("body"))
}

#[tokio::test]
async fn with_metrics_addr_metrics_have_a_port_of_their_own_read_at_most_once_an_interval() {
    // Background tasks and all, as a deployment has them.
    let interval = Duration::from_millis(500);
    let (app, fixture) = build_app_configured(|s| {
        s.common.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
        s.metrics_refresh = interval;
        s.tasks = Tasks::ALL;
    });
    let main = format!("http://127.0.0.1:{}", app.port());
    let metrics = format!(
        "http://127.0.0.1:{}",
        app.metrics_port().expect("a metrics port")
    );
    tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();

    let (status, text) = get(&client, &metrics, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    assert!(runs_with(&text, "PENDING").is_some(), "{text}");
    assert!(
        sample(&text, "process_resident_memory_bytes", "").is_some(),
        "{text}"
    );
    assert_eq!(
        get(&client, &main, "/metrics").await.0,
        404,
        "not on HTTP_ADDR"
    );
    assert_eq!(get(&client, &main, "/healthz").await.0, 200);
    assert_eq!(
        get(&client, &metrics, "/healthz").await.0,
        404,
        "metrics only"
    );

    // The background task reads the database: a new run shows without anyone refreshing.
    let wf = fixture.workflow("metrics_port", true);
    fixture.run_in(&wf, "PENDING");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, text) = get(&client, &metrics, "/metrics").await;
        if runs_with(&text, "PENDING") == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "the run never showed: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Many scrapes (at least 20, over at least three intervals however slow each is), at
    // most one read per interval (plus the one under way).
    let started = Instant::now();
    let (_, text) = get(&client, &metrics, "/metrics").await;
    let before = refreshes(&text).expect("the refresh counter");
    let mut scrapes = 0;
    while scrapes < 20 || started.elapsed() < 3 * interval {
        let (status, _) = get(&client, &metrics, "/metrics").await;
        assert_eq!(status, 200);
        scrapes += 1;
    }
    let (_, text) = get(&client, &metrics, "/metrics").await;
    let reads = refreshes(&text).expect("the refresh counter") - before;
    let most = (started.elapsed().as_secs_f64() / interval.as_secs_f64()).floor() + 1.0;
    assert!(
        f64::from(scrapes) > most,
        "premise: {scrapes} scrapes are too few to tell reads per scrape from reads per interval"
    );
    assert!(
        (1.0..=most).contains(&reads),
        "{reads} reads for {scrapes} scrapes in {:?} (at most {most})",
        started.elapsed()
    );
}
