//! `GET /metrics`: public, Prometheus text, request durations labelled by matched route.

use crate::helpers::spawn_app;
use shared_models::metrics::sample;

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

fn count(text: &str, method: &str, route: &str, status: &str) -> f64 {
    let labels = format!(
        r#"method="{method}",route="{route}",service="workflow-service",status="{status}""#
    );
    sample(text, "thygon_http_request_duration_seconds_count", &labels).unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_need_no_key_and_time_requests_by_their_matched_route() {
    let app = spawn_app().await;
    let (_, _, before) = scrape(&app.address).await;

    assert_eq!(app.send("GET", "/workflows", None).await.status, 200);
    let missing = app.send("GET", "/workflows/wf_not_there_42", None).await;
    assert_eq!(missing.status, 404);
    assert_eq!(app.send("GET", "/no/such/route/77", None).await.status, 404);
    assert_eq!(
        app.send_as(None, "GET", "/workflows", None).await.status,
        401
    );

    let (status, content_type, text) = scrape(&app.address).await;
    assert_eq!(status, 200, "{text}");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert!(
        text.contains("# TYPE thygon_http_request_duration_seconds histogram"),
        "{text}"
    );
    assert!(
        text.lines().any(
            |l| l.starts_with("thygon_http_request_duration_seconds_bucket{")
                && l.contains(r#"route="/workflows""#)
                && l.contains(r#"service="workflow-service""#)
                && l.contains(r#"le="+Inf""#)
        ),
        "{text}"
    );
    // Other tests of this binary run at the same time: counts only grow.
    for (method, route, status) in [
        ("GET", "/workflows", "200"),
        ("GET", "/workflows/{id}", "404"),
        ("GET", "unmatched", "404"),
        ("GET", "/workflows", "401"),
    ] {
        assert!(
            count(&text, method, route, status) >= count(&before, method, route, status) + 1.0,
            "{method} {route} {status}: {text}"
        );
    }
    assert!(
        !text.contains("wf_not_there_42") && !text.contains("/no/such/route"),
        "raw paths never become labels"
    );
    assert!(
        sample(&text, "process_resident_memory_bytes", "").is_some_and(|v| v > 0.0),
        "the process collector is exposed"
    );
}
