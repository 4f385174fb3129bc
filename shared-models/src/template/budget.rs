//! What one render may spend: fuel and output bytes.

use minijinja::{Environment, UndefinedBehavior};
use std::sync::OnceLock;

/// What one render may spend: a tenant's template must never wedge or exhaust the process
/// that renders it (issue 13). Set once per process ([`set_limits`]); [`Limits::default`]
/// otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// MiniJinja instructions one template (or condition) may execute (`TEMPLATE_FUEL`).
    pub fuel: u64,
    /// Bytes one render may produce: a template's text, a sole expression's JSON, all the
    /// strings of a templated JSON value together (`TEMPLATE_MAX_OUTPUT_BYTES`).
    pub max_output_bytes: usize,
}

/// `TEMPLATE_FUEL` when unset. Measured on the dev machine (debug build, the slowest case):
/// the nested `range(100000)` loops of issue 13 use up 1,000,000 units in about 0.23 s, and
/// a 1,000-iteration loop that prints renders in under 1 ms; a legitimate template (a few
/// dozen tags, a loop over a step's list of some thousands) spends far less.
pub const DEFAULT_TEMPLATE_FUEL: u64 = 1_000_000;
/// `TEMPLATE_MAX_OUTPUT_BYTES` when unset (1 MiB).
pub const DEFAULT_TEMPLATE_MAX_OUTPUT_BYTES: usize = 1024 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: DEFAULT_TEMPLATE_FUEL,
            max_output_bytes: DEFAULT_TEMPLATE_MAX_OUTPUT_BYTES,
        }
    }
}

static LIMITS: OnceLock<Limits> = OnceLock::new();

/// Set this process's limits (the worker does it once at start, from its settings). The
/// first call wins; returns false when limits were already set (to other values or not).
pub fn set_limits(limits: Limits) -> bool {
    LIMITS.set(limits).is_ok()
}

/// This process's limits: those set, or the defaults.
pub fn limits() -> Limits {
    LIMITS.get().copied().unwrap_or_default()
}

pub(super) fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(limits().fuel));
    env
}

pub(super) fn too_large(limits: Limits) -> String {
    format!(
        "template output is larger than TEMPLATE_MAX_OUTPUT_BYTES ({} bytes)",
        limits.max_output_bytes
    )
}

/// A writer that keeps what it is given up to a number of bytes and fails past it, so a
/// template that prints more stops there instead of building its whole output.
pub(super) struct Capped {
    pub(super) out: Vec<u8>,
    pub(super) left: usize,
    /// Set once a write went over: the render's error is the cap's.
    pub(super) over: bool,
    /// Only count (a sole expression's JSON is measured, not kept).
    keep: bool,
}

impl Capped {
    pub(super) fn new(left: usize, keep: bool) -> Self {
        Self {
            out: Vec::new(),
            left,
            over: false,
            keep,
        }
    }
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() > self.left {
            self.over = true;
            return Err(std::io::Error::other("template output cap"));
        }
        self.left -= buf.len();
        if self.keep {
            self.out.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
