use crate::helpers::{fields, spawn_app, spawn_app_with_stream_lifetime, TestApp, ORG};
use diesel::prelude::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use shared_models::models::NewRunEvent;
use shared_models::schema::{run_events, runs};
use std::time::Duration;

/// The longest any stream in these tests may take to say what is asked of it.
const DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, PartialEq)]
struct Frame {
    id: i64,
    event: String,
    data: Value,
}

/// Parse complete SSE frames (`id:`, `event:`, `data:` lines ending in a blank line);
/// comments (`: keep-alive`) are skipped. Returns the frames and the unparsed rest.
fn parse_frames(text: &str) -> (Vec<Frame>, String) {
    let mut frames = Vec::new();
    let mut rest = text;
    while let Some(end) = rest.find("\n\n") {
        let block = &rest[..end];
        rest = &rest[end + 2..];
        let (mut id, mut event, mut data) = (None, None, None);
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.parse().expect("numeric id"));
            } else if let Some(v) = line.strip_prefix("event: ") {
                event = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = Some(serde_json::from_str(v).expect("JSON data"));
            } else {
                assert!(line.starts_with(':'), "unexpected line {line:?}");
            }
        }
        if let (Some(id), Some(event), Some(data)) = (id, event, data) {
            frames.push(Frame { id, event, data });
        }
    }
    (frames, rest.to_string())
}

async fn subscribe(app: &TestApp, run_id: &str, last_event_id: Option<&str>) -> reqwest::Response {
    let mut req = app
        .client
        .get(format!("{}/workflows/runs/{run_id}/events", app.address))
        .bearer_auth(&app.key);
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id);
    }
    req.send().await.expect("subscribe")
}

/// Read a stream to its end; the test fails if it has not ended by the deadline.
async fn read_to_end(res: reqwest::Response) -> Vec<Frame> {
    let text = tokio::time::timeout(DEADLINE, res.text())
        .await
        .expect("the stream ends once the run has ended")
        .expect("body");
    let (frames, rest) = parse_frames(&text);
    assert_eq!(rest, "", "the stream ends with a whole frame");
    frames
}

/// A run with a transition, a log line and two more transitions; returns the event ids.
fn with_history(app: &TestApp, status: &str) -> (String, Vec<i64>) {
    let wf = app.workflow_with(
        "w",
        json!({"steps": [{"name": "classify", "type": "agent", "agentId": "a", "instructions": "x"}]}),
    );
    let id = app.run_in(&wf, status);
    let now = shared_models::time::now();
    let ids = vec![
        app.event(NewRunEvent::transition(
            &id, now, None, "PENDING", "RUNNING",
        )),
        app.event(NewRunEvent::log(&id, now, None, "INFO", "run started")),
        app.event(NewRunEvent::transition(
            &id,
            now,
            Some("classify"),
            "PENDING",
            "RUNNING",
        )),
        app.event(NewRunEvent::transition(&id, now, None, "RUNNING", status)),
    ];
    (id, ids)
}

#[tokio::test]
async fn the_stream_of_an_ended_run_sends_its_history_in_order_and_ends() {
    let app = spawn_app().await;
    let (id, ids) = with_history(&app, "COMPLETED");
    let res = subscribe(&app, &id, None).await;
    assert_eq!(res.status(), 200);
    let header = |name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    assert_eq!(header("content-type").as_deref(), Some("text/event-stream"));
    assert_eq!(header("cache-control").as_deref(), Some("no-cache"));
    let frames = read_to_end(res).await;
    let run = app.get(&format!("/workflows/runs/{id}")).await.body["data"].clone();
    let (tr, logs) = (&run["transitions"], &run["logs"]);
    assert_eq!(
        frames,
        vec![
            Frame {
                id: ids[0],
                event: "transition".into(),
                data: tr[0].clone()
            },
            Frame {
                id: ids[1],
                event: "log".into(),
                data: logs[0].clone()
            },
            Frame {
                id: ids[2],
                event: "transition".into(),
                data: tr[1].clone()
            },
            Frame {
                id: ids[3],
                event: "transition".into(),
                data: tr[2].clone()
            },
        ],
        "the same objects as the run's transitions and logs"
    );
    assert_eq!(
        frames[2].data,
        json!({"at": frames[2].data["at"], "step": "classify", "from": "PENDING", "to": "RUNNING"})
    );
}

