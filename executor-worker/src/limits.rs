//! Bounded work (issue 13, "Hostile tenants"): what one step or one run may spend, so that a
//! tenant's definition can fail its own step but never wedge, crash or starve a worker.
//! Every limit is a setting; going over it fails the one step (or run) with an error that
//! names the setting, and is never retried.

use serde_json::Value;
use shared_models::config::{env_parse, env_seconds};
use shared_models::template;
use std::time::Duration;

/// `TEMPLATE_DEADLINE_SECONDS` when unset.
pub const DEFAULT_TEMPLATE_DEADLINE: Duration = Duration::from_secs(2);
/// `STEP_OUTPUT_MAX_BYTES` when unset (1 MiB).
pub const DEFAULT_STEP_OUTPUT_MAX_BYTES: usize = 1024 * 1024;
/// `RUN_OUTPUT_MAX_BYTES` when unset (4 MiB).
pub const DEFAULT_RUN_OUTPUT_MAX_BYTES: usize = 4 * 1024 * 1024;
/// `MAX_LEASE_TAKEOVERS` when unset.
pub const DEFAULT_MAX_LEASE_TAKEOVERS: i32 = 3;
/// `MAX_STEPS_IN_FLIGHT_PER_RUN` when unset.
pub const DEFAULT_MAX_STEPS_IN_FLIGHT_PER_RUN: usize = 32;

/// `AGENT_WAIT_IN_SLOT_SECONDS` when unset.
pub const DEFAULT_WAIT_IN_SLOT: Duration = Duration::from_secs(2);
/// `AGENT_RATE_WINDOW_SECONDS` when unset: the minute of `requestsPerMinute`.
pub const DEFAULT_RATE_WINDOW: Duration = Duration::from_secs(60);

/// The worker's limits on one step and one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkLimits {
    /// How long a step waits for one render on the blocking pool (`TEMPLATE_DEADLINE_SECONDS`):
    /// past it the step fails; the fuel stops the render itself soon after.
    pub template_deadline: Duration,
    /// A step's output, as JSON (`STEP_OUTPUT_MAX_BYTES`).
    pub step_output_max_bytes: usize,
    /// A run's output (its leaves' outputs), as JSON (`RUN_OUTPUT_MAX_BYTES`).
    pub run_output_max_bytes: usize,
    /// A run taken over this many times after its worker stopped renewing its lease is not
    /// taken over again but FAILED as a poison run (`MAX_LEASE_TAKEOVERS`).
    pub max_lease_takeovers: i32,
    /// Steps of one run executing at once in this worker (`MAX_STEPS_IN_FLIGHT_PER_RUN`);
    /// the others wait for their turn.
    pub max_steps_in_flight_per_run: usize,
    /// A step told to wait (its agent's rate limit, a provider's `Retry-After`) at most this
    /// long waits holding its worker slot; a longer wait parks its run, WAITING, until then
    /// (`AGENT_WAIT_IN_SLOT_SECONDS`).
    pub wait_in_slot: Duration,
    /// The window an agent's `rateLimit` counts in (`AGENT_RATE_WINDOW_SECONDS`): a minute,
    /// unless a test wants it shorter.
    pub rate_window: Duration,
}

impl Default for WorkLimits {
    fn default() -> Self {
        Self {
            template_deadline: DEFAULT_TEMPLATE_DEADLINE,
            step_output_max_bytes: DEFAULT_STEP_OUTPUT_MAX_BYTES,
            run_output_max_bytes: DEFAULT_RUN_OUTPUT_MAX_BYTES,
            max_lease_takeovers: DEFAULT_MAX_LEASE_TAKEOVERS,
            max_steps_in_flight_per_run: DEFAULT_MAX_STEPS_IN_FLIGHT_PER_RUN,
            wait_in_slot: DEFAULT_WAIT_IN_SLOT,
            rate_window: DEFAULT_RATE_WINDOW,
        }
    }
}

