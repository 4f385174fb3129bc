//! Dead-lettering with the reason: a poison job (undecodable, or for a run that does not
//! exist) is republished to the dead-letter exchange with `x-thygon-reason` and
//! `x-thygon-worker` headers, confirmed by the broker, before the original is acked.

use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use shared_models::queue::{DEAD_LETTER_REASON_HEADER, DEAD_LETTER_WORKER_HEADER};
use std::time::Duration;

/// The longest reason (in characters) a dead letter's header carries.
pub const MAX_REASON_CHARS: usize = 1000;
/// How long a dead letter may wait for the broker's confirm before the plain reject is used.
const DEAD_LETTER_CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Where poison messages go, with the reason: a channel of the consumer's connection in
/// confirm mode (opened once per connection, not per message), so the original is acked only
/// once the broker holds the copy.
pub struct DeadLetters {
    channel: Channel,
    exchange: String,
    worker_id: String,
}

impl DeadLetters {
    pub async fn open(
        connection: &Connection,
        exchange: &str,
        worker_id: &str,
    ) -> Result<Self, lapin::Error> {
        let channel = shared_models::queue::confirm_channel(connection).await?;
        Ok(Self {
            channel,
            exchange: exchange.to_string(),
            worker_id: worker_id.to_string(),
        })
    }

    pub async fn close(&self) {
        let _ = self.channel.close(200, "worker shutting down".into()).await;
    }

    /// Publish a copy of `delivery` with `reason` to the dead-letter exchange and wait for the
    /// broker's confirm. Mandatory, so a copy no queue would take comes back as a failure
    /// instead of vanishing.
    pub async fn publish(&self, delivery: &Delivery, reason: &str) -> Result<(), String> {
        let properties = dead_letter_properties(&delivery.properties, reason, &self.worker_id);
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                "".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &delivery.data,
                properties,
            )
            .await
            .map_err(|e| format!("publishing failed: {e}"))?;
        let confirmation = tokio::time::timeout(DEAD_LETTER_CONFIRM_TIMEOUT, confirm)
            .await
            .map_err(|_| format!("no confirm within {DEAD_LETTER_CONFIRM_TIMEOUT:?}"))?
            .map_err(|e| format!("waiting for the confirm failed: {e}"))?;
        taken(confirmation)
    }
}

/// The original message's properties and headers, plus why and by whom it was dead-lettered;
/// persistent whatever the original was.
pub fn dead_letter_properties(
    original: &BasicProperties,
    reason: &str,
    worker_id: &str,
) -> BasicProperties {
    let mut headers = original.headers().clone().unwrap_or_default();
    headers.insert(
        DEAD_LETTER_REASON_HEADER.into(),
        AMQPValue::LongString(LongString::from(truncate_chars(reason, MAX_REASON_CHARS))),
    );
    headers.insert(
        DEAD_LETTER_WORKER_HEADER.into(),
        AMQPValue::LongString(LongString::from(worker_id)),
    );
    original.clone().with_headers(headers).with_delivery_mode(2)
}

/// At most `max` characters of `text` (never a split character), marked when cut.
fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

/// Whether the broker holds a published copy: only a plain ack says so. A returned message
/// (no queue bound to the exchange) or a nack means the copy is nowhere.
fn taken(confirmation: Confirmation) -> Result<(), String> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => {
            Err("unroutable: no queue is bound to the dead-letter exchange".into())
        }
        Confirmation::Nack(_) => Err("the broker refused it (nack)".into()),
        Confirmation::NotRequested => Err("publisher confirms are off on its channel".into()),
    }
}

/// How a poison delivery is settled, once its republish with the reason was tried.
#[derive(Debug, PartialEq, Eq)]
pub enum PoisonSettlement {
    /// The copy with the reason is in the dead-letter queue: ack the original.
    Ack,
    /// The copy may be lost (the error says why): reject the original without requeueing,
    /// so the queue's own dead-lettering keeps it (with `x-death` only). Never requeue: a
    /// poison message would come straight back.
    Reject(String),
}

pub fn settle_poison(republished: Result<(), String>) -> PoisonSettlement {
    match republished {
        Ok(()) => PoisonSettlement::Ack,
        Err(e) => PoisonSettlement::Reject(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldTable;

    fn header(properties: &BasicProperties, name: &str) -> Option<String> {
        properties
            .headers()
            .as_ref()?
            .inner()
            .iter()
            .find(|(k, _)| k.as_str() == name)
            .and_then(|(_, v)| match v {
                AMQPValue::LongString(s) => Some(s.to_string()),
                _ => None,
            })
    }

    #[test]
    fn a_dead_letter_keeps_the_original_properties_and_adds_the_reason_and_the_worker() {
        let mut original_headers = FieldTable::default();
        original_headers.insert(
            "x-custom".into(),
            AMQPValue::LongString(LongString::from("kept")),
        );
        let original = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id("m-1".into())
            .with_headers(original_headers);
        let props = dead_letter_properties(&original, "run 'r' does not exist", "worker-7");
        assert_eq!(
            header(&props, DEAD_LETTER_REASON_HEADER).as_deref(),
            Some("run 'r' does not exist")
        );
        assert_eq!(
            header(&props, DEAD_LETTER_WORKER_HEADER).as_deref(),
            Some("worker-7")
        );
        assert_eq!(header(&props, "x-custom").as_deref(), Some("kept"));
        assert_eq!(props.delivery_mode(), &Some(2), "persistent");
        assert_eq!(props.message_id().as_ref().map(|s| s.as_str()), Some("m-1"));
        assert_eq!(
            props.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
    }

    #[test]
    fn a_long_reason_is_cut_on_a_character_boundary() {
        let reason = "é".repeat(MAX_REASON_CHARS + 50);
        let props = dead_letter_properties(&BasicProperties::default(), &reason, "w");
        let kept = header(&props, DEAD_LETTER_REASON_HEADER).expect("reason header");
        assert_eq!(
            kept.chars().count(),
            MAX_REASON_CHARS + 1,
            "cut, plus the mark"
        );
        assert!(kept.ends_with('…'));
        assert_eq!(truncate_chars("short", MAX_REASON_CHARS), "short");
    }

    #[test]
    fn only_a_confirmed_copy_lets_the_original_be_acked_anything_else_rejects_it() {
        assert_eq!(
            settle_poison(taken(Confirmation::Ack(None))),
            PoisonSettlement::Ack
        );
        for confirmation in [Confirmation::Nack(None), Confirmation::NotRequested] {
            assert!(matches!(
                settle_poison(taken(confirmation)),
                PoisonSettlement::Reject(_)
            ));
        }
        assert_eq!(
            settle_poison(Err("publishing failed: channel closed".into())),
            PoisonSettlement::Reject("publishing failed: channel closed".into())
        );
    }
}
