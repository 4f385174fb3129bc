//! Prometheus metrics: every process registers its metrics in the process-wide default
//! registry (`prometheus::default_registry()`, lazily, through the `register_*!` macros), and
//! `GET /metrics` ([`metrics`]) exposes all of them with the process collector's
//! (`process_resident_memory_bytes`, `process_cpu_seconds_total`, `process_open_fds`, ...).
//!
//! The HTTP edge ([`crate::http::app`]) times every request into
//! `thygon_http_request_duration_seconds{service,method,route,status}`, where `route` is the
//! matched route pattern (`/workflows/runs/{id}`), never the raw path.
//!
//! Where `/metrics` is served ([`Endpoint`], `METRICS_ADDR`): on the process's HTTP address
//! beside its other routes, or, when `METRICS_ADDR` is set, on a small server of its own bound
//! there ([`Endpoint::serve`]) and nowhere else, so the metrics port can stay inside the
//! cluster while the API port is exposed. What it shows ([`Exposition`]): the default
//! registry, plus a registry of the application's own when it has one (runtime-service's
//! gauges read from its database, one set per application so tests can run several).

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, App, HttpResponse, HttpServer};
use prometheus::proto::MetricFamily;
use prometheus::{register_histogram_vec, Encoder, HistogramVec, Registry, TextEncoder};
use std::net::{SocketAddr, TcpListener};
use std::sync::{LazyLock, OnceLock};
use std::time::Instant;

static SERVICE: OnceLock<&'static str> = OnceLock::new();

/// Name this process in the `service` label (once; later calls are ignored).
pub fn set_service_name(name: &'static str) {
    let _ = SERVICE.set(name);
}

/// The `service` label of this process ("unknown" until [`set_service_name`]).
pub(crate) fn service_name() -> &'static str {
    SERVICE.get().copied().unwrap_or("unknown")
}

pub(crate) static HTTP_REQUEST_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
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
pub(crate) async fn http_metrics(
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
    encode(&prometheus::gather())
}

