//! Requests to a service under test and what they answer: the JSON envelope, its headers,
//! and the Prometheus text of `/metrics`.

use reqwest::header::HeaderMap;
use serde_json::Value;

/// An answer whose body is JSON (every answer of the API is an envelope).
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: HeaderMap,
}

impl Reply {
    /// Read `res`; the test fails unless its body is JSON.
    pub async fn read(res: reqwest::Response) -> Reply {
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
        Reply {
            status,
            body,
            headers,
        }
    }

    /// A response header as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// `method` `address``path` with `authorization` as its Authorization header, verbatim (or
/// none at all), `headers` besides, and `body` as JSON.
pub async fn send(
    client: &reqwest::Client,
    address: &str,
    authorization: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = client.request(method.parse().expect("method"), format!("{address}{path}"));
    if let Some(value) = authorization {
        req = req.header("authorization", value);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    Reply::read(req.send().await.expect("request")).await
}

/// Assert `r` is the failure envelope `status` / `code`; `what` names the request.
pub fn assert_error(r: &Reply, status: u16, code: &str, what: &str) {
    assert_eq!(
        (
            r.status,
            r.body["success"].as_bool(),
            r.body["error"]["code"].as_str()
        ),
        (status, Some(false), Some(code)),
        "{what}: {}",
        r.body
    );
}

/// The `field`s of a failure envelope's details.
pub fn fields(body: &Value) -> Vec<String> {
    body["error"]["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|e| e["field"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `GET <address>/metrics` with no key: (status, content type, body).
pub async fn scrape(address: &str) -> (u16, String, String) {
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
