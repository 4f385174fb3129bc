//! Queue topology and the versioned job message.
//!
//! Names carry a version suffix and a paired dead-letter queue. The job queue is a quorum
//! queue with a delivery limit: a message redelivered that many times (a poison message, a
//! crash loop) goes to the dead-letter queue instead of spinning forever.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use serde::{Deserialize, Serialize};

pub const DEFAULT_PREFIX: &str = "thygon";
/// How many deliveries a job gets before it is dead-lettered.
pub const DELIVERY_LIMIT: i64 = 10;
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
    pub const VERSION: u32 = 1;

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

pub async fn connect(amqp_url: &str, name: &str) -> Result<Connection, lapin::Error> {
    let props = ConnectionProperties::default().with_connection_name(LongString::from(name));
    Connection::connect(amqp_url, props).await
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