fn encode(families: &[MetricFamily]) -> Result<String, prometheus::Error> {
    let mut out = Vec::new();
    TextEncoder::new().encode(families, &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

/// What `GET /metrics` shows: the default registry (every `register_*!` metric and the
/// process collector), plus the application's own registry when it has one.
#[derive(Clone, Default)]
pub struct Exposition {
    /// Metrics that belong to one application rather than the process: runtime-service's
    /// database gauges (several applications of one test binary each show their own).
    own: Option<Registry>,
}

impl Exposition {
    /// The default registry and `own`.
    pub fn with_registry(own: Registry) -> Self {
        Self { own: Some(own) }
    }

    /// Every metric shown, in the Prometheus text format.
    pub(crate) fn render(&self) -> Result<String, prometheus::Error> {
        let mut families = prometheus::gather();
        if let Some(own) = &self.own {
            families.extend(own.gather());
        }
        encode(&families)
    }

    /// `GET /metrics`: [`Exposition::render`] as `text/plain; version=0.0.4`.
    pub(crate) fn response(&self) -> HttpResponse {
        match self.render() {
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

    /// [`Exposition::route`] when `on`: the main app of an [`Endpoint::on_main`] process.
    pub fn route_if(&self, on: bool, cfg: &mut web::ServiceConfig) {
        if on {
            self.route(cfg);
        }
    }

    /// Register `GET /metrics` in `cfg`.
    pub(crate) fn route(&self, cfg: &mut web::ServiceConfig) {
        let exposition = self.clone();
        cfg.route(
            "/metrics",
            web::get().to(move || {
                let exposition = exposition.clone();
                async move { exposition.response() }
            }),
        );
    }
}

/// `METRICS_ADDR`: where `/metrics` is served on its own (`0.0.0.0:9464`), `None` when unset
/// (then on the process's HTTP address). A value that is not an address and port is an error.
pub(crate) fn addr_from_env() -> Result<Option<SocketAddr>, String> {
    parse_addr(std::env::var("METRICS_ADDR").ok().as_deref())
}

fn parse_addr(value: Option<&str>) -> Result<Option<SocketAddr>, String> {
    match value {
        Some(v) if !v.trim().is_empty() => v.trim().parse().map(Some).map_err(|_| {
            format!("environment variable METRICS_ADDR={v:?} is not an address and port (e.g. 0.0.0.0:9464)")
        }),
        _ => Ok(None),
    }
}

/// Where `GET /metrics` is answered.
#[derive(Debug)]
pub enum Endpoint {
    /// On the process's HTTP address, beside its other routes (`METRICS_ADDR` unset).
    Main,
    /// On this listener only (`METRICS_ADDR`); the HTTP address answers 404 for it.
    Own(TcpListener),
}

impl Endpoint {
    /// [`Endpoint::Own`] bound to `addr`, or [`Endpoint::Main`] when there is none.
    pub fn bind(addr: Option<SocketAddr>) -> std::io::Result<Self> {
        match addr {
            None => Ok(Endpoint::Main),
            Some(addr) => TcpListener::bind(addr).map(Endpoint::Own).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot bind METRICS_ADDR {addr}: {e}"))
            }),
        }
    }

    /// Whether the process's HTTP server answers `/metrics`.
    pub fn on_main(&self) -> bool {
        matches!(self, Endpoint::Main)
    }

    /// The server of [`Endpoint::Own`] (none for [`Endpoint::Main`]): `GET /metrics` and a
    /// 404 for everything else, one worker thread, no signal handling of its own (the process
    /// stops it after its main server, see [`MetricsServer::run_beside`], or by exiting).
    pub fn serve(self, exposition: Exposition) -> std::io::Result<MetricsServer> {
        let Endpoint::Own(listener) = self else {
            return Ok(MetricsServer::default());
        };
        let addr = listener.local_addr()?;
        log::info!("metrics on {addr} (METRICS_ADDR)");
        let server = HttpServer::new(move || {
            App::new()
                .configure(|cfg| exposition.route(cfg))
                .default_service(web::to(crate::http::route_not_found))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .shutdown_timeout(1)
        .run();
        Ok(MetricsServer {
            server: Some(server),
            port: Some(addr.port()),
        })
    }
}

/// The metrics server of its own of a process ([`Endpoint::serve`]), or none.
#[derive(Default)]
pub struct MetricsServer {
    server: Option<Server>,
    port: Option<u16>,
}

impl MetricsServer {
    /// Its port, when there is one.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// Run `main` until it stops, with this server beside it; it stops after the main one,
    /// so a draining process can still be scraped.
    pub async fn run_beside(self, main: Server) -> std::io::Result<()> {
        let Some(metrics) = self.server else {
            return main.await;
        };
        let handle = metrics.handle();
        let beside = tokio::spawn(metrics);
        let result = main.await;
        handle.stop(true).await;
        let _ = beside.await;
        result
    }
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
    fn metrics_addr_is_an_address_and_port_or_unset() {
        assert_eq!(parse_addr(None), Ok(None));
        assert_eq!(parse_addr(Some(" ")), Ok(None));
        assert_eq!(
            parse_addr(Some("0.0.0.0:9464")),
            Ok(Some("0.0.0.0:9464".parse().unwrap()))
        );
        for bad in [":9464", "0.0.0.0", "metrics:9464"] {
            let err = parse_addr(Some(bad)).unwrap_err();
            assert!(err.contains("METRICS_ADDR"), "{err}");
        }
    }

    #[test]
    fn an_exposition_shows_the_default_registry_and_its_own() {
        let own = Registry::new();
        let counter = prometheus::IntCounter::new("thygon_test_own_total", "test").unwrap();
        own.register(Box::new(counter.clone())).unwrap();
        counter.inc();
        let text = Exposition::with_registry(own).render().unwrap();
        assert_eq!(sample(&text, "thygon_test_own_total", ""), Some(1.0));
        assert!(sample(&text, "process_resident_memory_bytes", "").is_some());
        let default_only = Exposition::default().render().unwrap();
        assert!(!default_only.contains("thygon_test_own_total"));
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
