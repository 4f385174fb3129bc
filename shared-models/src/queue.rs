//! Queue topology and the versioned job message.
//!
//! Names carry a version suffix and a paired dead-letter queue. The job queue is a quorum
//! queue with a delivery limit: a message redelivered that many times (a poison message, a
//! crash loop) goes to the dead-letter queue instead of spinning forever.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::tcp::{AMQPUriTcpExt, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{AsyncTcpStream, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde::{Deserialize, Serialize};

pub const DEFAULT_PREFIX: &str = "thygon";
/// How many deliveries a job gets before it is dead-lettered.
pub(crate) const DELIVERY_LIMIT: i64 = 10;
/// Header of a dead letter naming why a worker could not process it (an undecodable
/// message, an unknown run); RabbitMQ's own `x-death` says only where and how often.
pub const DEAD_LETTER_REASON_HEADER: &str = "x-thygon-reason";
/// Header of a dead letter naming the worker that dead-lettered it.
pub const DEAD_LETTER_WORKER_HEADER: &str = "x-thygon-worker";

/// The names of one deployment's queues; tests give each test its own prefix.
#[derive(Debug, Clone)]
pub struct QueueNames {
    /// The job queue the runtime publishes to and workers consume.
    pub jobs: String,
    /// Where dead jobs are routed.
    pub dead_letter_exchange: String,
    /// Where dead jobs wait for an operator, with the reason in their headers.
    pub dead_letter_queue: String,
}

impl QueueNames {
    pub fn new(prefix: &str) -> Self {
        Self {
            jobs: format!("{prefix}.run-jobs.v1"),
            dead_letter_exchange: format!("{prefix}.run-jobs.v1.dlx"),
            dead_letter_queue: format!("{prefix}.run-jobs.v1.dead"),
        }
    }
}

