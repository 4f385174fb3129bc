//! Stand-in HTTP listeners on loopback: each answers every request with a JSON body naming
//! itself and what it got (`{"upstream", "method", "path"}`), records the request, and, when
//! made [`StandIn::gated`], holds every answer until [`StandIn::open`]. The gateway test
//! puts them where the services would be; the replica tests use one as an `http` step's
//! endpoint that hangs until told.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One request a stand-in received.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    /// The request target as sent (path and query).
    pub path: String,
    /// Header names lowercased.
    pub headers: HashMap<String, String>,
}

pub struct StandIn {
    /// `127.0.0.1:<port>`
    pub addr: String,
    received: Arc<Mutex<Vec<Received>>>,
    gate: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl StandIn {
    /// A stand-in called `name` that answers at once.
    pub async fn start(name: &str) -> StandIn {
        Self::with_gate(name, true).await
    }

    /// A stand-in that holds every answer until [`StandIn::open`].
    pub async fn gated(name: &str) -> StandIn {
        Self::with_gate(name, false).await
    }

    async fn with_gate(name: &str, open: bool) -> StandIn {
        let listener = TcpListener::bind(("127.0.0.1", crate::free_port()))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let received = Arc::new(Mutex::new(Vec::new()));
        let (gate, _) = watch::channel(open);
        let (name, log, opened) = (name.to_string(), received.clone(), gate.subscribe());
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (name, log, opened) = (name.clone(), log.clone(), opened.clone());
                tokio::spawn(serve(socket, name, log, opened));
            }
        });
        StandIn {
            addr,
            received,
            gate,
            task,
        }
    }

    /// Answer the requests held and every later one at once.
    pub fn open(&self) {
        self.gate.send_replace(true);
    }

    /// Every request received so far, in order of arrival.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Read one request (headers, then a `Content-Length` body), record it, wait for the gate,
/// answer and close.
async fn serve(
    mut socket: TcpStream,
    name: String,
    log: Arc<Mutex<Vec<Received>>>,
    mut opened: watch::Receiver<bool>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let path = first.next().unwrap_or_default().to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    log.lock().expect("lock").push(Received {
        method: method.clone(),
        path: path.clone(),
        headers,
    });
    if opened.wait_for(|open| *open).await.is_err() {
        return;
    }
    let body = serde_json::json!({"upstream": name, "method": method, "path": path}).to_string();
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = socket.write_all(answer.as_bytes()).await;
    let _ = socket.shutdown().await;
}