#[tokio::test]
async fn last_event_id_resumes_after_that_event() {
    let app = spawn_app().await;
    let (id, ids) = with_history(&app, "FAILED");
    let frames = read_to_end(subscribe(&app, &id, Some(&ids[1].to_string())).await).await;
    let got: Vec<i64> = frames.iter().map(|f| f.id).collect();
    assert_eq!(got, ids[2..]);
    let frames = read_to_end(subscribe(&app, &id, Some(&ids[3].to_string())).await).await;
    assert!(frames.is_empty(), "nothing after the last event");
    for bad in ["abc", "-1", "1.5"] {
        let res = subscribe(&app, &id, Some(bad)).await;
        assert_eq!(res.status(), 400, "{bad}");
        let body: Value = res.json().await.expect("envelope");
        assert_eq!(body["error"]["code"], "VALIDATION_ERROR");
        assert_eq!(fields(&body), ["Last-Event-ID"]);
    }
}

#[tokio::test]
async fn a_subscriber_gets_live_events_until_the_run_ends() {
    let app = spawn_app().await;
    let (id, ids) = with_history(&app, "RUNNING");
    let res = subscribe(&app, &id, None).await;
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let mut text = String::new();
    let mut frames = Vec::new();
    let read = async {
        // The history first; the stream stays open while the run runs.
        while frames.len() < ids.len() {
            let chunk = body.next().await.expect("open").expect("chunk");
            text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
            let (mut got, rest) = parse_frames(&text);
            frames.append(&mut got);
            text = rest;
        }
        // Then the worker writes: a step ends, the run ends, in one transaction.
        let now = shared_models::time::now();
        let live: Vec<i64> = app
            .conn()
            .transaction::<_, diesel::result::Error, _>(|conn| {
                diesel::update(runs::table.find(&id))
                    .set(runs::status.eq("COMPLETED"))
                    .execute(conn)?;
                diesel::insert_into(run_events::table)
                    .values(&vec![
                        NewRunEvent::transition(&id, now, Some("classify"), "RUNNING", "COMPLETED"),
                        NewRunEvent::log(&id, now, None, "INFO", "run completed"),
                    ])
                    .returning(run_events::id)
                    .get_results(conn)
            })
            .expect("the worker's writes");
        while let Some(chunk) = body.next().await {
            text.push_str(std::str::from_utf8(&chunk.expect("chunk")).expect("utf-8"));
        }
        let (mut got, rest) = parse_frames(&text);
        assert_eq!(rest, "");
        frames.append(&mut got);
        live
    };
    let live = tokio::time::timeout(DEADLINE, read)
        .await
        .expect("live events arrive and the stream ends with the run");
    let got: Vec<i64> = frames.iter().map(|f| f.id).collect();
    assert_eq!(got, [ids.clone(), live].concat());
    assert_eq!(frames[4].event, "transition");
    assert_eq!(frames[4].data["to"], "COMPLETED");
    assert_eq!(
        (frames[5].event.as_str(), &frames[5].data["message"]),
        ("log", &json!("run completed"))
    );
}

