//! What both model providers share on the wire: sending a request plain or streamed and
//! turning the answer into a reply ([`exchange`]), the Server-Sent Events of a streamed
//! answer, rate limiting, and reading JSON out of answers.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderName, HeaderValue};
use reqwest::Url;
use serde_json::Value;

use super::http::{self, snippet, Answer};
use super::model::{Delta, ModelReply};
use super::AgentError;

/// The longest wait a `Retry-After` is taken at.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Takes the `data` of each Server-Sent Event of a streamed answer.
pub(super) type DataSink<'s> = &'s mut (dyn FnMut(&str) -> Result<(), AgentError> + Send);

/// A provider's streamed answer, put together from the `data` of its events.
pub(super) trait StreamAssembly: Default + Send {
    /// Takes one event's `data`, telling `sink` of new text and tool calls.
    fn take(&mut self, data: &str, sink: &mut (dyn FnMut(Delta) + Send)) -> Result<(), AgentError>;

    /// The reply, once the stream has ended.
    fn finish(self) -> Result<ModelReply, AgentError>;
}

/// POSTs a model request and reads the reply: with `parse_reply` from a plain body, or,
/// with `on_delta`, assembled by `A` from the event stream (a server that answers a stream
/// request with plain JSON gives the same reply, its deltas replayed to `on_delta`).
pub(super) async fn exchange<A: StreamAssembly>(
    client: &reqwest::Client,
    url: &Url,
    headers: &[(HeaderName, HeaderValue)],
    body: &Value,
    timeout: Duration,
    on_delta: Option<&mut (dyn FnMut(Delta) + Send)>,
    parse_reply: fn(&[u8]) -> Result<ModelReply, AgentError>,
) -> Result<ModelReply, AgentError> {
    let Some(sink) = on_delta else {
        let answer = send(client, url, headers, body, timeout, None).await?;
        return parse_reply(&answer.unwrap_or_default());
    };
    let mut assembly = A::default();
    let mut on_data = |data: &str| assembly.take(data, &mut *sink);
    match send(client, url, headers, body, timeout, Some(&mut on_data)).await? {
        None => assembly.finish(),
        Some(plain) => {
            let reply = parse_reply(&plain)?;
            replay(&reply, sink);
            Ok(reply)
        }
    }
}

/// POSTs a model request. With `on_data`, a 2xx event-stream answer goes to it event by
/// event and `None` is returned; otherwise (no `on_data`, or a server that answered a
/// stream request with plain JSON) the whole body is returned. Non-2xx answers are errors
/// ([`AgentError::RateLimited`] for rate limiting).
async fn send(
    client: &reqwest::Client,
    url: &Url,
    headers: &[(HeaderName, HeaderValue)],
    body: &Value,
    timeout: Duration,
    on_data: Option<DataSink<'_>>,
) -> Result<Option<Vec<u8>>, AgentError> {
    let answer = match on_data {
        None => http::exchange(client, url, headers, body, timeout, None).await?,
        Some(on_data) => {
            let mut parser = SseParser::default();
            let mut feed = |bytes: &[u8]| parser.feed(bytes, on_data);
            let answer =
                http::exchange(client, url, headers, body, timeout, Some(&mut feed)).await?;
            if answer.streamed {
                parser.finish(on_data)?;
            }
            answer
        }
    };
    check_model_status(&answer)?;
    Ok((!answer.streamed).then_some(answer.body))
}

/// HTTP 429, and 503 with a `Retry-After`, are rate limiting; other non-2xx are
/// [`AgentError::HttpStatus`].
fn check_model_status(answer: &Answer) -> Result<(), AgentError> {
    let status = answer.status.as_u16();
    if status == 429 || (status == 503 && answer.retry_after.is_some()) {
        return Err(AgentError::RateLimited {
            status,
            retry_after: answer
                .retry_after
                .as_deref()
                .and_then(|value| parse_retry_after(value, SystemTime::now())),
        });
    }
    answer.check_status()
}

