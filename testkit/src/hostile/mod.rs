//! Hostile-request testing shared by both services' API tests: proptest strategies for
//! malformed and adversarial requests, the invariant every answer must keep (an envelope
//! with a contract error code, never a 5xx), and a harness that sends the cases from a child
//! process so a request that kills the service is reported with the request.
//!
//! Cases are drawn from a `TestRunner` with a fixed seed per case index, so every run sends
//! the same cases (`HOSTILE_SEED=<n>` explores others).
#![allow(clippy::type_complexity)]

mod bodies;
mod harness;
mod strings;

pub use bodies::*;
pub use harness::*;
pub use strings::*;

/// How many requests one run sends.
pub const CASES: usize = 3000;

pub const CODES: &[&str] = &[
    "INVALID_JSON",
    "VALIDATION_ERROR",
    "UNAUTHORIZED",
    "FORBIDDEN",
    "NOT_FOUND",
    "CONFLICT",
    "METHOD_NOT_ALLOWED",
    "PAYLOAD_TOO_LARGE",
    "UNSUPPORTED_MEDIA_TYPE",
    "RATE_LIMITED",
    "QUOTA_EXCEEDED",
    "UNAVAILABLE",
    "INTERNAL",
];

/// A placeholder leaf that is swapped for a number literal serde_json cannot hold.
pub const HUGE: &str = "__HUGE_NUMBER__";
pub const HUGE_LITERALS: &[&str] = &[
    "1e400",
    "-1e400",
    "123456789012345678901234567890123456789",
    "1E999999999",
    "-0",
    "0.000000000000000000000000000000000000000000000001e-400",
];

#[derive(Debug, Clone)]
pub struct Case {
    pub method: String,
    pub path: String,
    pub content_type: Option<String>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Case {
    pub fn describe(&self) -> String {
        let shown = &self.body[..self.body.len().min(300)];
        format!(
            "{} {} (path {} bytes)\n  content-type: {:?}\n  headers: {:?}\n  body ({} bytes), first 300: {:?}",
            self.method,
            truncate(&self.path, 600),
            self.path.len(),
            self.content_type,
            self.headers
                .iter()
                .map(|(k, v)| (k.as_str(), String::from_utf8_lossy(&v[..v.len().min(80)])))
                .collect::<Vec<_>>(),
            self.body.len(),
            String::from_utf8_lossy(shown),
        )
    }
}

pub fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}