#[tokio::test]
async fn revoking_the_key_ends_an_open_stream() {
    let app = spawn_app().await;
    let (id, ids) = with_history(&app, "RUNNING");
    let res = subscribe(&app, &id, None).await;
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let mut text = String::new();
    let mut frames = Vec::new();
    while frames.len() < ids.len() {
        let chunk = body.next().await.expect("open").expect("chunk");
        text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        let (mut got, rest) = parse_frames(&text);
        frames.append(&mut got);
        text = rest;
    }
    // The run goes on; its subscriber's key is revoked.
    let revoked_at = std::time::Instant::now();
    diesel::update(shared_models::schema::api_keys::table.filter(
        shared_models::schema::api_keys::key_hash.eq(shared_models::auth::hash_key(&app.key)),
    ))
    .set(shared_models::schema::api_keys::revoked_at.eq(shared_models::time::now()))
    .execute(&mut app.conn())
    .expect("revoke");
    // The stream ends (within a deadline a loaded machine keeps; the key is checked every
    // second), though the run has not ended and the stream is far from its lifetime.
    let rest = tokio::time::timeout(DEADLINE, async {
        let mut rest = String::new();
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(c) => rest.push_str(&String::from_utf8_lossy(&c)),
                Err(_) => break,
            }
        }
        rest
    })
    .await
    .expect("the stream ends after its key is revoked, though the run has not ended");
    let took = revoked_at.elapsed();
    assert!(
        !rest.contains("event: reconnect"),
        "it ended at its lifetime, not for the revocation: {rest}"
    );
    // And the key opens no new stream.
    let again = subscribe(&app, &id, None).await;
    assert_eq!(again.status(), 401, "a revoked key opens no stream");
    println!("the stream ended {took:?} after its key was revoked");
}

/// Read frames from an open stream until `n` have come.
async fn frames_of(
    body: &mut (impl futures_util::Stream<Item = reqwest::Result<actix_web::web::Bytes>> + Unpin),
    n: usize,
) -> Vec<Frame> {
    let mut text = String::new();
    let mut frames = Vec::new();
    while frames.len() < n {
        let chunk = body.next().await.expect("open").expect("chunk");
        text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        let (mut got, rest) = parse_frames(&text);
        frames.append(&mut got);
        text = rest;
    }
    frames
}

