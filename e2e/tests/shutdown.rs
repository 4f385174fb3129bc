//! SIGTERM on runtime-service with event streams open (docs/OPERATIONS.md "Shutdown"): the
//! process exits 0 within its shutdown grace, every open stream ends (the client sees the end,
//! it does not hang), and ordinary requests are answered whole or refused, never cut.

use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thygon_e2e::{Stack, StackOptions};

/// The services give requests in flight up to 10 s (`shutdown_timeout`); twice that and
/// more, for a loaded machine.
const EXIT_WITHIN: Duration = Duration::from_secs(40);

#[tokio::test]
async fn sigterm_with_event_streams_open_ends_them_and_exits_cleanly() {
    let mut stack = Stack::start_opts(StackOptions {
        workers: 0,
        ..StackOptions::default()
    })
    .await;
    stack
        .create_workflow(
            "streamed",
            json!({"steps": [{"name": "only", "type": "transform", "value": 1}]}),
        )
        .await;
    // No worker: the run stays PENDING, so its streams stay open.
    let run = stack.trigger("wf_streamed", json!({})).await;
    let runtime = stack.runtime_url(0);

    let mut streams = Vec::new();
    for _ in 0..3 {
        let res = stack
            .client
            .get(format!("{runtime}/workflows/runs/{run}/events"))
            .send()
            .await
            .expect("open the event stream");
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("text/event-stream")
        );
        streams.push(res);
    }
    // Ordinary requests keep coming while the process stops.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let requests = {
        let (client, stop, count) = (stack.client.clone(), stop.clone(), answered.clone());
        let url = format!("{runtime}/workflows/runs/{run}");
        tokio::spawn(async move {
            let (mut answered, mut refused) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                match client.get(&url).send().await {
                    Ok(res) => {
                        let status = res.status().as_u16();
                        // Headers came: the body must come whole.
                        let text = res.text().await.expect("a response cut mid-body");
                        let body: serde_json::Value = serde_json::from_str(&text)
                            .unwrap_or_else(|_| panic!("{status}: cut or not JSON: {text:?}"));
                        assert!(status == 200 || status == 503, "{status} {body}");
                        answered += 1;
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        assert!(e.is_connect() || e.is_request(), "{e}");
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (answered, refused)
        })
    };

    // Premise: the requests are being answered when the signal comes.
    let deadline = Instant::now() + Duration::from_secs(30);
    while answered.load(Ordering::Relaxed) < 3 {
        assert!(
            Instant::now() < deadline,
            "no request answered before SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sent = Instant::now();
    stack.signal("runtime-service", "TERM");
    let readers = streams.into_iter().map(|mut res| async move {
        let mut text = String::new();
        let end = loop {
            match res.chunk().await {
                Ok(Some(bytes)) => text.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(None) => break Ok(()),
                Err(e) => break Err(e.to_string()),
            }
        };
        (end, text)
    });
    let ends = tokio::time::timeout(EXIT_WITHIN, futures_util::future::join_all(readers))
        .await
        .expect("an event stream still open 40 s after SIGTERM");
    let status = stack
        .wait_exit("runtime-service", EXIT_WITHIN)
        .await
        .expect("runtime-service still runs 40 s after SIGTERM");
    stop.store(true, Ordering::Relaxed);
    let (answered, refused) = requests.await.expect("the request loop");
    println!(
        "exit {status} after {:.1} s; streams: {ends:?}; requests answered {answered}, refused {refused}",
        sent.elapsed().as_secs_f64()
    );
    assert!(
        status.success(),
        "runtime-service exited {status}:\n{}",
        stack.log_tail("runtime-service")
    );
    for (end, text) in &ends {
        assert_eq!(end, &Ok(()), "a stream was cut, not ended: {text:?}");
        // The stream was open until the process stopped, and says so (docs/API.md).
        assert!(
            text.contains("event: reconnect") && text.contains("the server is stopping"),
            "no reconnect event: {text:?}"
        );
    }
    assert!(answered > 0, "no ordinary request was answered");
}
