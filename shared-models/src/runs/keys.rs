//! The outbox's dedupe keys: one place that spells each, which production writes and tests
//! compare with. A key makes a job unique (the outbox's `dedupe_key` is), and a job with a
//! key is published by the relay at once, without the request path's grace period.
//!
//! Keys of jobs queued one at a time from Rust are built by the functions here. The
//! scheduler, the lease reaper and the PENDING sweeper queue theirs in one statement over
//! many runs, so their keys are also spelt in SQL ([`wake_key_sql!`](crate::wake_key_sql),
//! [`reap_key_sql!`](crate::reap_key_sql), [`pending_key_sql!`](crate::pending_key_sql));
//! a test on PostgreSQL (`shared-models/tests/keys.rs`) keeps each SQL spelling and its
//! function here the same.

use chrono::{DateTime, Utc};

/// The job that starts child run `child_run_id` (the worker's `subworkflow` step).
pub fn child_start(child_run_id: &str) -> String {
    format!("start:{child_run_id}")
}

/// The job that wakes the parent of child run `child_run_id` once the child has ended.
pub fn child_ended(child_run_id: &str) -> String {
    format!("child-ended:{child_run_id}")
}

/// The wake-up of run `run_id` at its `wake_at` (epoch microseconds, as PostgreSQL stores it).
pub fn wake(run_id: &str, wake_at: DateTime<Utc>) -> String {
    format!("wake:{run_id}:{}", wake_at.timestamp_micros())
}

/// The lease reaper's job for run `run_id`, whose lease expired at `lease_expires_at`.
pub fn reap(run_id: &str, lease_expires_at: DateTime<Utc>) -> String {
    format!("reap:{run_id}:{}", lease_expires_at.timestamp_micros())
}

/// The PENDING sweeper's job for run `run_id`, stranded since it was queued at `queued_at`.
pub fn pending(run_id: &str, queued_at: DateTime<Utc>) -> String {
    format!("pending:{run_id}:{}", queued_at.timestamp_micros())
}

/// [`wake`] in SQL, over a row `r` of `runs`: the scheduler writes it, the PENDING sweeper
/// looks it up.
#[macro_export]
macro_rules! wake_key_sql {
    () => {
        "'wake:' || r.id || ':' || (extract(epoch FROM r.wake_at) * 1000000)::bigint"
    };
}

/// [`reap`] in SQL, over a row `r` of `runs`: the lease reaper writes it.
#[macro_export]
macro_rules! reap_key_sql {
    () => {
        "'reap:' || r.id || ':' || (extract(epoch FROM r.lease_expires_at) * 1000000)::bigint"
    };
}

/// [`pending`] in SQL, over a row `r` of `runs`: the PENDING sweeper writes it.
#[macro_export]
macro_rules! pending_key_sql {
    () => {
        "'pending:' || r.id || ':' || (extract(epoch FROM r.queued_at) * 1000000)::bigint"
    };
}
