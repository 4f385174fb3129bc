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

/// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`), or `default` when unset.
pub fn env_bool(name: &str, default: bool) -> Result<bool, String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => match v.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(format!(
                "environment variable {name}={v:?} is not valid (true or false)"
            )),
        },
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
#[derive(Clone)]
pub struct CommonConfig {
    /// `DATABASE_URL`, with [`with_database_tls`] applied when `DATABASE_TLS_CA_FILE` is set.
    pub database_url: String,
    /// `DATABASE_TLS_CA_FILE`, checked at start: apply it with [`with_database_tls`] to any
    /// other URL of the same server (the migration role's).
    pub database_tls_ca_file: Option<String>,
    /// `AMQP_URL` and `AMQP_TLS_CA_FILE`: every broker connection is made from it.
    #[cfg(feature = "queue")]
    pub broker: crate::queue::Broker,
    /// Prefix of every queue and exchange name; tests give each test its own.
    #[cfg(feature = "queue")]
    pub queue_prefix: String,
    /// This process's connection pool (`DB_POOL_SIZE`, `DB_POOL_IDLE_SECONDS`,
    /// `DB_STATEMENT_CACHE`).
    pub pool: crate::db::PoolSettings,
    /// How long a process waits at start for a schema that holds every migration it embeds
    /// before it refuses to start (`SCHEMA_WAIT_SECONDS`, default 0: refuse at once).
    /// Processes never migrate; `workflow-service migrate` does.
    pub schema_wait: Duration,
    /// Where migrations connect (`MIGRATION_DATABASE_URL`, default `DATABASE_URL`): straight
    /// to PostgreSQL with a role that may change the schema, never through a pooler in
    /// transaction mode (the migration lock is a session advisory lock).
    pub migration_database_url: String,
    /// Where `/metrics` is served on its own (`METRICS_ADDR`); `None`: on the HTTP address.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl CommonConfig {
    /// The settings from the environment; `default_pool_size` is this kind of process's
    /// share of the connection budget (docs/DEPLOY.md "Sizing").
    pub fn from_env(default_pool_size: u32) -> Result<Self, String> {
        let database_tls_ca_file = database_tls_ca_file()?;
        let tls = |var: &str, url: &str| {
            with_database_tls(url, database_tls_ca_file.as_deref())
                .map_err(|e| format!("{var}: {e}"))
        };
        let database_url = env_or("DATABASE_URL", DEFAULT_DATABASE_URL);
        let migration_database_url = tls(
            "MIGRATION_DATABASE_URL",
            &env_or("MIGRATION_DATABASE_URL", &database_url),
        )?;
        let database_url = tls("DATABASE_URL", &database_url)?;
        Ok(Self {
            database_url,
            migration_database_url,
            database_tls_ca_file,
            #[cfg(feature = "queue")]
            broker: crate::queue::Broker::from_env()?,
            #[cfg(feature = "queue")]
            queue_prefix: env_or("QUEUE_PREFIX", crate::queue::DEFAULT_PREFIX),
            pool: crate::db::PoolSettings::from_env(default_pool_size)?,
            schema_wait: env_seconds("SCHEMA_WAIT_SECONDS", 0.0)?,
            metrics_addr: crate::metrics::addr_from_env()?,
        })
    }
}

/// The URLs carry passwords: shown redacted.
impl std::fmt::Debug for CommonConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut f = f.debug_struct("CommonConfig");
        f.field("database_url", &redact_url(&self.database_url))
            .field("database_tls_ca_file", &self.database_tls_ca_file);
        #[cfg(feature = "queue")]
        f.field("broker", &self.broker)
            .field("queue_prefix", &self.queue_prefix);
        f.field("pool", &self.pool)
            .field("schema_wait", &self.schema_wait)
            .field(
                "migration_database_url",
                &redact_url(&self.migration_database_url),
            )
            .finish()
    }
}

/// `url` with the password of its user info (`scheme://user:password@host`) replaced by
/// `***`, for log lines and errors. A string without one comes back as it was.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

/// The PEM CA bundle at `path`, named by the variable `var` in errors: read and checked the
/// way the TLS client will load it (every `CERTIFICATE` block parsed), so a missing,
/// unreadable or malformed file stops the process at start, not at its first connection.
pub fn read_ca_bundle(var: &str, path: &str) -> Result<String, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let pem = std::fs::read_to_string(path)
        .map_err(|e| format!("{var}={path}: cannot read the CA file: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{var}={path}: not a PEM certificate bundle: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "{var}={path}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ));
    }
    for (i, der) in certs.iter().enumerate() {
        native_tls::Certificate::from_der(der)
            .map_err(|e| format!("{var}={path}: certificate {} does not parse: {e}", i + 1))?;
    }
    Ok(pem)
}

/// `DATABASE_TLS_CA_FILE`: the CA bundle libpq verifies PostgreSQL's certificate against
/// (checked at start), or `None` when unset.
pub fn database_tls_ca_file() -> Result<Option<String>, String> {
    const VAR: &str = "DATABASE_TLS_CA_FILE";
    match std::env::var(VAR) {
        Ok(path) if !path.trim().is_empty() => {
            read_ca_bundle(VAR, &path)?;
            Ok(Some(path))
        }
        _ => Ok(None),
    }
}

/// libpq's `sslmode`s that verify the server's certificate or at least encrypt; with a CA
/// file, `require` behaves as `verify-ca` (libpq's own rule when a root certificate is given).
const VERIFYING_SSLMODES: [&str; 3] = ["require", "verify-ca", "verify-full"];

