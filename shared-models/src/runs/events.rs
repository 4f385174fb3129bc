//! A run's event stream (`run_events`): transitions and log lines, appended in order.

use crate::models::NewRunEvent;
use crate::prepared::{column, prepared, Bound, Prepared};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
use diesel::sql_types::{Array, Nullable, Text, Timestamptz};

/// The `INSERT` of events whose columns are the arrays `$1` to `$8` (see [`with_events`]), in
/// their order: for statements that write something else first in a CTE.
#[macro_export]
macro_rules! insert_events_sql {
    () => {
        "INSERT INTO run_events (run_id, at, kind, step, from_status, to_status, level, message)
         SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[],
                              $5::text[], $6::text[], $7::text[], $8::text[])"
    };
}

/// The statement `sql` with `events` bound as its `$1` to `$8`, one array per column of
/// `run_events` (run, at, kind, step, from and to status, level, message); bind the
/// statement's other values after them (`$9`, ...).
pub fn with_events<'a>(sql: &'static str, events: &'a [NewRunEvent]) -> EventsBound<'a> {
    prepared(sql)
        .bind::<Array<Text>, _>(column(events, |e| e.run_id.as_str()))
        .bind::<Array<Timestamptz>, _>(column(events, |e| e.at))
        .bind::<Array<Text>, _>(column(events, |e| e.kind.as_str()))
        .bind::<Array<Nullable<Text>>, _>(column(events, |e| e.step.as_deref()))
        .bind::<Array<Nullable<Text>>, _>(column(events, |e| e.from_status.as_deref()))
        .bind::<Array<Nullable<Text>>, _>(column(events, |e| e.to_status.as_deref()))
        .bind::<Array<Nullable<Text>>, _>(column(events, |e| e.level.as_deref()))
        .bind::<Array<Nullable<Text>>, _>(column(events, |e| e.message.as_deref()))
}

type Texts<'a> = Vec<&'a str>;
type MaybeTexts<'a> = Vec<Option<&'a str>>;
type MaybeText = Array<Nullable<Text>>;

/// What [`with_events`] gives: a statement with the eight event arrays bound.
pub type EventsBound<'a> = Bound<
    Bound<
        Bound<
            Bound<
                Bound<
                    Bound<
                        Bound<
                            Bound<Prepared, Texts<'a>, Array<Text>>,
                            Vec<DateTime<Utc>>,
                            Array<Timestamptz>,
                        >,
                        Texts<'a>,
                        Array<Text>,
                    >,
                    MaybeTexts<'a>,
                    MaybeText,
                >,
                MaybeTexts<'a>,
                MaybeText,
            >,
            MaybeTexts<'a>,
            MaybeText,
        >,
        MaybeTexts<'a>,
        MaybeText,
    >,
    MaybeTexts<'a>,
    MaybeText,
>;

/// Append events to their runs' streams, in the order given, in one statement of fixed text
/// (prepared once per connection, whatever the number of events).
pub fn insert_events(conn: &mut PgConnection, events: &[NewRunEvent]) -> Result<(), Error> {
    if events.is_empty() {
        return Ok(());
    }
    // `unnest` of several arrays yields their rows in order, so ids (the stream's order)
    // are given in the order of `events`.
    with_events(insert_events_sql!(), events)
        .execute(conn)
        .map(|_| ())
}
