//! The dashboard at `/ui/`: static pages compiled into the binary (no CDN, no external
//! fonts: they work offline). They need no key to load; they ask for one, keep it in the
//! browser's localStorage, and send it as `Authorization: Bearer` with their data calls.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

/// Every file of the dashboard: (name, content type, body).
const FILES: [(&str, &str, &str); 5] = [
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../ui/index.html"),
    ),
    (
        "run.html",
        "text/html; charset=utf-8",
        include_str!("../../ui/run.html"),
    ),
    (
        "queues.html",
        "text/html; charset=utf-8",
        include_str!("../../ui/queues.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../ui/style.css"),
    ),
];

/// Only this origin: scripts, styles and data calls; nothing from elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn file(name: &str) -> Option<HttpResponse> {
    let (_, content_type, body) = FILES.iter().find(|(n, _, _)| *n == name)?;
    Some(
        HttpResponse::Ok()
            .content_type(*content_type)
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
            .insert_header((header::REFERRER_POLICY, "no-referrer"))
            .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
            .body(*body),
    )
}

/// `GET /ui`: to `/ui/`, so the pages' relative links resolve.
pub async fn root() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, "/ui/"))
        .finish()
}

/// `GET /ui/`: the runs list.
pub async fn index() -> HttpResponse {
    file("index.html").unwrap_or_else(|| HttpResponse::NotFound().finish())
}

/// `GET /ui/{file}`: a dashboard file, or the envelope 404.
pub async fn asset(req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    match file(&path) {
        Some(response) => response,
        None => shared_models::http::route_not_found(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_loads_only_local_assets() {
        for (name, _, body) in FILES {
            // The one URL allowed is the SVG namespace, which is a name, not a fetch.
            let body = body.replace("http://www.w3.org/2000/svg", "");
            assert!(!body.contains("http://"), "{name} names an external URL");
            assert!(!body.contains("https://"), "{name} names an external URL");
            assert!(!body.contains("//cdn"), "{name} names a CDN");
        }
    }
}