#[tokio::test]
async fn streams_over_max_event_streams_are_429s_and_a_closed_one_frees_its_place() {
    let app = spawn_app().await;
    thygon_testkit::fixtures::set_limits(
        &mut app.conn(),
        ORG,
        &shared_models::limits::OrgLimitOverrides {
            max_event_streams: Some(2),
            ..Default::default()
        },
    );
    let (id, ids) = with_history(&app, "RUNNING");
    let mut first = subscribe(&app, &id, None).await.bytes_stream();
    let mut second = subscribe(&app, &id, None).await.bytes_stream();
    // Both are open (their history arrived).
    frames_of(&mut first, ids.len()).await;
    frames_of(&mut second, ids.len()).await;

    let third = subscribe(&app, &id, None).await;
    assert_eq!(third.status(), 429);
    let body: Value = third.json().await.expect("envelope");
    assert_eq!(body["error"]["code"], "QUOTA_EXCEEDED");
    assert_eq!(
        body["error"]["message"],
        "maxEventStreams (2) reached: 2 event streams are open with this API key"
    );
    // Another key of the org has places of its own.
    let other = app.key_for(ORG);
    let res = app
        .client
        .get(format!("{}/workflows/runs/{id}/events", app.address))
        .bearer_auth(&other)
        .send()
        .await
        .expect("subscribe");
    assert_eq!(res.status(), 200, "another key");
    drop(res);

    // The client goes away: its place is given back.
    drop(first);
    let reopened = tokio::time::timeout(DEADLINE, async {
        loop {
            let res = subscribe(&app, &id, None).await;
            if res.status() == 200 {
                return res;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("a place is free again once a stream has closed");
    frames_of(&mut reopened.bytes_stream(), ids.len()).await;
    drop(second);
}

#[tokio::test]
async fn a_stream_ends_at_its_lifetime_with_an_id_to_resume_from() {
    let app = spawn_app_with_stream_lifetime(Duration::from_secs(1)).await;
    let (id, ids) = with_history(&app, "RUNNING");
    let started = std::time::Instant::now();
    let frames = read_to_end(subscribe(&app, &id, None).await).await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "ended early"
    );
    let got: Vec<i64> = frames.iter().map(|f| f.id).collect();
    let last = *ids.last().unwrap();
    assert_eq!(got, [ids.clone(), vec![last]].concat(), "{frames:?}");
    let end = frames.last().unwrap();
    assert_eq!(end.event, "reconnect");
    assert_eq!(end.data["lastEventId"], last.to_string());
    assert!(
        end.data["reason"]
            .as_str()
            .unwrap()
            .contains("EVENT_STREAM_MAX_SECONDS"),
        "{}",
        end.data
    );

    // The run goes on; the client reconnects from the reconnect event's id and gets only
    // what came after.
    let later = app.event(NewRunEvent::log(
        &id,
        shared_models::time::now(),
        None,
        "INFO",
        "later",
    ));
    let frames = read_to_end(subscribe(&app, &id, Some(&last.to_string())).await).await;
    let got: Vec<(i64, &str)> = frames.iter().map(|f| (f.id, f.event.as_str())).collect();
    assert_eq!(got, [(later, "log"), (later, "reconnect")]);
}

/// Every frame's (event, data), id or not.
fn all_frames(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let event = block.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((
                event.to_string(),
                serde_json::from_str(data).expect("JSON data"),
            ))
        })
        .collect()
}

/// A live piece of step `classify`'s answer, as the worker writes it.
fn delta(app: &TestApp, run_id: &str, attempt: i32, kind: &str, data: Value) {
    shared_models::agent_journal::insert_delta(
        &mut app.conn(),
        run_id,
        "classify",
        attempt,
        kind,
        &data,
    )
    .expect("insert a live piece");
}

#[tokio::test]
async fn a_streaming_agents_pieces_go_out_live_in_order_without_ids() {
    let app = spawn_app().await;
    let (id, ids) = with_history(&app, "RUNNING");
    // Written before the stream opened: not sent (pieces are live only).
    delta(&app, &id, 1, "delta", json!({"turn": 1, "text": "old"}));
    let res = subscribe(&app, &id, None).await;
    let mut body = res.bytes_stream();
    let mut text = String::new();
    let read = async {
        while parse_frames(&text).0.len() < ids.len() {
            let chunk = body.next().await.expect("open").expect("chunk");
            text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        }
        delta(
            &app,
            &id,
            1,
            "delta",
            json!({"turn": 1, "text": "Hel", "toolCalls": [{"id": "c1", "name": "lookup"}]}),
        );
        delta(
            &app,
            &id,
            1,
            "delta",
            json!({"turn": 1, "toolResult": {"id": "c1", "name": "lookup", "isError": false}}),
        );
        delta(&app, &id, 2, "reset", json!({"attempt": 2}));
        delta(&app, &id, 2, "delta", json!({"turn": 2, "text": "lo"}));
        // Then the run ends.
        diesel::update(runs::table.find(&id))
            .set(runs::status.eq("COMPLETED"))
            .execute(&mut app.conn())
            .unwrap();
        app.event(NewRunEvent::transition(
            &id,
            shared_models::time::now(),
            None,
            "RUNNING",
            "COMPLETED",
        ));
        while let Some(chunk) = body.next().await {
            text.push_str(std::str::from_utf8(&chunk.expect("chunk")).expect("utf-8"));
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("the stream ends with the run");
    let pieces: Vec<(String, Value)> = all_frames(&text)
        .into_iter()
        .filter(|(event, _)| event.starts_with("agent."))
        .collect();
    assert_eq!(
        pieces,
        vec![
            (
                "agent.delta".to_string(),
                json!({"step": "classify", "attempt": 1, "turn": 1, "text": "Hel", "toolCalls": [{"id": "c1", "name": "lookup"}]})
            ),
            (
                "agent.delta".to_string(),
                json!({"step": "classify", "attempt": 1, "turn": 1, "toolResult": {"id": "c1", "name": "lookup", "isError": false}})
            ),
            (
                "agent.reset".to_string(),
                json!({"step": "classify", "attempt": 2})
            ),
            (
                "agent.delta".to_string(),
                json!({"step": "classify", "attempt": 2, "turn": 2, "text": "lo"})
            ),
        ]
    );
    assert!(
        !text.contains("old"),
        "a piece from before the stream opened is not sent"
    );
    // The frames with ids are the transitions and logs, as before.
    assert_eq!(parse_frames(&text).0.len(), ids.len() + 1);
}