/// `Retry-After` as delta-seconds (fractions accepted) or an HTTP date, capped at an hour;
/// `None` when it is neither.
pub(super) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => {
            Duration::try_from_secs_f64(secs).unwrap_or(MAX_RETRY_AFTER)
        }
        Ok(_) => return None,
        Err(_) => {
            let date = httpdate::parse_http_date(value).ok()?;
            date.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The API key as a header value, marked sensitive; the error names only the variable.
pub(super) fn key_header(value: &str, api_key_env: &str) -> Result<HeaderValue, AgentError> {
    let mut header = HeaderValue::from_str(value).map_err(|_| {
        AgentError::Provider(format!(
            "the value of {api_key_env} cannot be sent as an API key (not a valid header value)"
        ))
    })?;
    header.set_sensitive(true);
    Ok(header)
}

/// `error` with every occurrence of `secret` in its text replaced: a server may quote the
/// key it was sent in an error body, which the error's snippet would then repeat.
pub(super) fn redact(error: AgentError, secret: &str) -> AgentError {
    // A very short "key" would blank out ordinary words; such a key is not a secret anyway.
    if secret.len() < 8 {
        return error;
    }
    let clean = |text: String| text.replace(secret, "<redacted>");
    match error {
        AgentError::HttpStatus {
            status,
            body_snippet,
        } => AgentError::HttpStatus {
            status,
            body_snippet: clean(body_snippet),
        },
        AgentError::InvalidResponse(text) => AgentError::InvalidResponse(clean(text)),
        AgentError::Provider(text) => AgentError::Provider(clean(text)),
        AgentError::Connect(text) => AgentError::Connect(clean(text)),
        AgentError::Transport(text) => AgentError::Transport(clean(text)),
        other => other,
    }
}

/// A whole answer body as JSON.
pub(super) fn json_body(body: &[u8]) -> Result<Value, AgentError> {
    serde_json::from_slice(body).map_err(|_| {
        AgentError::InvalidResponse(format!(
            "the model answered with a body that is not JSON: {}",
            snippet(body)
        ))
    })
}

/// The `data` of one event as JSON.
pub(super) fn json_event(data: &str) -> Result<Value, AgentError> {
    serde_json::from_str(data).map_err(|_| {
        AgentError::InvalidResponse(format!(
            "the model's event stream carried data that is not JSON: {}",
            snippet(data.as_bytes())
        ))
    })
}

/// The arguments of a tool call, sent as JSON text (empty text means no arguments).
pub(super) fn parse_arguments(tool: &str, text: &str) -> Result<Value, AgentError> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_str(text).map_err(|_| {
        AgentError::InvalidResponse(format!(
            "the model called tool '{tool}' with arguments that are not JSON: {}",
            snippet(text.as_bytes())
        ))
    })
}

/// A count of tokens from a usage object (0 when absent).
pub(super) fn tokens(usage: &Value, field: &str) -> i64 {
    usage.get(field).and_then(Value::as_i64).unwrap_or(0)
}

/// For a stream request answered with a plain body: the deltas the stream would have given.
fn replay(reply: &ModelReply, sink: &mut (dyn FnMut(Delta) + Send)) {
    if !reply.content.is_empty() {
        sink(Delta::Text(reply.content.clone()));
    }
    for call in &reply.tool_calls {
        sink(Delta::ToolCallStart {
            id: call.id.clone(),
            name: call.name.clone(),
        });
    }
}

/// Server-Sent Events, fed as bytes arrive: each event's `data` lines (joined with `\n`)
/// go to the sink at the blank line that ends it. Lines end in `\n` or `\r\n`; `event`,
/// `id`, `retry` and comments are not needed by either provider and are skipped.
#[derive(Default)]
pub(super) struct SseParser {
    line: Vec<u8>,
    data: String,
    has_data: bool,
}

impl SseParser {
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        on_data: &mut dyn FnMut(&str) -> Result<(), AgentError>,
    ) -> Result<(), AgentError> {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&bytes[..end]);
            bytes = &bytes[end + 1..];
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.take_line(&line, on_data)?;
            line.clear();
            self.line = line;
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    /// The body ended: an event left without its blank line still counts.
    pub fn finish(
        &mut self,
        on_data: &mut dyn FnMut(&str) -> Result<(), AgentError>,
    ) -> Result<(), AgentError> {
        let line = std::mem::take(&mut self.line);
        self.take_line(&line, on_data)?;
        self.take_line(b"", on_data)
    }

    fn take_line(
        &mut self,
        line: &[u8],
        on_data: &mut dyn FnMut(&str) -> Result<(), AgentError>,
    ) -> Result<(), AgentError> {
        if line.is_empty() {
            if self.has_data {
                self.has_data = false;
                let data = std::mem::take(&mut self.data);
                on_data(&data)?;
            }
            return Ok(());
        }
        let line = std::str::from_utf8(line).map_err(|_| {
            AgentError::InvalidResponse("the model's event stream is not UTF-8".into())
        })?;
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        if field == "data" {
            if self.has_data {
                self.data.push('\n');
            }
            self.data.push_str(value);
            self.has_data = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&[u8]]) -> Vec<String> {
        let mut seen = Vec::new();
        let mut parser = SseParser::default();
        let mut sink = |data: &str| {
            seen.push(data.to_string());
            Ok(())
        };
        for chunk in chunks {
            parser.feed(chunk, &mut sink).unwrap();
        }
        parser.finish(&mut sink).unwrap();
        seen
    }

    #[test]
    fn events_are_split_on_blank_lines_whatever_the_chunks() {
        let body =
            b"event: a\ndata: {\"x\":1}\n\n: comment\ndata:two\r\ndata: lines\r\n\r\ndata: last";
        let expected = vec!["{\"x\":1}", "two\nlines", "last"];
        assert_eq!(events(&[body]), expected);
        let bytewise: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(events(&bytewise), expected);
        assert_eq!(events(&[b"id: 1\n\n\n"]), Vec::<String>::new());
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_capped_at_an_hour() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after(" 1.5 ", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_retry_after("86400", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        let in_30s = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&in_30s, now),
            Some(Duration::from_secs(30))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
    }

    #[test]
    fn tool_arguments_must_be_json_text() {
        assert_eq!(
            parse_arguments("t", " ").unwrap(),
            Value::Object(Default::default())
        );
        let err = parse_arguments("lookup", "{not json").unwrap_err();
        assert!(
            matches!(&err, AgentError::InvalidResponse(m) if m.contains("'lookup'")),
            "{err:?}"
        );
    }
}
