//! `GET /usage`: an org's model usage summed over its agent turns (`agent_turns`) in a time
//! window, in total and by one key.
//!
//! One statement: a range scan of `agent_turns_org_time` (org, then `created_at`), grouped by
//! the key and by nothing (the total, exact whatever the number of groups), at most
//! [`MAX_GROUPS`] groups (one more tells that there were more). Sums are taken in SQL as
//! `numeric` and clamped into `bigint`; costs stay in pico-USD.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamptz};

/// The most groups one answer lists; more are cut (`truncated`), the total still counts them.
pub const MAX_GROUPS: usize = 1000;

/// The statement: `$1` the org, `[$2, $3)` the window, `$4` the key (`workflow`, `agent`,
/// `model`, `day` or anything else for none), `$5` how many rows (the total, then groups).
/// The total comes first; then groups by cost, most first, then by key; `day` by key.
pub const USAGE_SUMS: &str = "\
SELECT GROUPING(key) = 1 AS total, key,
       GREATEST(LEAST(COALESCE(sum(input_tokens), 0), 9223372036854775807), 0)::int8 AS input_tokens,
       GREATEST(LEAST(COALESCE(sum(output_tokens), 0), 9223372036854775807), 0)::int8 AS output_tokens,
       GREATEST(LEAST(COALESCE(sum(cached_tokens), 0), 9223372036854775807), 0)::int8 AS cached_tokens,
       GREATEST(LEAST(COALESCE(sum(cost_picos), 0), 9223372036854775807), 0)::int8 AS cost_picos,
       count(*) AS turns
FROM (
    SELECT CASE $4
               WHEN 'workflow' THEN workflow_id
               WHEN 'agent' THEN agent_id
               WHEN 'model' THEN model
               WHEN 'day' THEN to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')
           END AS key,
           input_tokens, output_tokens, cached_tokens, cost_picos
    FROM agent_turns
    WHERE org_id = $1 AND created_at >= $2 AND created_at < $3
) turns
GROUP BY GROUPING SETS ((key), ())
ORDER BY GROUPING(key) DESC,
         CASE WHEN $4 = 'day' THEN NULL ELSE sum(cost_picos) END DESC NULLS LAST,
         key
LIMIT $5";

/// Sums of some turns: tokens, cost in pico-USD, and how many turns.
#[derive(QueryableByName, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageSums {
    #[diesel(sql_type = BigInt)]
    pub input_tokens: i64,
    #[diesel(sql_type = BigInt)]
    pub output_tokens: i64,
    #[diesel(sql_type = BigInt)]
    pub cached_tokens: i64,
    #[diesel(sql_type = BigInt)]
    pub cost_picos: i64,
    #[diesel(sql_type = BigInt)]
    pub turns: i64,
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Bool)]
    total: bool,
    #[diesel(sql_type = Nullable<Text>)]
    key: Option<String>,
    #[diesel(embed)]
    sums: UsageSums,
}

/// The answer of [`usage`].
#[derive(Debug, Default)]
pub struct UsageReport {
    pub total: UsageSums,
    /// By key, in the answer's order; empty without a key.
    pub groups: Vec<(String, UsageSums)>,
    /// More than [`MAX_GROUPS`] groups: the rest were left out.
    pub truncated: bool,
}

/// The usage of `org_id` in `[from, to)`, by `group_by` (`workflow`, `agent`, `model`, `day`)
/// or in total only.
pub fn usage(
    conn: &mut PgConnection,
    org_id: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    group_by: Option<&str>,
) -> Result<UsageReport, Error> {
    // The total, then one group more than are shown (to know whether there were more).
    let rows = if group_by.is_some() {
        MAX_GROUPS + 2
    } else {
        1
    };
    let found: Vec<Row> = diesel::sql_query(USAGE_SUMS)
        .bind::<Text, _>(org_id)
        .bind::<Timestamptz, _>(from)
        .bind::<Timestamptz, _>(to)
        .bind::<Text, _>(group_by.unwrap_or(""))
        .bind::<BigInt, _>(rows as i64)
        .load(conn)?;
    let mut report = UsageReport::default();
    for row in found {
        if row.total {
            report.total = row.sums;
        } else if report.groups.len() == MAX_GROUPS {
            report.truncated = true;
        } else {
            report.groups.push((row.key.unwrap_or_default(), row.sums));
        }
    }
    Ok(report)
}
