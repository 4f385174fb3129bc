//! Per-org quotas (docs/SECURITY.md "Quotas"): what one org may hold or do at once, so that
//! no tenant can crowd out the others.
//!
//! Each quota has a deployment-wide default, a setting every service reads from the
//! environment ([`OrgLimits::from_env`]), and may be overridden for one org through
//! `PUT /admin/orgs/{orgId}/limits` (the nullable columns of `orgs`, [`OrgLimitOverrides`]).
//! [`effective`] combines the two. Going over a quota answers 429 `QUOTA_EXCEEDED`
//! ([`QuotaExceeded`]) naming the quota's field and its value, or fails the one step that
//! went over it with the same words.

use crate::envelope::{ApiError, ErrorCode};
use crate::schema::orgs;
use diesel::prelude::*;
use serde::Serialize;
use std::sync::LazyLock;

/// The quotas of one org, in effect: its overrides where set, the defaults elsewhere.
///
/// A default of 0 (`MAX_RUNNING_PER_ORG=0`, `RATE_LIMIT_PER_SECOND=0`, ...) means no cap;
/// an override is always a positive number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrgLimits {
    /// PENDING + WAITING runs at once (`ORG_MAX_QUEUED_RUNS`).
    #[schema(example = 10000)]
    pub max_queued_runs: u32,
    /// RUNNING runs at once, across every worker (`MAX_RUNNING_PER_ORG`).
    #[schema(example = 100)]
    pub max_running_runs: u32,
    /// Runs in one run's tree of subworkflows, the root not counted
    /// (`ORG_MAX_DESCENDANTS_PER_RUN`).
    #[schema(example = 1000)]
    pub max_descendants_per_run: u32,
    /// Workflows that are not deleted (`ORG_MAX_WORKFLOWS`).
    #[schema(example = 1000)]
    pub max_workflows: u32,
    /// Versions kept per workflow; older ones no run uses are deleted (`ORG_MAX_VERSIONS_KEPT`).
    #[schema(example = 100)]
    pub max_versions_kept: u32,
    /// Open event streams per API key, per runtime-service replica (`ORG_MAX_EVENT_STREAMS`).
    #[schema(example = 20)]
    pub max_event_streams: u32,
    /// Requests per second per API key, per replica (`RATE_LIMIT_PER_SECOND`).
    #[schema(example = 100)]
    pub requests_per_second: u32,
}

/// The built-in defaults, when no setting says otherwise.
pub(crate) const BUILT_IN: OrgLimits = OrgLimits {
    max_queued_runs: 10_000,
    max_running_runs: 100,
    max_descendants_per_run: 1_000,
    max_workflows: 1_000,
    max_versions_kept: 100,
    max_event_streams: 20,
    requests_per_second: 100,
};

/// The largest value an override may take (and a sane bound for any count of rows).
pub const MAX_OVERRIDE: u32 = 1_000_000;

/// Each quota: its JSON field, its setting, and how to read it from [`OrgLimits`] and
/// [`OrgLimitOverrides`]. One table, so that a new quota cannot be half-added.
pub struct Field {
    pub json: &'static str,
    pub env: &'static str,
    pub get: fn(&OrgLimits) -> u32,
    pub set: fn(&mut OrgLimits, u32),
    pub get_override: fn(&OrgLimitOverrides) -> Option<i32>,
    pub set_override: fn(&mut OrgLimitOverrides, Option<i32>),
}

macro_rules! field {
    ($json:literal, $env:literal, $name:ident) => {
        Field {
            json: $json,
            env: $env,
            get: |l| l.$name,
            set: |l, v| l.$name = v,
            get_override: |o| o.$name,
            set_override: |o, v| o.$name = v,
        }
    };
}

pub const FIELDS: [Field; 7] = [
    field!("maxQueuedRuns", "ORG_MAX_QUEUED_RUNS", max_queued_runs),
    field!("maxRunningRuns", "MAX_RUNNING_PER_ORG", max_running_runs),
    field!(
        "maxDescendantsPerRun",
        "ORG_MAX_DESCENDANTS_PER_RUN",
        max_descendants_per_run
    ),
    field!("maxWorkflows", "ORG_MAX_WORKFLOWS", max_workflows),
    field!(
        "maxVersionsKept",
        "ORG_MAX_VERSIONS_KEPT",
        max_versions_kept
    ),
    field!(
        "maxEventStreams",
        "ORG_MAX_EVENT_STREAMS",
        max_event_streams
    ),
    field!(
        "requestsPerSecond",
        "RATE_LIMIT_PER_SECOND",
        requests_per_second
    ),
];

impl OrgLimits {
    /// The defaults from the environment (each setting of [`FIELDS`], else [`BUILT_IN`]); a
    /// value that is not a non-negative integer is an error naming the setting.
    pub fn from_env() -> Result<Self, String> {
        let mut limits = BUILT_IN;
        for f in &FIELDS {
            let value = crate::config::env_parse(f.env, (f.get)(&BUILT_IN))?;
            (f.set)(&mut limits, value);
        }
        Ok(limits)
    }
}

static DEFAULTS: LazyLock<OrgLimits> = LazyLock::new(|| {
    OrgLimits::from_env().unwrap_or_else(|e| {
        // Each service's settings check the same variables at start and refuse to run.
        log::error!("{e}; using the built-in quota defaults");
        BUILT_IN
    })
});

/// The process's defaults, read from the environment once. Each service checks them in its
/// settings ([`OrgLimits::from_env`]) so that a bad value stops it at start.
pub fn defaults() -> OrgLimits {
    *DEFAULTS
}

