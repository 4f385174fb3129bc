//! `GET /metrics`, the same in every HTTP service: public, Prometheus text, request
//! durations labelled by the matched route (never the raw path), and the process collector.

use super::{ServiceUnderTest, Timed};
use crate::http::scrape;
use shared_models::metrics::sample;

fn count(text: &str, service: &str, method: &str, route: &str, status: u16) -> f64 {
    let labels =
        format!(r#"method="{method}",route="{route}",service="{service}",status="{status}""#);
    sample(text, "thygon_http_request_duration_seconds_count", &labels).unwrap_or(0.0)
}

pub async fn metrics_need_no_key_and_time_requests_by_their_matched_route<S: ServiceUnderTest>() {
    let app = S::start(crate::auth_config()).await;
    let mut timed = app.timed().await;
    let (_, _, before) = scrape(app.address()).await;

    let key = Some(app.key());
    assert_eq!(app.send_as(key, "GET", S::SECURED, None).await.status, 200);
    for t in &timed {
        let r = app.send_as(key, "GET", &t.path, None).await;
        assert_eq!(r.status, t.status, "GET {}: {}", t.path, r.body);
    }
    let unmatched = "/no/such/route/77";
    assert_eq!(app.send_as(key, "GET", unmatched, None).await.status, 404);
    assert_eq!(app.send_as(None, "GET", S::SECURED, None).await.status, 401);
    timed.extend([
        Timed {
            path: S::SECURED.into(),
            route: S::SECURED,
            status: 200,
            id: String::new(),
        },
        Timed {
            path: unmatched.into(),
            route: "unmatched",
            status: 404,
            id: "/no/such/route".into(),
        },
        Timed {
            path: S::SECURED.into(),
            route: S::SECURED,
            status: 401,
            id: String::new(),
        },
    ]);

    let (status, content_type, text) = scrape(app.address()).await;
    assert_eq!(status, 200, "{text}");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert!(
        text.contains("# TYPE thygon_http_request_duration_seconds histogram"),
        "{text}"
    );
    assert!(
        text.lines().any(
            |l| l.starts_with("thygon_http_request_duration_seconds_bucket{")
                && l.contains(&format!(r#"route="{}""#, S::SECURED))
                && l.contains(&format!(r#"service="{}""#, S::NAME))
                && l.contains(r#"le="+Inf""#)
        ),
        "{text}"
    );
    // Other tests of this binary run at the same time: counts only grow.
    for t in &timed {
        let (now, then) = (
            count(&text, S::NAME, "GET", t.route, t.status),
            count(&before, S::NAME, "GET", t.route, t.status),
        );
        assert!(
            now >= then + 1.0,
            "GET {} {} ({}): {text}",
            t.route,
            t.status,
            t.path
        );
        assert!(
            t.id.is_empty() || !text.contains(&t.id),
            "{} never becomes a label",
            t.id
        );
    }
    assert!(
        sample(&text, "process_resident_memory_bytes", "").is_some_and(|v| v > 0.0),
        "the process collector is exposed"
    );
}
