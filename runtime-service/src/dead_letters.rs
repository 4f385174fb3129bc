//! The dead-letter queue as the redrive (`POST /ops/dead-letters/redrive`, [`crate::redrive`])
//! handles it: a channel of its own on the publisher's connection, in confirm mode, opened
//! per redrive (a channel owns the letters it has taken: if the process dies midway, the
//! broker gives every letter not yet settled back to the queue).
//!
//! Letters are taken one at a time (`basic.get`, manual ack) and each is settled by the
//! redrive as exactly one of: acked once its job was confirmed on the job queue (redriven);
//! acked (dropped: its run has ended); or put back: a copy with the same body and properties
//! published to the tail of the dead-letter queue and confirmed, then the original acked.
//! Putting back by copy rather than by a requeueing nack keeps repeated redrives from
//! counting deliveries against a delivery limit the broker may set on the dead-letter queue
//! (RabbitMQ 4 gives quorum queues one by default, and drops a letter past it).

use chrono::{DateTime, TimeZone, Utc};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Confirmation, Connection};
use shared_models::queue::{self, QueueNames};
use std::time::Duration;

/// How long a put-back copy may wait for the broker's confirm.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// A letter taken from the dead-letter queue, held by its channel until settled.
pub(crate) struct Letter {
    pub delivery: Delivery,
}

impl Letter {
    pub(crate) fn body(&self) -> &[u8] {
        &self.delivery.data
    }

    /// When it was dead-lettered, as far as the message says: the broker's `x-death` record
    /// (the most recent death), else the message's `timestamp` property; `None` when neither.
    pub(crate) fn dead_lettered_at(&self) -> Option<DateTime<Utc>> {
        let properties = &self.delivery.properties;
        let death_time = properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-death"))
            .and_then(|deaths| match deaths {
                AMQPValue::FieldArray(a) => a.as_slice().first(),
                _ => None,
            })
            .and_then(|death| match death {
                AMQPValue::FieldTable(t) => t.inner().get("time"),
                _ => None,
            })
            .and_then(|time| match time {
                AMQPValue::Timestamp(secs) => Some(*secs),
                _ => None,
            });
        let secs = death_time.or(*properties.timestamp())?;
        Utc.timestamp_opt(i64::try_from(secs).ok()?, 0).single()
    }
}

pub struct DeadLetterChannel {
    channel: Channel,
    queue: String,
}

impl DeadLetterChannel {
    /// A channel on `connection` in confirm mode, for the dead-letter queue of `names`
    /// (declared with the topology when the connection was made).
    pub(crate) async fn open(
        connection: &Connection,
        names: &QueueNames,
    ) -> Result<Self, lapin::Error> {
        let channel = queue::confirm_channel(connection).await?;
        Ok(Self {
            channel,
            queue: names.dead_letter_queue.clone(),
        })
    }

    /// Letters ready in the queue now (those other channels hold are not counted).
    pub(crate) async fn ready(&self) -> Result<u32, String> {
        let queue = self
            .channel
            .queue_declare(
                self.queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("reading the dead-letter queue's length: {e}"))?;
        Ok(queue.message_count())
    }

    /// The next letter, held by this channel until settled; `None` when none is ready.
    pub(crate) async fn next(&self) -> Result<Option<Letter>, String> {
        let got = self
            .channel
            .basic_get(
                self.queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .map_err(|e| format!("taking a dead letter: {e}"))?;
        Ok(got.map(|m| Letter {
            delivery: m.delivery,
        }))
    }

    /// Settle a letter for good (redriven, or dropped).
    pub(crate) async fn ack(&self, letter: &Letter) -> Result<(), String> {
        self.channel
            .basic_ack(letter.delivery.delivery_tag, BasicAckOptions::default())
            .await
            .map_err(|e| format!("acking a dead letter: {e}"))
    }

    /// Put a letter back at the tail of the queue: a copy (same body and properties) is
    /// published and confirmed, then the original acked. A failure leaves the original held,
    /// and so in the queue once the channel closes.
    pub(crate) async fn put_back(&self, letter: &Letter) -> Result<(), String> {
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &letter.delivery.data,
                letter.delivery.properties.clone(),
            )
            .await
            .map_err(|e| format!("putting a dead letter back: {e}"))?;
        let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
            .await
            .map_err(|_| format!("no confirm of a put-back letter within {CONFIRM_TIMEOUT:?}"))?
            .map_err(|e| format!("putting a dead letter back: {e}"))?;
        match confirmation {
            Confirmation::Ack(None) => self.ack(letter).await,
            _ => Err("the broker did not take a put-back letter".into()),
        }
    }

    /// Close the channel: letters not settled go back to the queue.
    pub(crate) async fn close(self) {
        let _ = self.channel.close(200, "redrive done".into()).await;
    }
}