/// An org's overrides as stored: `None` is the default. As a changeset it writes every
/// column, `None` as NULL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Queryable, Selectable, AsChangeset)]
#[diesel(table_name = orgs, check_for_backend(diesel::pg::Pg), treat_none_as_null = true)]
pub struct OrgLimitOverrides {
    pub max_queued_runs: Option<i32>,
    pub max_running_runs: Option<i32>,
    pub max_descendants_per_run: Option<i32>,
    pub max_workflows: Option<i32>,
    pub max_versions_kept: Option<i32>,
    pub max_event_streams: Option<i32>,
    pub requests_per_second: Option<i32>,
}

/// The limits in effect: each override where set (and positive), the default elsewhere.
pub fn effective(defaults: &OrgLimits, overrides: &OrgLimitOverrides) -> OrgLimits {
    let mut limits = *defaults;
    for f in &FIELDS {
        if let Some(v) = (f.get_override)(overrides).and_then(|v| u32::try_from(v).ok()) {
            if v > 0 {
                (f.set)(&mut limits, v);
            }
        }
    }
    limits
}

/// An org's overrides; `None` when there is no such org.
pub fn load_overrides(
    conn: &mut PgConnection,
    org_id: &str,
) -> Result<Option<OrgLimitOverrides>, diesel::result::Error> {
    orgs::table
        .find(org_id)
        .select(OrgLimitOverrides::as_select())
        .first(conn)
        .optional()
}

/// An org's limits in effect over `defaults` (an unknown org has the defaults).
pub fn load_effective(
    conn: &mut PgConnection,
    org_id: &str,
    defaults: &OrgLimits,
) -> Result<OrgLimits, diesel::result::Error> {
    Ok(effective(
        defaults,
        &load_overrides(conn, org_id)?.unwrap_or_default(),
    ))
}

/// A quota was reached: what the 429 (or the failed step) says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} ({limit}) reached: {what}")]
pub struct QuotaExceeded {
    /// The quota's JSON field, e.g. `maxQueuedRuns`.
    pub field: &'static str,
    pub limit: u32,
    /// What is at the limit, e.g. `3 runs are PENDING or WAITING`.
    pub what: String,
}

impl QuotaExceeded {
    pub fn new(field: &'static str, limit: u32, what: impl Into<String>) -> Self {
        Self {
            field,
            limit,
            what: what.into(),
        }
    }

    /// `maxQueuedRuns (3) reached: 3 runs are PENDING or WAITING`
    pub fn queued_runs(limit: u32, queued: i64) -> Self {
        Self::new(
            "maxQueuedRuns",
            limit,
            format!("{queued} runs are PENDING or WAITING"),
        )
    }
}

impl From<QuotaExceeded> for ApiError {
    fn from(e: QuotaExceeded) -> Self {
        ApiError::new(ErrorCode::QuotaExceeded, e.to_string())
    }
}

/// `SELECT count(*) FROM (SELECT 1 ... LIMIT $2)`: an org's PENDING and WAITING runs,
/// counted no further than `bound` (an index scan of `runs_by_status` that stops there).
pub(crate) const COUNT_QUEUED: &str = "SELECT count(*) AS n FROM (
         SELECT 1 FROM runs WHERE org_id = $1 AND status IN ('PENDING', 'WAITING') LIMIT $2
     ) q";

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// The org's PENDING + WAITING runs, counted up to `bound` at most.
pub fn count_queued(
    conn: &mut PgConnection,
    org_id: &str,
    bound: u32,
) -> Result<i64, diesel::result::Error> {
    use diesel::sql_types::{BigInt, Text};
    crate::prepared::prepared(COUNT_QUEUED)
        .bind::<Text, _>(org_id)
        .bind::<BigInt, _>(i64::from(bound))
        .get_result::<Count>(conn)
        .map(|c| c.n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_defaults_field_by_field() {
        let overrides = OrgLimitOverrides {
            max_queued_runs: Some(3),
            requests_per_second: Some(7),
            ..Default::default()
        };
        let limits = effective(&BUILT_IN, &overrides);
        assert_eq!(limits.max_queued_runs, 3);
        assert_eq!(limits.requests_per_second, 7);
        assert_eq!(limits.max_workflows, BUILT_IN.max_workflows);
        assert_eq!(
            effective(&BUILT_IN, &OrgLimitOverrides::default()),
            BUILT_IN
        );
    }

    #[test]
    fn every_field_is_in_the_table_once_with_its_setting() {
        let json: std::collections::HashSet<_> = FIELDS.iter().map(|f| f.json).collect();
        assert_eq!(json.len(), 7);
        let v = serde_json::to_value(BUILT_IN).unwrap();
        for f in &FIELDS {
            assert_eq!(
                v[f.json],
                serde_json::json!((f.get)(&BUILT_IN)),
                "{}",
                f.json
            );
        }
        assert_eq!(BUILT_IN.max_descendants_per_run, 1000);
    }

    #[test]
    fn the_error_names_the_quota_and_its_value() {
        let e = QuotaExceeded::queued_runs(3, 3);
        assert_eq!(
            e.to_string(),
            "maxQueuedRuns (3) reached: 3 runs are PENDING or WAITING"
        );
        let api = ApiError::from(e);
        assert_eq!(api.code, ErrorCode::QuotaExceeded);
        assert_eq!(api.code.status().as_u16(), 429);
    }
}
