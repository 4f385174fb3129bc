//! `GET /workflows/runs/{id}/events`: the run's transitions and logs as Server-Sent Events,
//! the history first, then live events until the run has ended.
//!
//! Live events come from polling `run_events` for ids above the last one sent: the worker
//! writes through the database, so the database is the one place every event passes.
//!
//! Each stream polls the database, so streams are bounded: at most the org's
//! `maxEventStreams` open at once per API key on this replica ([`EventStreams`]; over it,
//! 429 `QUOTA_EXCEEDED`), and each ends after `EVENT_STREAM_MAX_SECONDS` with a `reconnect`
//! event whose `id` is the last event sent, so the client's next request (`Last-Event-ID`)
//! resumes exactly there.

use crate::domain;
use crate::error::RuntimeError;
use crate::routes::views::EventView;
use crate::startup::AppState;
use crate::storage;
use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::stream::{self, Stream};
use shared_models::auth::Caller;
use shared_models::db::{blocking, PgPool};
use shared_models::ids::RunId;
use shared_models::limits::QuotaExceeded;
use shared_models::models::RunEventRow;
use shared_models::openapi as doc;
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often a subscriber's stream looks for new events.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// A comment line after this much silence keeps proxies from closing an idle stream.
const KEEP_ALIVE_AFTER: Duration = Duration::from_secs(15);
/// Events read per query; a full batch is followed by another read at once.
const BATCH: i64 = 500;

/// One event of a run's stream, as an SSE client reads it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documentation only
struct RunStreamEvent {
    /// The event's id: send it back as `Last-Event-ID` to resume after it.
    #[schema(example = "1")]
    id: String,
    event: RunStreamEventKind,
    /// The JSON of a `TransitionView` (`event: transition`) or a `LogView` (`event: log`),
    /// as in the run's `transitions` and `logs`.
    #[schema(
        content_media_type = "application/json",
        example = r#"{"at":"2026-06-16T17:15:05.000Z","step":null,"from":"PENDING","to":"RUNNING"}"#
    )]
    data: String,
}

#[derive(utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // documentation only
enum RunStreamEventKind {
    Transition,
    Log,
    /// The last event of a stream that reached `EVENT_STREAM_MAX_SECONDS`: its `id` is the
    /// last event sent; reconnect with it as `Last-Event-ID`.
    Reconnect,
    /// A live piece of a streaming agent's answer (no `id`): `{step, attempt, turn, text?,
    /// toolCalls?, toolResult?}`.
    #[serde(rename = "agent.delta")]
    AgentDelta,
    /// A retried attempt of an agent step starts its answer again (no `id`): `{step, attempt}`.
    #[serde(rename = "agent.reset")]
    AgentReset,
}

/// The event streams open on this replica, per API key: what `maxEventStreams` counts.
/// In-process (like the rate limit), so each replica allows that many per key.
#[derive(Clone)]
pub struct EventStreams {
    open: Arc<Mutex<HashMap<String, u32>>>,
    /// Set once the process is stopping ([`EventStreams::stop_all`]).
    stopping: Arc<watch::Sender<bool>>,
}

impl Default for EventStreams {
    fn default() -> Self {
        EventStreams {
            open: Arc::default(),
            stopping: Arc::new(watch::channel(false).0),
        }
    }
}

/// One open stream of a key; dropping it (with the stream) gives its place back.
pub struct StreamSlot {
    streams: EventStreams,
    key_id: String,
}

impl EventStreams {
    /// A place for one more stream of `key_id`, or the quota it would go over (`max` 0: none).
    pub fn open(&self, key_id: &str, max: u32) -> Result<StreamSlot, QuotaExceeded> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(key_id.to_string()).or_insert(0);
        if max > 0 && *count >= max {
            let what = format!("{count} event streams are open with this API key");
            return Err(QuotaExceeded::new("maxEventStreams", max, what));
        }
        *count += 1;
        Ok(StreamSlot {
            streams: self.clone(),
            key_id: key_id.to_string(),
        })
    }

    /// Streams open with `key_id` on this replica.
    pub fn open_with(&self, key_id: &str) -> u32 {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(key_id).copied().unwrap_or(0)
    }

    /// The process is stopping (SIGTERM): every open stream ends at once with a `reconnect`
    /// event, so its client resumes on another replica instead of being cut off when the
    /// shutdown grace runs out.
    pub fn stop_all(&self) {
        self.stopping.send_replace(true);
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.key_id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key_id);
            }
        }
    }
}

