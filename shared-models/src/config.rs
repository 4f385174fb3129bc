//! Twelve-factor configuration: every setting is an environment variable with a local default.

use std::time::Duration;

pub const DEFAULT_DATABASE_URL: &str =
    "postgres://thygon:thygon@127.0.0.1:5432/thygon?sslmode=disable";
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The value of `name`, or `default` when it is unset or empty.
pub fn env_or(name: &str, default: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => default.to_string(),
    }
}

/// A parsed variable, or `default`; a value that does not parse is an error naming the variable,
/// so a typo in deployment config stops the process instead of being ignored.
pub fn env_parse<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| format!("environment variable {name}={v:?} is not valid")),
        _ => Ok(default),
    }
}

pub fn env_seconds(name: &str, default_secs: f64) -> Result<Duration, String> {
    let secs: f64 = env_parse(name, default_secs)?;
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!(
            "environment variable {name} must be a non-negative number of seconds"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Settings every process shares: where the database and the broker are, which queue.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    pub database_url: String,
    pub amqp_url: String,
    /// Prefix of every queue and exchange name; tests give each test its own.
    pub queue_prefix: String,
    pub db_pool_size: u32,
    /// Where `/metrics` is served on its own (`METRICS_ADDR`); `None`: on the HTTP address.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl CommonConfig {
    pub fn from_env() -> Result<Self, String> {
        Ok(Self {
            database_url: env_or("DATABASE_URL", DEFAULT_DATABASE_URL),
            amqp_url: env_or("AMQP_URL", DEFAULT_AMQP_URL),
            queue_prefix: env_or("QUEUE_PREFIX", crate::queue::DEFAULT_PREFIX),
            db_pool_size: env_parse("DB_POOL_SIZE", 10)?,
            metrics_addr: crate::metrics::addr_from_env()?,
        })
    }
}

/// How log lines are written (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// env_logger's line, `[ts LEVEL target] msg`, then ` req=<id> run=<id>` when known.
    Text,
    /// One JSON object a line: `ts` (RFC 3339, ms), `level`, `target`, `msg`, and
    /// `request_id` / `run_id` when known.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(()),
        }
    }
}

/// The logger every binary uses, in `format`, filtered by `RUST_LOG` when set, else `info`
/// (without lapin's span chatter). Tests give it another target to read its lines.
pub fn logger_builder(format: LogFormat) -> env_logger::Builder {
    let mut builder = env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,tracing::span=warn"),
    );
    match format {
        LogFormat::Text => builder.format(write_text),
        LogFormat::Json => builder.format(write_json),
    };
    builder
}

/// Logging for every binary: [`logger_builder`] in the format `LOG_FORMAT` names (`text`,
/// the default, or `json`). An unknown format is reported and falls back to text.
pub fn init_logging() {
    let format = env_parse("LOG_FORMAT", LogFormat::Text);
    let _ = logger_builder(*format.as_ref().unwrap_or(&LogFormat::Text)).try_init();
    if let Err(e) = format {
        log::warn!("{e} (expected text or json); logging as text");
    }
}

fn write_text(buf: &mut env_logger::fmt::Formatter, record: &log::Record) -> std::io::Result<()> {
    use std::io::Write;
    let style = buf.default_level_style(record.level());
    write!(
        buf,
        "[{} {style}{:<5}{style:#} {}] {}",
        buf.timestamp(),
        record.level(),
        record.target(),
        record.args()
    )?;
    if let Some(ctx) = crate::logctx::current() {
        if let Some(id) = &ctx.request_id {
            write!(buf, " req={id}")?;
        }
        if let Some(id) = &ctx.run_id {
            write!(buf, " run={id}")?;
        }
    }
    writeln!(buf)
}