/// The job message: small and versioned, never the whole definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunJob {
    pub v: u32,
    pub run_id: String,
    pub org_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl RunJob {
    pub(crate) const VERSION: u32 = 1;

    pub fn new(run_id: &str, org_id: &str, request_id: Option<String>) -> Self {
        Self {
            v: Self::VERSION,
            run_id: run_id.into(),
            org_id: org_id.into(),
            request_id,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings and numbers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let job: RunJob =
            serde_json::from_slice(bytes).map_err(|e| format!("undecodable job message: {e}"))?;
        if job.v != Self::VERSION {
            return Err(format!(
                "job message version {} is not supported (expected {})",
                job.v,
                Self::VERSION
            ));
        }
        Ok(job)
    }
}

/// Where the broker is and which CA certificates TLS trusts beyond the system's: every
/// connection of every process is made from one of these by [`connect`]. Shown (`Debug`,
/// [`Broker::redacted`]) without the password.
#[derive(Clone)]
pub struct Broker {
    uri: AMQPUri,
    tls: OwnedTLSConfig,
}

impl Broker {
    /// A broker at `url` (`amqp://` or `amqps://`), trusting the system's CA certificates.
    /// The error names no part of the URL (it holds the password).
    pub fn new(url: &str) -> Result<Self, String> {
        let mut uri: AMQPUri = url.parse().map_err(|e: String| {
            let reason = if e.contains(url) {
                "not a URL with a host".to_string()
            } else {
                e
            };
            format!("not a valid amqp:// or amqps:// URL: {reason}")
        })?;
        // amq-protocol-uri 10.6 takes the host from `Url::domain`, which is `None` for an
        // IPv6 literal (`[::1]`), and then connects to `localhost` instead: keep the address.
        let ipv6 = url::Url::parse(url).ok().and_then(|u| match u.host() {
            Some(url::Host::Ipv6(ip)) => Some(ip),
            _ => None,
        });
        if let Some(ip) = ipv6 {
            uri.authority.host = ip.to_string();
        }
        Ok(Self {
            uri,
            tls: OwnedTLSConfig::default(),
        })
    }

    /// Also trust the CA certificates of `pem` (a PEM bundle, as [`read_ca_bundle`] returns
    /// it) for this broker's certificate. Only an `amqps://` URL has one.
    ///
    /// [`read_ca_bundle`]: crate::config::read_ca_bundle
    pub(crate) fn with_ca_pem(mut self, pem: String) -> Result<Self, String> {
        if !self.is_tls() {
            return Err(
                "a TLS CA is given for an amqp:// URL, which does not use TLS: use amqps://".into(),
            );
        }
        self.tls.cert_chain = Some(pem);
        Ok(self)
    }

    /// `AMQP_URL` (default [`DEFAULT_AMQP_URL`]) and `AMQP_TLS_CA_FILE` (a PEM CA bundle
    /// added to the trust roots; read and checked here, so a bad file stops the process).
    ///
    /// [`DEFAULT_AMQP_URL`]: crate::config::DEFAULT_AMQP_URL
    pub(crate) fn from_env() -> Result<Self, String> {
        use crate::config::{env_or, DEFAULT_AMQP_URL};
        let ca_file = std::env::var("AMQP_TLS_CA_FILE").ok();
        Self::from_settings(&env_or("AMQP_URL", DEFAULT_AMQP_URL), ca_file.as_deref())
    }

    /// The broker of the settings `AMQP_URL` = `url` and `AMQP_TLS_CA_FILE` = `ca_file`
    /// (unset when `None` or blank); errors name the variable.
    pub fn from_settings(url: &str, ca_file: Option<&str>) -> Result<Self, String> {
        let broker = Self::new(url).map_err(|e| format!("AMQP_URL: {e}"))?;
        match ca_file {
            Some(path) if !path.trim().is_empty() => broker
                .with_ca_pem(crate::config::read_ca_bundle("AMQP_TLS_CA_FILE", path)?)
                .map_err(|e| format!("AMQP_TLS_CA_FILE with AMQP_URL: {e}")),
            _ => Ok(broker),
        }
    }

    /// Whether connections are TLS (`amqps://`).
    pub(crate) fn is_tls(&self) -> bool {
        self.uri.scheme == AMQPScheme::AMQPS
    }

    /// The URL without the password, for log lines.
    pub fn redacted(&self) -> String {
        let a = &self.uri.authority;
        let host = if a.host.contains(':') {
            format!("[{}]", a.host)
        } else {
            a.host.clone()
        };
        format!(
            "{}://{}:***@{host}:{}/{}",
            self.uri.scheme,
            a.userinfo.username,
            a.port,
            self.uri.vhost.replace('/', "%2f")
        )
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("url", &self.redacted())
            .field("extra_ca", &self.tls.cert_chain.is_some())
            .finish()
    }
}

// The TLS backend is compiled in: without lapin's `native-tls` feature this import, and so
// the build, fails (lapin would otherwise open `amqps://` connections as plain TCP).
#[allow(unused_imports)]
use lapin::tcp::NativeTlsConnector as _;

/// Connect to `broker`, over TLS with its certificate verified for an `amqps://` URL (the
/// system's CAs plus the broker's extra ones). An `amqps://` connection that is not TLS is
/// refused, whatever the TLS backend, so credentials never cross in clear. Reconnections
/// lapin makes go through the same check.
pub async fn connect(broker: &Broker, name: &str) -> Result<Connection, lapin::Error> {
    let props = ConnectionProperties::default().with_connection_name(LongString::from(name));
    let runtime = lapin::runtime::default_runtime()?;
    let tls = broker.tls.clone();
    Connection::connector(
        broker.uri.clone(),
        runtime,
        async move |uri: AMQPUri, runtime| {
            let stream = uri
                .connect_with_config_async(tls.as_ref(), &runtime)
                .await
                .map_err(|e| {
                    if runtime.is_runtime_shutdown_error(&e) {
                        lapin::ErrorKind::RuntimeShutdownError(std::sync::Arc::new(e)).into()
                    } else {
                        lapin::Error::from(e)
                    }
                })?;
            if uri.scheme == AMQPScheme::AMQPS && matches!(stream, AsyncTcpStream::Plain(_)) {
                return Err(lapin::Error::from(std::io::Error::other(
                    "amqps:// but the connection is not TLS (no TLS backend): refused",
                )));
            }
            Ok(stream)
        },
        props,
    )
    .await
}

/// A new channel on `connection` with publisher confirms on: a publish counts only once the
/// broker confirmed it.
pub async fn confirm_channel(connection: &Connection) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Declare the exchanges and queues once, at start-up (idempotent with the same arguments).
pub async fn declare_topology(channel: &Channel, names: &QueueNames) -> Result<(), lapin::Error> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            names.dead_letter_exchange.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut dlq_args = FieldTable::default();
    dlq_args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel
        .queue_declare(names.dead_letter_queue.as_str().into(), durable, dlq_args)
        .await?;
    channel
        .queue_bind(
            names.dead_letter_queue.as_str().into(),
            names.dead_letter_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(DELIVERY_LIMIT),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from(names.dead_letter_exchange.as_str())),
    );
    channel
        .queue_declare(names.jobs.as_str().into(), durable, args)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_keeps_the_host_as_written_and_never_shows_the_password() {
        let b = Broker::new("amqps://thygon:s3cr3t-pw@10.1.2.3:5671/prod").unwrap();
        assert_eq!(b.uri.authority.host, "10.1.2.3");
        assert!(b.is_tls());
        assert_eq!(b.redacted(), "amqps://thygon:***@10.1.2.3:5671/prod");
        let shown = format!("{b:?}");
        assert!(
            !shown.contains("s3cr3t-pw") && shown.contains("***"),
            "{shown}"
        );

        let b = Broker::new("amqp://u:s3cr3t-pw@[::1]:5672/%2f").unwrap();
        assert_eq!(b.uri.authority.host, "::1");
        assert_eq!(b.redacted(), "amqp://u:***@[::1]:5672/%2f");

        let b = Broker::new("amqps://u:s3cr3t-pw@rabbit.internal/%2f").unwrap();
        assert_eq!(b.uri.authority.host, "rabbit.internal");
        assert_eq!(b.redacted(), "amqps://u:***@rabbit.internal:5671/%2f");
    }

    #[test]
    fn bad_broker_settings_are_refused_without_showing_the_password() {
        for url in ["amqp:thygon:s3cr3t-pw@host", "http://u:s3cr3t-pw@host/"] {
            let e = Broker::new(url).unwrap_err();
            assert!(!e.contains("s3cr3t-pw"), "{e}");
        }
        let plain = "amqp://u:s3cr3t-pw@h/%2f";
        let e = Broker::new(plain)
            .unwrap()
            .with_ca_pem(String::new())
            .unwrap_err();
        assert!(
            e.contains("use amqps://") && !e.contains("s3cr3t-pw"),
            "{e}"
        );
        let e = Broker::from_settings(plain, Some("/nonexistent/ca.pem")).unwrap_err();
        assert!(
            e.contains("AMQP_TLS_CA_FILE=/nonexistent/ca.pem: cannot read"),
            "{e}"
        );
        // A blank AMQP_TLS_CA_FILE is unset.
        assert!(Broker::from_settings(plain, Some(" ")).is_ok());
    }

    #[test]
    fn jobs_round_trip_and_refuse_other_versions() {
        let job = RunJob::new("run_x", "org_dev", Some("req-1".into()));
        assert_eq!(RunJob::decode(&job.encode()).unwrap(), job);
        assert!(RunJob::decode(br#"{"v":2,"runId":"r","orgId":"o"}"#).is_err());
        assert!(RunJob::decode(b"not json").is_err());
        let wire: serde_json::Value = serde_json::from_slice(&job.encode()).unwrap();
        assert_eq!(wire["runId"], "run_x");
    }

    #[test]
    fn queue_names_carry_a_version_and_a_dead_letter_pair() {
        let n = QueueNames::new("thygon");
        assert_eq!(n.jobs, "thygon.run-jobs.v1");
        assert_eq!(n.dead_letter_queue, "thygon.run-jobs.v1.dead");
    }
}
