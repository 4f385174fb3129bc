//! The one timestamp format of the API: RFC 3339 UTC with milliseconds and `Z`.

use chrono::{DateTime, SecondsFormat, Utc};

pub fn format(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Database timestamps carry microseconds; the API shows milliseconds. Truncating on write
/// keeps what a client reads equal to what is stored (cursors compare exactly).
pub fn now() -> DateTime<Utc> {
    let t = Utc::now();
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// `#[serde(with = "shared_models::time::rfc3339")]`
pub mod rfc3339 {
    use chrono::{DateTime, Utc};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(t))
    }
}

/// `#[serde(with = "shared_models::time::rfc3339_opt")]`
pub mod rfc3339_opt {
    use chrono::{DateTime, Utc};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&super::format(t)),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_milliseconds_and_z() {
        let t = DateTime::parse_from_rfc3339("2026-06-16T17:15:00.123456+00:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(format(&t), "2026-06-16T17:15:00.123Z");
    }

    #[test]
    fn now_has_no_sub_millisecond_part() {
        assert_eq!(now().timestamp_subsec_micros() % 1000, 0);
    }
}