fn write_json(buf: &mut env_logger::fmt::Formatter, record: &log::Record) -> std::io::Result<()> {
    use std::io::Write;
    let mut line = serde_json::Map::new();
    let ts = crate::time::format(&chrono::Utc::now());
    line.insert("ts".into(), ts.into());
    line.insert("level".into(), record.level().as_str().into());
    line.insert("target".into(), record.target().into());
    line.insert("msg".into(), record.args().to_string().into());
    if let Some(ctx) = crate::logctx::current() {
        if let Some(id) = ctx.request_id {
            line.insert("request_id".into(), id.into());
        }
        if let Some(id) = ctx.run_id {
            line.insert("run_id".into(), id.into());
        }
    }
    serde_json::to_writer(&mut *buf, &line)?;
    writeln!(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logctx::{self, LogContext};
    use log::Log;
    use serde_json::{json, Value};
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    /// A writer whose bytes the test reads back.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Capture {
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect()
        }
    }

    fn logger(format: LogFormat) -> (env_logger::Logger, Capture) {
        let capture = Capture::default();
        let logger = logger_builder(format)
            .target(env_logger::Target::Pipe(Box::new(capture.clone())))
            .write_style(env_logger::WriteStyle::Never)
            .filter_level(log::LevelFilter::Info)
            .build();
        (logger, capture)
    }

    fn log(logger: &env_logger::Logger, level: log::Level, msg: &str) {
        logger.log(
            &log::Record::builder()
                .args(format_args!("{msg}"))
                .level(level)
                .target("thygon::test")
                .build(),
        );
    }

    #[test]
    fn log_format_parses_text_and_json_only() {
        assert_eq!(" JSON ".parse(), Ok(LogFormat::Json));
        assert_eq!("text".parse(), Ok(LogFormat::Text));
        assert_eq!("xml".parse::<LogFormat>(), Err(()));
    }

    #[tokio::test]
    async fn json_lines_are_one_object_each_with_the_context_when_known() {
        let (logger, capture) = logger(LogFormat::Json);
        log(&logger, log::Level::Warn, "outside \"quoted\"\nsecond line");
        logctx::scope(LogContext::run("run_1", Some("req_1")), async {
            log(&logger, log::Level::Info, "inside");
        })
        .await;
        log(&logger, log::Level::Debug, "filtered out");
        let lines = capture.lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        let parsed: Vec<Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).expect("a JSON object a line"))
            .collect();
        for line in &parsed {
            let ts = line["ts"].as_str().expect("ts");
            assert!(
                chrono::DateTime::parse_from_rfc3339(ts).is_ok()
                    && ts.ends_with('Z')
                    && ts.len() == "2024-01-01T00:00:00.000Z".len(),
                "{ts}"
            );
        }
        let without_ts = |v: &Value| {
            let mut v = v.clone();
            v.as_object_mut().unwrap().remove("ts");
            v
        };
        assert_eq!(
            without_ts(&parsed[0]),
            json!({ "level": "WARN", "target": "thygon::test", "msg": "outside \"quoted\"\nsecond line" })
        );
        assert_eq!(
            without_ts(&parsed[1]),
            json!({ "level": "INFO", "target": "thygon::test", "msg": "inside",
                    "request_id": "req_1", "run_id": "run_1" })
        );
    }

    #[tokio::test]
    async fn text_lines_keep_env_logger_s_shape_and_append_the_ids_in_a_scope() {
        let (logger, capture) = logger(LogFormat::Text);
        log(&logger, log::Level::Info, "plain");
        logctx::scope(LogContext::request("req_9"), async {
            log(&logger, log::Level::Error, "in a request");
        })
        .await;
        logctx::scope(LogContext::run("run_2", Some("req_2")), async {
            log(&logger, log::Level::Info, "in a run");
        })
        .await;
        let lines = capture.lines();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].starts_with('['), "{}", lines[0]);
        assert!(
            lines[0].ends_with(" INFO  thygon::test] plain"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].ends_with(" ERROR thygon::test] in a request req=req_9"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].ends_with("] in a run req=req_2 run=run_2"),
            "{}",
            lines[2]
        );
    }
}
