//! `GET /usage`: what the caller's org's agent steps used and cost over a time window, in
//! total and by workflow, agent, model or day (docs/API.md "Usage").

use crate::error::RuntimeError;
use crate::routes::views::usd;
use crate::startup::AppState;
use crate::storage::usage::{self, UsageReport, UsageSums};
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use shared_models::auth::Caller;
use shared_models::db::blocking;
use shared_models::envelope::{self, ApiError, FieldError};
use shared_models::http::Query;
use shared_models::openapi::Envelope;
use shared_models::time::rfc3339;

/// The window when `from` is not given: this many days before `to`.
pub(crate) const DEFAULT_DAYS: i64 = 30;
/// The longest window, in days.
pub(crate) const MAX_DAYS: i64 = 366;

/// What the sums are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Workflow,
    Agent,
    Model,
    /// The UTC day of each turn, keys `YYYY-MM-DD`.
    Day,
}

impl GroupBy {
    const ALL: [GroupBy; 4] = [
        GroupBy::Workflow,
        GroupBy::Agent,
        GroupBy::Model,
        GroupBy::Day,
    ];

    fn as_str(self) -> &'static str {
        match self {
            GroupBy::Workflow => "workflow",
            GroupBy::Agent => "agent",
            GroupBy::Model => "model",
            GroupBy::Day => "day",
        }
    }
}

/// `GET /usage` parameters, checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UsageQuery {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub group_by: Option<GroupBy>,
}

/// `raw` as a timestamp; a bad one is added to `errors`.
fn timestamp(
    key: &'static str,
    raw: Option<&str>,
    errors: &mut Vec<FieldError>,
) -> Result<Option<DateTime<Utc>>, ()> {
    let Some(raw) = raw else { return Ok(None) };
    match DateTime::parse_from_rfc3339(raw) {
        Ok(t) => Ok(Some(t.with_timezone(&Utc))),
        Err(_) => {
            errors.push(FieldError::new(
                key,
                "must be an RFC 3339 timestamp, e.g. 2026-12-01T00:00:00Z",
            ));
            Err(())
        }
    }
}

impl UsageQuery {
    /// The parameters of `q`, with `to` defaulting to `now`.
    pub(crate) fn parse(mut q: Query, now: DateTime<Utc>) -> Result<Self, ApiError> {
        let mut errors = Vec::new();
        let from = timestamp("from", q.get("from"), &mut errors);
        let to = timestamp("to", q.get("to"), &mut errors);
        let group_by = q.get("groupBy").and_then(|g| {
            let found = GroupBy::ALL.into_iter().find(|k| k.as_str() == g);
            if found.is_none() {
                let all: Vec<_> = GroupBy::ALL.iter().map(|k| k.as_str()).collect();
                errors.push(FieldError::new(
                    "groupBy",
                    format!("must be one of: {}", all.join(", ")),
                ));
            }
            found
        });
        let window = match (from, to) {
            (Ok(from), Ok(to)) => {
                let to = to.unwrap_or(now);
                // Only a given `from` can be out of the window: the default is 30 days.
                let from = from.unwrap_or_else(|| {
                    to.checked_sub_signed(Duration::days(DEFAULT_DAYS))
                        .unwrap_or(DateTime::<Utc>::MIN_UTC)
                });
                if from >= to {
                    errors.push(FieldError::new("from", "must be before `to`"));
                } else if to - from > Duration::days(MAX_DAYS) {
                    errors.push(FieldError::new(
                        "from",
                        format!("must be at most {MAX_DAYS} days before `to`"),
                    ));
                }
                Some((from, to))
            }
            _ => None,
        };
        q.finish(errors)?;
        // No error: both parsed.
        let (from, to) = window.unwrap_or((now, now));
        Ok(UsageQuery { from, to, group_by })
    }
}

/// Tokens, cost and turns of some agent turns.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageSumView {
    /// Input tokens billed at the input price.
    input_tokens: i64,
    output_tokens: i64,
    /// Input tokens read from the provider's prompt cache.
    cached_tokens: i64,
    /// USD, from the agents' prices; summed exactly (in pico-USD) before converting.
    cost_usd: f64,
    /// How many model turns.
    turns: i64,
}

impl From<UsageSums> for UsageSumView {
    fn from(s: UsageSums) -> Self {
        UsageSumView {
            input_tokens: s.input_tokens,
            output_tokens: s.output_tokens,
            cached_tokens: s.cached_tokens,
            cost_usd: usd(s.cost_picos),
            turns: s.turns,
        }
    }
}

/// One group: its key and its sums.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageGroupView {
    /// The workflow id, agent id, model, or UTC day (`YYYY-MM-DD`).
    #[schema(example = "support-classifier")]
    key: String,
    #[serde(flatten)]
    sums: UsageSumView,
}

/// The org's usage over `[from, to)`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageReportView {
    /// The window's start (included).
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    from: DateTime<Utc>,
    /// The window's end (excluded).
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    to: DateTime<Utc>,
    /// The key of `groups`; null without `groupBy`.
    group_by: Option<GroupBy>,
    /// Every turn of the window, whatever the number of groups.
    total: UsageSumView,
    /// By key: by cost, most first, then by key; by day in day order. Empty without
    /// `groupBy`; at most 1000.
    groups: Vec<UsageGroupView>,
    /// More than 1000 groups: those past the first 1000 are left out (`total` counts them).
    truncated: bool,
}

impl UsageReportView {
    fn new(q: &UsageQuery, report: UsageReport) -> Self {
        UsageReportView {
            from: q.from,
            to: q.to,
            group_by: q.group_by,
            total: report.total.into(),
            groups: report
                .groups
                .into_iter()
                .map(|(key, sums)| UsageGroupView {
                    key,
                    sums: sums.into(),
                })
                .collect(),
            truncated: report.truncated,
        }
    }
}

/// `GET /usage`: the caller's org's usage (org key), from its agent turns.
#[utoipa::path(
    get,
    path = "/usage",
    tag = "usage",
    summary = "Tokens and cost of the org's agent steps over a time window",
    description = "Sums over the model turns of the org's agent steps whose time is in \
        `[from, to)`: in total, and by `groupBy` if given (at most 1000 groups, `truncated` \
        when there were more). `to` defaults to now, `from` to 30 days before `to`; the window \
        is at most 366 days.",
    params(
        ("from" = Option<String>, Query, format = DateTime, description = "The window's start, included (RFC 3339; default: 30 days before `to`)", example = "2026-12-01T00:00:00Z"),
        ("to" = Option<String>, Query, format = DateTime, description = "The window's end, excluded (RFC 3339; default: now)", example = "2026-12-08T00:00:00Z"),
        ("groupBy" = Option<GroupBy>, Query, description = "Group the sums by workflow id, agent id, model or UTC day"),
    ),
    responses(
        (status = 200, description = "The sums", body = Envelope<UsageReportView>),
    ),
)]
pub async fn get_usage(
    state: web::Data<AppState>,
    caller: Caller,
    query: Query,
) -> Result<HttpResponse, RuntimeError> {
    let q = UsageQuery::parse(query, shared_models::time::now())?;
    let group_by = q.group_by.map(GroupBy::as_str);
    let (from, to) = (q.from, q.to);
    let report = blocking(&state.pool, move |conn| {
        usage::usage(conn, &caller.org_id, from, to, group_by)
    })
    .await?;
    Ok(envelope::ok(UsageReportView::new(&q, report)))
}
