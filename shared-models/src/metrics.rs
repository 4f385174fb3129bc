//! Prometheus metrics: every process registers its metrics in the process-wide default
//! registry (`prometheus::default_registry()`, lazily, through the `register_*!` macros), and
//! `GET /metrics` ([`metrics`]) exposes all of them with the process collector's
//! (`process_resident_memory_bytes`, `process_cpu_seconds_total`, `process_open_fds`, ...).
//!
//! The HTTP edge ([`crate::http::app`]) times every request into
//! `thygon_http_request_duration_seconds{service,method,route,status}`, where `route` is the
//! matched route pattern (`/workflows/runs/{id}`), never the raw path.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::HttpResponse;
use prometheus::{register_histogram_vec, Encoder, HistogramVec, TextEncoder};
use std::sync::{LazyLock, OnceLock};
use std::time::Instant;

static SERVICE: OnceLock<&'static str> = OnceLock::new();

/// Name this process in the `service` label (once; later calls are ignored).
pub fn set_service_name(name: &'static str) {
    let _ = SERVICE.set(name);
}

/// The `service` label of this process ("unknown" until [`set_service_name`]).
pub fn service_name() -> &'static str {
    SERVICE.get().copied().unwrap_or("unknown")
}

pub static HTTP_REQUEST_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "thygon_http_request_duration_seconds",
        "Time to answer an HTTP request (until the response head; an event stream's lifetime is not counted), by matched route",
        &["service", "method", "route", "status"]
    )
    .expect("register thygon_http_request_duration_seconds")
});

/// The `method` label: the standard methods, anything else as `OTHER` (a client chooses it).
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::HEAD,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    KNOWN
        .iter()
        .find(|m| *m == method)
        .map(Method::as_str)
        .unwrap_or("OTHER")
}

/// Middleware: time the request into [`HTTP_REQUEST_DURATION`].
pub async fn http_metrics(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = method_label(req.method());
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_string());
    let result = next.call(req).await;
    let status = match &result {
        Ok(res) => res.status(),
        Err(e) => e.as_response_error().status_code(),
    };
    HTTP_REQUEST_DURATION
        .with_label_values(&[service_name(), method, &route, status.as_str()])
        .observe(started.elapsed().as_secs_f64());
    result
}

/// Every metric of the default registry in the Prometheus text format.
pub fn render() -> Result<String, prometheus::Error> {
    let mut out = Vec::new();
    TextEncoder::new().encode(&prometheus::gather(), &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

/// `GET /metrics`: [`render`] as `text/plain; version=0.0.4`.
pub fn response() -> HttpResponse {
    match render() {
        Ok(text) => HttpResponse::Ok()
            .content_type(TextEncoder::new().format_type())
            .body(text),
        Err(e) => {
            log::error!("cannot render the metrics: {e}");
            HttpResponse::InternalServerError()
                .content_type("text/plain; charset=utf-8")
                .body("cannot render the metrics\n")
        }
    }
}

/// `GET /metrics` handler for a process whose metrics need no refresh before a scrape.
pub async fn metrics() -> HttpResponse {
    response()
}

/// The value of the sample `name{labels}` in a text exposition (`labels` as rendered, e.g.
/// `status="PENDING"`; empty for none), when present: for tests and checks.
pub fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let series = if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(&series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "OTHER");
    }

    #[test]
    fn the_exposition_holds_registered_metrics_and_the_process_collector() {
        HTTP_REQUEST_DURATION
            .with_label_values(&["test", "GET", "/things/{id}", "200"])
            .observe(0.01);
        let text = render().unwrap();
        assert!(
            text.contains(r#"thygon_http_request_duration_seconds_bucket{method="GET",route="/things/{id}",service="test",status="200",le="0.025"} 1"#),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "thygon_http_request_duration_seconds_count",
                r#"method="GET",route="/things/{id}",service="test",status="200""#
            ),
            Some(1.0)
        );
        assert!(
            sample(&text, "process_resident_memory_bytes", "").is_some_and(|v| v > 0.0),
            "{text}"
        );
    }
}
