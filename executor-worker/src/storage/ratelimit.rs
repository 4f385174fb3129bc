//! Agents' rate limits, shared by the fleet through PostgreSQL: a sliding window of the calls
//! admitted per agent (`agent_calls`), admissions serialized per agent by a row lock
//! (`agent_rate_limits`), so that however many workers ask, no window of the limit's length
//! holds more calls (or, once they answered, more tokens) than the limit allows.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz};

/// What an admission decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The call may go; its row's id (to add its tokens to once it answered).
    Admitted(i64),
    /// The window is full for this long yet.
    FullFor(std::time::Duration),
}

#[derive(QueryableByName)]
struct Window {
    #[diesel(sql_type = BigInt)]
    calls: i64,
    #[diesel(sql_type = BigInt)]
    tokens: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    oldest: Option<DateTime<Utc>>,
}

/// Admit one call of `agent` now if the window (`window` long, ending now) holds fewer than
/// `max_calls` calls and fewer than `max_tokens` tokens; else say how long until its oldest
/// call leaves it. "Now" is PostgreSQL's clock, the one every worker shares.
pub(crate) fn admit(
    conn: &mut PgConnection,
    agent: &str,
    max_calls: Option<i64>,
    max_tokens: Option<i64>,
    window: chrono::Duration,
) -> Result<Admission, Error> {
    conn.transaction(|conn| {
        diesel::sql_query(
            "INSERT INTO agent_rate_limits (agent_id) VALUES ($1) ON CONFLICT DO NOTHING",
        )
        .bind::<Text, _>(agent)
        .execute(conn)?;
        diesel::sql_query("SELECT agent_id FROM agent_rate_limits WHERE agent_id = $1 FOR UPDATE")
            .bind::<Text, _>(agent)
            .execute(conn)?;
        #[derive(QueryableByName)]
        struct Now {
            #[diesel(sql_type = Timestamptz)]
            now: DateTime<Utc>,
        }
        let now = diesel::sql_query("SELECT clock_timestamp() AS now")
            .get_result::<Now>(conn)?
            .now;
        // A call counts for 1% longer than the window, so that the network's delays cannot
        // put one call too many into a window as the provider counts it.
        let start = now - window - window / 100;
        diesel::sql_query("DELETE FROM agent_calls WHERE agent_id = $1 AND at <= $2")
            .bind::<Text, _>(agent)
            .bind::<Timestamptz, _>(start)
            .execute(conn)?;
        let w: Window = diesel::sql_query(
            "SELECT count(*) AS calls, COALESCE(sum(tokens), 0)::int8 AS tokens, min(at) AS oldest
             FROM agent_calls WHERE agent_id = $1",
        )
        .bind::<Text, _>(agent)
        .get_result(conn)?;
        let full = max_calls.is_some_and(|max| w.calls >= max)
            || max_tokens.is_some_and(|max| w.tokens >= max);
        if full {
            // The oldest call leaves the window first; its end frees room (for tokens, at
            // least some).
            let until = w.oldest.unwrap_or(now) + window + window / 100;
            let wait = (until - now).to_std().unwrap_or_default();
            // At least a millisecond: the oldest call leaves strictly after its window.
            return Ok(Admission::FullFor(
                wait.max(std::time::Duration::from_millis(1)),
            ));
        }
        #[derive(QueryableByName)]
        struct Id {
            #[diesel(sql_type = BigInt)]
            id: i64,
        }
        let id: Id = diesel::sql_query(
            "INSERT INTO agent_calls (agent_id, at) VALUES ($1, $2) RETURNING id",
        )
        .bind::<Text, _>(agent)
        .bind::<Timestamptz, _>(now)
        .get_result(conn)?;
        Ok(Admission::Admitted(id.id))
    })
}

/// The tokens an admitted call used, once it answered.
pub(crate) fn used(conn: &mut PgConnection, call: i64, tokens: i64) -> Result<(), Error> {
    diesel::sql_query("UPDATE agent_calls SET tokens = $2 WHERE id = $1")
        .bind::<BigInt, _>(call)
        .bind::<BigInt, _>(tokens)
        .execute(conn)
        .map(|_| ())
}
