//! `GET /workflows/{id}/versions` and `GET /workflows/{id}/versions/{n}`: path and query
//! parsing. A workflow's versions are numbered 1, 2, ... and never renumbered, so the version
//! number alone is the sort key and the cursor.

use shared_models::body::Errors;
use shared_models::envelope::{ApiError, FieldError};
use shared_models::http::Query;
use shared_models::pagination;

/// `GET /workflows/{id}/versions` parameters (newest first).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ListVersions {
    pub limit: i64,
    /// The version of the last item of the previous page; the next page starts below it.
    pub before: Option<i32>,
}

impl TryFrom<Query> for ListVersions {
    type Error = ApiError;

    fn try_from(mut q: Query) -> Result<Self, ApiError> {
        let mut errors = Errors::new();
        let limit = q.limit(&mut errors);
        let before = q.get("cursor").and_then(|c| match decode_cursor(c) {
            Some(version) => Some(version),
            None => {
                errors.push(FieldError::new(
                    "cursor",
                    "is not a cursor this API returned",
                ));
                None
            }
        });
        q.finish(errors)?;
        Ok(ListVersions { limit, before })
    }
}

pub(crate) fn encode_cursor(version: i32) -> String {
    pagination::encode_cursor(&format!("v{version}"))
}

fn decode_cursor(cursor: &str) -> Option<i32> {
    let key = pagination::decode_cursor(cursor).ok()?;
    parse_version(key.strip_prefix('v')?)
}

/// A version number from a path: a positive whole number written plainly (`3`, not `03`,
/// `+3` or `3.0`). Anything else cannot name a version, so it is simply not found.
pub(crate) fn parse_version(raw: &str) -> Option<i32> {
    let plain = !raw.is_empty() && !raw.starts_with('0') && raw.bytes().all(|b| b.is_ascii_digit());
    plain.then(|| raw.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_positive_numbers_name_a_version() {
        assert_eq!(parse_version("1"), Some(1));
        assert_eq!(parse_version("42"), Some(42));
        for bad in ["", "0", "01", "+1", "-1", "1.0", "x", "99999999999"] {
            assert_eq!(parse_version(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn cursors_round_trip_and_refuse_workflow_cursors() {
        assert_eq!(decode_cursor(&encode_cursor(7)), Some(7));
        let workflow_cursor = crate::domain::encode_cursor(&chrono::Utc::now(), "wf_a");
        assert_eq!(decode_cursor(&workflow_cursor), None);
        assert_eq!(decode_cursor("garbage!"), None);
    }
}
