//! Lines logged while the shared HTTP edge serves a request carry its request id, in both
//! log formats. Its own test binary: it installs the process's logger.

use actix_web::{test, web, HttpResponse};
use shared_models::auth::Authenticator;
use shared_models::config::{logger_builder, LogFormat};
use std::io::Write;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn handler() -> HttpResponse {
    log::info!("inside the handler");
    HttpResponse::Ok().finish()
}

#[actix_web::test]
async fn a_line_logged_by_a_handler_carries_the_request_id() {
    let capture = Capture::default();
    logger_builder(LogFormat::Text)
        .target(env_logger::Target::Pipe(Box::new(capture.clone())))
        .write_style(env_logger::WriteStyle::Never)
        .filter_level(log::LevelFilter::Info)
        .try_init()
        .expect("the only logger of this test binary");
    // Never connects: /healthz is public, so no key is looked up.
    let pool = shared_models::db::pool("postgres://nobody@127.0.0.1:1/none", 1);
    let auth = web::Data::new(Authenticator::new(pool, &thygon_testkit::auth_config()));
    let app = test::init_service(
        shared_models::http::app(auth).route("/healthz", web::get().to(handler)),
    )
    .await;

    for id in ["req_given_by_the_caller", "req_another_one"] {
        let req = test::TestRequest::get()
            .uri("/healthz")
            .insert_header(("x-request-id", id))
            .to_request();
        assert_eq!(test::call_service(&app, req).await.status(), 200);
    }
    log::info!("outside any request");

    let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let handled: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("inside the handler"))
        .collect();
    assert_eq!(handled.len(), 2, "{text}");
    assert!(handled[0].ends_with("inside the handler req=req_given_by_the_caller"));
    assert!(handled[1].ends_with("inside the handler req=req_another_one"));
    assert!(
        lines.iter().any(|l| l.ends_with("] outside any request")),
        "{text}"
    );
}