/// `GET /workflows/runs/{id}/events`; `Last-Event-ID` resumes after that event.
#[utoipa::path(
    get,
    path = "/workflows/runs/{id}/events",
    tag = "runs",
    summary = "Stream a run's transitions and logs (Server-Sent Events)",
    description = "The run's history first, then live events until the run has ended, as \
        `text/event-stream`: each event is `id: <n>`, `event: transition` or `event: log`, and \
        `data:` the JSON of a `TransitionView` or a `LogView` (as in the run's `transitions` and \
        `logs`). Comment lines (`: keep-alive`) keep an idle stream open. A stream open for \
        `EVENT_STREAM_MAX_SECONDS` ends with `event: reconnect` whose `id` is the last event \
        sent: reconnect with it as `Last-Event-ID`. A streaming agent's answer comes as it is \
        written: `event: agent.delta` (and `agent.reset` when an attempt starts again), with no \
        `id`. At most the org's `maxEventStreams` streams \
        are open per key (429 `QUOTA_EXCEEDED` over it). The response schema describes one event.",
    params(
        ("id" = String, Path, description = "The run id (`run_` + a lowercase ULID)", example = "run_01j9z3c4x5v6b7n8m9q0r1s2t3"),
        ("Last-Event-ID" = Option<i64>, Header, nullable = false, minimum = 0, maximum = 9223372036854775807_i64, description = "Resume after this event's `id`"),
    ),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream", body = RunStreamEvent),
        (status = 429, response = doc::RateLimitedOrQuota),
    ),
)]
pub async fn stream_run_events(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, RuntimeError> {
    let raw = path.into_inner();
    let after = domain::last_event_id(req.headers().get("last-event-id").map(|v| v.as_bytes()))?;
    let id = RunId::parse(&raw).ok_or_else(|| RuntimeError::RunNotFound(raw.clone()))?;
    let slot = state
        .streams
        .open(&caller.key_id, caller.limits.max_event_streams)?;
    let (org_id, key_id, run_id) = (caller.org_id, caller.key_id, id.as_str().to_string());
    let (org, run) = (org_id.clone(), run_id.clone());
    let found = blocking(&state.pool, move |conn| {
        Ok(match storage::get_run(conn, &org, &run)? {
            // Live pieces are live: a stream sends those written while it is open.
            Some(_) => Some(storage::events::last_delta(conn, &run)?),
            None => None,
        })
    })
    .await?;
    let Some(last_delta) = found else {
        return Err(RuntimeError::RunNotFound(raw));
    };
    let feed = Feed {
        pool: state.pool.clone(),
        org_id,
        key_id,
        key_checked: Instant::now(),
        run_id,
        last_id: after.unwrap_or(0),
        last_delta,
        ready: VecDeque::new(),
        done: false,
        read_now: true,
        last_write: Instant::now(),
        ends_at: Instant::now() + state.event_stream_max,
        stopping: state.streams.stopping.subscribe(),
        _slot: slot,
    };
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // nginx (the gateway) would otherwise buffer the stream.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(feed.into_stream()))
}

/// One subscriber's position in a run's events. Dropped with the response body when the
/// client goes away, which ends its polling.
struct Feed {
    pool: PgPool,
    org_id: String,
    /// The caller's key: checked every second, so revoking it ends the stream too.
    key_id: String,
    key_checked: Instant,
    run_id: String,
    /// The id of the last event sent (or the client's `Last-Event-ID`).
    last_id: i64,
    /// The id of the last live piece of an agent's answer sent (`agent_deltas`).
    last_delta: i64,
    /// Frames read but not yet sent.
    ready: VecDeque<Bytes>,
    /// Every event is in `ready`, and no more can come: end once it is sent.
    done: bool,
    /// Read again without waiting (the first read, and after a full batch).
    read_now: bool,
    last_write: Instant,
    /// `EVENT_STREAM_MAX_SECONDS` after it opened: the stream ends then (with a `reconnect`).
    ends_at: Instant,
    /// True once the process is stopping: the stream ends then (with a `reconnect`).
    stopping: watch::Receiver<bool>,
    /// The stream's place under `maxEventStreams`, given back when the feed is dropped.
    _slot: StreamSlot,
}

impl Feed {
    fn into_stream(self) -> impl Stream<Item = Result<Bytes, Infallible>> + 'static {
        stream::unfold(self, |feed| feed.next_frame())
    }

    async fn next_frame(mut self) -> Option<(Result<Bytes, Infallible>, Self)> {
        loop {
            if let Some(frame) = self.ready.pop_front() {
                self.last_write = Instant::now();
                return Some((Ok(frame), self));
            }
            if self.done {
                return None;
            }
            let stopping = *self.stopping.borrow();
            if stopping || Instant::now() >= self.ends_at {
                self.ready.push_back(self.reconnect_frame(stopping));
                self.done = true;
                continue;
            }
            if !self.read_now {
                let left = self.ends_at.saturating_duration_since(Instant::now());
                let mut stop = self.stopping.clone();
                tokio::select! {
                    _ = tokio::time::sleep(POLL_INTERVAL.min(left)) => {}
                    Ok(_) = stop.wait_for(|stopping| *stopping) => continue,
                }
            }
            self.read().await;
            if self.ready.is_empty() && self.last_write.elapsed() >= KEEP_ALIVE_AFTER {
                self.ready
                    .push_back(Bytes::from_static(b": keep-alive\n\n"));
            }
        }
    }

    /// The last frame of a stream at its maximum lifetime: its `id` (the last event sent,
    /// or the client's `Last-Event-ID`) is where the client's reconnection resumes.
    /// `stopping`: the process is stopping, rather than the stream at its lifetime.
    fn reconnect_frame(&self, stopping: bool) -> Bytes {
        let reason = if stopping {
            "the server is stopping; reconnect with Last-Event-ID"
        } else {
            "the stream reached EVENT_STREAM_MAX_SECONDS; reconnect with Last-Event-ID"
        };
        log::debug!(
            "event stream of run {}: {reason}; ending it after event {}",
            self.run_id,
            self.last_id
        );
        let data = serde_json::json!({
            "reason": reason,
            "lastEventId": self.last_id.to_string(),
        });
        Bytes::from(format!(
            "id: {}\nevent: reconnect\ndata: {data}\n\n",
            self.last_id
        ))
    }

    async fn read(&mut self) {
        if self.key_checked.elapsed() >= shared_models::auth::CACHE_TTL {
            let key_id = self.key_id.clone();
            let live = blocking(&self.pool, move |conn| {
                shared_models::auth::key_is_live(conn, &key_id)
            })
            .await;
            self.key_checked = Instant::now();
            if let Ok(false) = live {
                log::info!(
                    "event stream of run {}: API key {} was revoked; closing it",
                    self.run_id,
                    self.key_id
                );
                self.done = true;
                return;
            }
        }
        let (org, run, after) = (self.org_id.clone(), self.run_id.clone(), self.last_id);
        let after_delta = self.last_delta;
        let batch = blocking(&self.pool, move |conn| {
            let Some(events) = storage::events::events_after(conn, &org, &run, after, BATCH)?
            else {
                return Ok(None);
            };
            // Read after the events: every piece written before them is among these.
            let deltas = storage::events::deltas_after(conn, &run, after_delta, BATCH)?;
            Ok(Some((events, deltas)))
        })
        .await;
        match batch {
            Ok(Some((batch, deltas))) => {
                let full = batch.events.len() as i64 >= BATCH || deltas.len() as i64 >= BATCH;
                for event in batch.events {
                    self.last_id = event.id;
                    if let Some(frame) = frame(event) {
                        self.ready.push_back(frame);
                    }
                }
                for delta in deltas {
                    self.last_delta = delta.id;
                    self.ready.push_back(delta_frame(delta));
                }
                self.read_now = full;
                self.done = batch.run_ended && !full;
            }
            Ok(None) => self.done = true,
            Err(e) => {
                // The client reconnects with Last-Event-ID and resumes where this stopped.
                log::warn!(
                    "event stream of run {}: {e}; closing it after event {}",
                    self.run_id,
                    self.last_id
                );
                self.done = true;
            }
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        log::debug!(
            "event stream of run {} closed after event {}",
            self.run_id,
            self.last_id
        );
    }
}

/// `event: agent.delta|agent.reset\ndata: {"step", "attempt", ...}\n\n`, without an `id`
/// (a live piece is not resumed: `Last-Event-ID` stays the last transition or log).
fn delta_frame(delta: storage::events::DeltaRow) -> Bytes {
    let mut data = serde_json::json!({ "step": delta.step, "attempt": delta.attempt });
    if let (Some(data), serde_json::Value::Object(piece)) = (data.as_object_mut(), delta.data) {
        data.extend(piece);
    }
    let event = if delta.kind == "reset" {
        "agent.reset"
    } else {
        "agent.delta"
    };
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// `id: <id>\nevent: transition|log\ndata: <the JSON of the run's detail view>\n\n`
fn frame(event: RunEventRow) -> Option<Bytes> {
    let id = event.id;
    let view = EventView::from(event);
    match serde_json::to_string(&view) {
        Ok(data) => Some(Bytes::from(format!(
            "id: {id}\nevent: {}\ndata: {data}\n\n",
            view.kind()
        ))),
        Err(e) => {
            log::error!("event {id} cannot be serialized: {e}");
            None
        }
    }
}
