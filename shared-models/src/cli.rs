//! The subcommands every binary answers besides serving, so that containers need no tools of
//! their own (no curl, no shell) for their health checks and hooks:
//!
//! - `<bin> healthcheck`: `GET /readyz` on the loopback, at the port of `HTTP_ADDR`, within
//!   [`HEALTHCHECK_TIMEOUT`]; exits 0 iff the answer is 200 (compose healthchecks run
//!   `["CMD", "/usr/local/bin/<bin>", "healthcheck"]`).
//! - `<bin> prestop`: sleeps `PRESTOP_DRAIN_SECONDS` (default 5, at most 60) and exits 0. As a
//!   Kubernetes preStop hook it holds SIGTERM back while the pod's endpoints are removed from
//!   its Services, so no new request is routed to a process that is about to stop taking them.
//!
//! Every `main()` starts with [`dispatch`]; a binary's own subcommands (`workflow-service
//! migrate`) pass through it.

use crate::config::{env_or, env_seconds};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How long `healthcheck` waits for `/readyz`, connect to answer.
pub(crate) const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// `PRESTOP_DRAIN_SECONDS` when unset.
pub(crate) const DEFAULT_PRESTOP_DRAIN_SECONDS: f64 = 5.0;
/// The longest `prestop` sleeps: past it, the pod's termination grace period (30 s by default,
/// counted from the start of the hook) would kill the process before it drained.
pub(crate) const MAX_PRESTOP_DRAIN_SECONDS: f64 = 60.0;

const SUBCOMMANDS: [&str; 2] = ["healthcheck", "prestop"];

/// Run the subcommand the first argument names: `Some(exit code)` when it ran (or the
/// argument is no subcommand this binary knows), `None` when the process goes on to serve (no
/// argument, or one of `own`, which the binary handles itself). Serving, it checks
/// `PRESTOP_DRAIN_SECONDS` first, so a bad value stops the process at start rather than
/// failing the hook at shutdown. `default_http_addr`: the binary's `HTTP_ADDR` default.
pub fn dispatch(default_http_addr: &str, own: &[&str]) -> Option<ExitCode> {
    let arg = std::env::args().nth(1);
    match arg.as_deref() {
        Some("healthcheck") => Some(healthcheck(&env_or("HTTP_ADDR", default_http_addr))),
        Some("prestop") => Some(prestop()),
        Some(other) if !own.contains(&other) => {
            let known: Vec<&str> = SUBCOMMANDS.iter().chain(own).copied().collect();
            log::error!(
                "unknown subcommand {other:?} (known: {}; none to serve)",
                known.join(", ")
            );
            Some(ExitCode::FAILURE)
        }
        _ => match prestop_drain_from_env() {
            Ok(_) => None,
            Err(e) => {
                log::error!("configuration: {e}");
                Some(ExitCode::FAILURE)
            }
        },
    }
}