/// A PostgreSQL URL made to verify the server against `ca_file` (`DATABASE_TLS_CA_FILE`):
/// `sslrootcert=<ca_file>` is added, and `sslmode=verify-full` unless the URL names a
/// verifying `sslmode` of its own; every other parameter stays. `None` leaves the URL as it
/// is. Refused (the error names no part of the URL, which holds the password): a URL that
/// is not `postgres://` / `postgresql://`, one with `sslmode=disable|allow|prefer`, one
/// whose `sslrootcert` names another file. Applying it twice changes nothing.
pub fn with_database_tls(url: &str, ca_file: Option<&str>) -> Result<String, String> {
    let Some(ca_file) = ca_file else {
        return Ok(url.to_string());
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(
            "DATABASE_TLS_CA_FILE needs the URL form postgres://user:password@host/db".into(),
        );
    }
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let params: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let value = |key: &str| params.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    let mut added = Vec::new();
    match value("sslmode") {
        Some(mode) if VERIFYING_SSLMODES.contains(&mode.as_str()) => {}
        Some(mode) => {
            return Err(format!(
                "DATABASE_TLS_CA_FILE is set but the URL says sslmode={mode}; \
                 remove the sslmode or use verify-full"
            ))
        }
        None => added.push("sslmode=verify-full".to_string()),
    }
    match value("sslrootcert") {
        Some(cert) if cert == ca_file => {}
        Some(_) => {
            return Err("the URL's sslrootcert names another file than DATABASE_TLS_CA_FILE".into())
        }
        None => added.push(format!("sslrootcert={}", percent_encode(ca_file))),
    }
    if added.is_empty() {
        return Ok(url.to_string());
    }
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .chain(added)
        .collect::<Vec<_>>()
        .join("&");
    Ok(format!("{base}?{query}"))
}

/// `%XX` decoded (libpq decodes URI parameters so); a malformed escape stays as written.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every byte but the unreserved ones and `/` as `%XX`.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
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

    const PW: &str = "s3cr3t-pw";

    #[test]
    fn database_tls_adds_verify_full_and_the_ca_and_keeps_every_other_parameter() {
        let url =
            format!("postgres://thygon:{PW}@db:5432/thygon?application_name=wf&connect_timeout=5");
        let ca = "/etc/thygon/ca.pem";
        let tls = with_database_tls(&url, Some(ca)).unwrap();
        assert_eq!(
            tls,
            format!("{url}&sslmode=verify-full&sslrootcert=/etc/thygon/ca.pem")
        );
        assert_eq!(with_database_tls(&tls, Some(ca)).unwrap(), tls, "twice");
        assert_eq!(with_database_tls(&url, None).unwrap(), url);
        assert_eq!(
            with_database_tls("postgresql://u@db/x", Some("/tmp/my ca&1.pem")).unwrap(),
            "postgresql://u@db/x?sslmode=verify-full&sslrootcert=/tmp/my%20ca%261.pem"
        );
        // A verifying sslmode of the URL stays (libpq treats require with a CA as verify-ca).
        for mode in ["require", "verify-ca", "verify-full"] {
            let url = format!("postgres://u:{PW}@db/x?sslmode={mode}");
            assert_eq!(
                with_database_tls(&url, Some(ca)).unwrap(),
                format!("{url}&sslrootcert=/etc/thygon/ca.pem")
            );
        }
        let url = format!("postgres://u:{PW}@db/x?sslrootcert=%2Fetc%2Fthygon%2Fca.pem");
        assert_eq!(
            with_database_tls(&url, Some(ca)).unwrap(),
            format!("{url}&sslmode=verify-full")
        );
    }

    #[test]
    fn database_tls_refuses_what_would_not_verify_and_never_shows_the_url() {
        let ca = Some("/etc/thygon/ca.pem");
        for mode in ["disable", "allow", "prefer"] {
            let e = with_database_tls(&format!("postgres://u:{PW}@db/x?sslmode={mode}"), ca)
                .unwrap_err();
            assert!(
                e.contains(&format!("sslmode={mode}")) && !e.contains(PW),
                "{e}"
            );
        }
        for url in [
            format!("postgres://u:{PW}@db/x?sslrootcert=/other.pem"),
            format!("host=db user=u password={PW} dbname=x"),
        ] {
            let e = with_database_tls(&url, ca).unwrap_err();
            assert!(!e.contains(PW), "{e}");
        }
    }

    #[test]
    fn redact_url_hides_only_the_password() {
        for (url, shown) in [
            (
                "postgres://u:pw@db:5432/x?a=1",
                "postgres://u:***@db:5432/x?a=1",
            ),
            ("amqps://u:p%40w@h/%2f", "amqps://u:***@h/%2f"),
            ("amqp://u:p@ss@h", "amqp://u:***@h"),
            ("postgres://u@db/x", "postgres://u@db/x"),
            ("postgres://db/x?user=u", "postgres://db/x?user=u"),
            ("host=db", "host=db"),
        ] {
            assert_eq!(redact_url(url), shown);
        }
    }

    #[test]
    fn a_ca_bundle_is_refused_when_missing_empty_or_malformed() {
        let dir = std::env::temp_dir().join(format!("thygon-ca-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let cases = [
            (
                dir.join("missing.pem").display().to_string(),
                "cannot read the CA file",
            ),
            (
                file("empty.pem", "not PEM at all\n"),
                "holds no PEM certificate",
            ),
            (
                file(
                    "bad.pem",
                    "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                ),
                "certificate 1 does not parse",
            ),
        ];
        for (path, why) in cases {
            let e = read_ca_bundle("SOME_CA_FILE", &path).unwrap_err();
            assert!(
                e.starts_with(&format!("SOME_CA_FILE={path}: ")) && e.contains(why),
                "{e}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
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