impl WorkLimits {
    /// The worker's limits and the templates' ([`template::Limits`]) from the environment.
    pub fn from_env() -> Result<(Self, template::Limits), String> {
        let positive = |name: &str, n: usize| {
            if n == 0 {
                Err(format!("{name} must be at least 1"))
            } else {
                Ok(n)
            }
        };
        let templates = template::Limits {
            fuel: positive(
                "TEMPLATE_FUEL",
                env_parse("TEMPLATE_FUEL", template::DEFAULT_TEMPLATE_FUEL as usize)?,
            )? as u64,
            max_output_bytes: positive(
                "TEMPLATE_MAX_OUTPUT_BYTES",
                env_parse(
                    "TEMPLATE_MAX_OUTPUT_BYTES",
                    template::DEFAULT_TEMPLATE_MAX_OUTPUT_BYTES,
                )?,
            )?,
        };
        let limits = Self {
            template_deadline: env_seconds(
                "TEMPLATE_DEADLINE_SECONDS",
                DEFAULT_TEMPLATE_DEADLINE.as_secs_f64(),
            )?,
            step_output_max_bytes: positive(
                "STEP_OUTPUT_MAX_BYTES",
                env_parse("STEP_OUTPUT_MAX_BYTES", DEFAULT_STEP_OUTPUT_MAX_BYTES)?,
            )?,
            run_output_max_bytes: positive(
                "RUN_OUTPUT_MAX_BYTES",
                env_parse("RUN_OUTPUT_MAX_BYTES", DEFAULT_RUN_OUTPUT_MAX_BYTES)?,
            )?,
            max_lease_takeovers: env_parse("MAX_LEASE_TAKEOVERS", DEFAULT_MAX_LEASE_TAKEOVERS)?
                .max(0),
            max_steps_in_flight_per_run: positive(
                "MAX_STEPS_IN_FLIGHT_PER_RUN",
                env_parse(
                    "MAX_STEPS_IN_FLIGHT_PER_RUN",
                    DEFAULT_MAX_STEPS_IN_FLIGHT_PER_RUN,
                )?,
            )?,
            wait_in_slot: env_seconds(
                "AGENT_WAIT_IN_SLOT_SECONDS",
                DEFAULT_WAIT_IN_SLOT.as_secs_f64(),
            )?,
            rate_window: env_seconds(
                "AGENT_RATE_WINDOW_SECONDS",
                DEFAULT_RATE_WINDOW.as_secs_f64(),
            )?,
        };
        if limits.rate_window.is_zero() {
            return Err("AGENT_RATE_WINDOW_SECONDS must be above 0".into());
        }
        Ok((limits, templates))
    }

    /// A step's output, before it is written: storable and within `STEP_OUTPUT_MAX_BYTES`.
    pub fn check_step_output(&self, output: &Value) -> Result<(), String> {
        storable(
            "the step's output",
            output,
            self.step_output_max_bytes,
            "STEP_OUTPUT_MAX_BYTES",
        )
    }

    /// A run's output, before it is written: storable and within `RUN_OUTPUT_MAX_BYTES`.
    pub fn check_run_output(&self, output: &Value) -> Result<(), String> {
        storable(
            "the run's output",
            output,
            self.run_output_max_bytes,
            "RUN_OUTPUT_MAX_BYTES",
        )
    }
}

/// `what` (a JSON value about to be written to a jsonb column): PostgreSQL cannot store a
/// NUL in JSON text (a string or an object key), and `value` must be at most `max` bytes as
/// JSON (`setting` names that limit).
pub fn storable(what: &str, value: &Value, max: usize, setting: &str) -> Result<(), String> {
    if has_nul(value) {
        return Err(format!(
            "{what} contains U+0000, which PostgreSQL cannot store"
        ));
    }
    let mut size = Counted { left: max };
    serde_json::to_writer(&mut size, value)
        .map_err(|_| format!("{what} is larger than {setting} ({max} bytes)"))
}

/// Whether a NUL is in any string or object key of `value`.
pub fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Text for a text column (an error, a log line): PostgreSQL refuses NUL in text, so each
/// becomes U+FFFD (the replacement character).
pub fn text_column(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s
    }
}

/// Counts bytes written and fails past `left`: the size of a value's JSON without building it.
struct Counted {
    left: usize,
}

impl std::io::Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.left = self
            .left
            .checked_sub(buf.len())
            .ok_or_else(|| std::io::Error::other("over the cap"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_in_a_string_or_a_key_is_refused_naming_postgresql() {
        let limits = WorkLimits::default();
        for v in [
            json!("a\u{0}b"),
            json!({"k": ["x", "\u{0}"]}),
            json!({"a\u{0}": 1}),
        ] {
            assert_eq!(
                limits.check_step_output(&v).unwrap_err(),
                "the step's output contains U+0000, which PostgreSQL cannot store"
            );
        }
        assert!(limits
            .check_step_output(&json!({"a": "\\u0000 spelled out"}))
            .is_ok());
    }

    #[test]
    fn outputs_over_their_cap_are_refused_naming_the_setting() {
        let limits = WorkLimits {
            step_output_max_bytes: 10,
            run_output_max_bytes: 12,
            ..WorkLimits::default()
        };
        // "12345678" is 10 bytes as JSON.
        assert!(limits.check_step_output(&json!("12345678")).is_ok());
        assert_eq!(
            limits.check_step_output(&json!("123456789")).unwrap_err(),
            "the step's output is larger than STEP_OUTPUT_MAX_BYTES (10 bytes)"
        );
        assert_eq!(
            limits
                .check_run_output(&json!({"a": "123456789"}))
                .unwrap_err(),
            "the run's output is larger than RUN_OUTPUT_MAX_BYTES (12 bytes)"
        );
    }

    #[test]
    fn text_columns_never_get_a_nul() {
        assert_eq!(text_column("a\0b".into()), "a\u{FFFD}b");
        assert_eq!(text_column("plain".into()), "plain");
    }
}