/// `healthcheck`: 0 iff `GET /readyz` at the loopback port of `http_addr` answers 200.
fn healthcheck(http_addr: &str) -> ExitCode {
    match probe_readyz(http_addr, HEALTHCHECK_TIMEOUT) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(status) => {
            log::error!("healthcheck: GET /readyz answered {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            log::error!("healthcheck: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `prestop`: sleep `PRESTOP_DRAIN_SECONDS`, then 0.
fn prestop() -> ExitCode {
    match prestop_drain_from_env() {
        Ok(drain) => {
            log::info!("prestop: waiting {drain:?} for the endpoints to be removed");
            std::thread::sleep(drain);
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("prestop: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `PRESTOP_DRAIN_SECONDS`: default [`DEFAULT_PRESTOP_DRAIN_SECONDS`], at most
/// [`MAX_PRESTOP_DRAIN_SECONDS`].
pub(crate) fn prestop_drain_from_env() -> Result<Duration, String> {
    checked_drain(env_seconds(
        "PRESTOP_DRAIN_SECONDS",
        DEFAULT_PRESTOP_DRAIN_SECONDS,
    )?)
}

fn checked_drain(drain: Duration) -> Result<Duration, String> {
    if drain.as_secs_f64() > MAX_PRESTOP_DRAIN_SECONDS {
        return Err(format!(
            "environment variable PRESTOP_DRAIN_SECONDS must be at most {MAX_PRESTOP_DRAIN_SECONDS} seconds"
        ));
    }
    Ok(drain)
}

/// The loopback address at the port of `http_addr` (`0.0.0.0:8081` -> `127.0.0.1:8081`;
/// `[::1]:8081` -> `[::1]:8081`). The probe never leaves the machine, whatever the host part.
fn loopback_target(http_addr: &str) -> Result<SocketAddr, String> {
    let (host, port) = http_addr
        .rsplit_once(':')
        .ok_or_else(|| format!("HTTP_ADDR={http_addr:?} has no port"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("HTTP_ADDR={http_addr:?} has no fixed port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) if v6 == Ipv6Addr::LOCALHOST => IpAddr::V6(Ipv6Addr::LOCALHOST),
        _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    Ok(SocketAddr::new(ip, port))
}

/// The status of `GET /readyz` at the loopback port of `http_addr`, all within `timeout`.
pub(crate) fn probe_readyz(http_addr: &str, timeout: Duration) -> Result<u16, String> {
    let target = loopback_target(http_addr)?;
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("no answer from {target} within {timeout:?}"))
    };
    let mut stream = TcpStream::connect_timeout(&target, left()?)
        .map_err(|e| format!("cannot connect to {target}: {e}"))?;
    stream
        .set_write_timeout(Some(left()?))
        .and_then(|()| {
            stream
                .write_all(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        })
        .map_err(|e| format!("cannot send to {target}: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        stream
            .set_read_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                left()?;
            }
            Err(e) => return Err(format!("cannot read from {target}: {e}")),
        }
    }
    status_of(&head).ok_or_else(|| format!("{target} did not answer HTTP"))
}

/// `HTTP/1.1 200 OK\r\n...` -> 200.
fn status_of(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn the_probe_goes_to_the_loopback_at_the_port_of_http_addr() {
        let v4 = |s: &str| loopback_target(s).map(|a| a.to_string());
        assert_eq!(v4("0.0.0.0:8081").as_deref(), Ok("127.0.0.1:8081"));
        assert_eq!(v4("10.1.2.3:8082").as_deref(), Ok("127.0.0.1:8082"));
        assert_eq!(v4("localhost:8083").as_deref(), Ok("127.0.0.1:8083"));
        assert_eq!(v4("[::]:8081").as_deref(), Ok("127.0.0.1:8081"));
        assert_eq!(v4("[::1]:8081").as_deref(), Ok("[::1]:8081"));
        assert!(v4("127.0.0.1:0").is_err(), "no fixed port");
        assert!(v4("127.0.0.1").is_err());
        assert!(v4("127.0.0.1:http").is_err());
    }

    /// A server on the loopback that answers one connection with `answer` (nothing: it reads
    /// and stays silent until the client gives up).
    fn one_shot_server(answer: Option<&'static str>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let n = conn.read(&mut request).unwrap_or(0);
            assert!(request[..n].starts_with(b"GET /readyz HTTP/1.1\r\n"));
            match answer {
                Some(text) => {
                    let _ = conn.write_all(text.as_bytes());
                }
                None => std::thread::sleep(Duration::from_secs(3)),
            }
        });
        addr
    }

    #[test]
    fn the_probe_reports_the_status_of_readyz() {
        let ok = one_shot_server(Some("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"));
        assert_eq!(probe_readyz(&ok, HEALTHCHECK_TIMEOUT), Ok(200));
        let down = one_shot_server(Some("HTTP/1.1 503 Service Unavailable\r\n\r\n"));
        assert_eq!(probe_readyz(&down, HEALTHCHECK_TIMEOUT), Ok(503));
        let junk = one_shot_server(Some("SSH-2.0-OpenSSH\r\n"));
        assert!(probe_readyz(&junk, HEALTHCHECK_TIMEOUT).is_err());
    }

    #[test]
    fn the_probe_gives_up_at_its_timeout() {
        let silent = one_shot_server(None);
        let started = Instant::now();
        let result = probe_readyz(&silent, Duration::from_millis(300));
        assert!(result.is_err(), "{result:?}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "{took:?}"
        );
        // Nothing listens there any more once the listener is gone.
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        assert!(probe_readyz(&closed, HEALTHCHECK_TIMEOUT).is_err());
    }

    #[test]
    fn the_drain_is_at_most_a_minute() {
        assert_eq!(
            checked_drain(Duration::from_secs(60)),
            Ok(Duration::from_secs(60))
        );
        assert_eq!(checked_drain(Duration::ZERO), Ok(Duration::ZERO));
        let err = checked_drain(Duration::from_secs_f64(60.5)).unwrap_err();
        assert!(err.contains("PRESTOP_DRAIN_SECONDS"), "{err}");
    }
}
