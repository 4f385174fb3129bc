//! The operator's allow list (`EGRESS_ALLOW`) and the decisions over a URL or a resolved
//! name.

use super::ranges::{canonical, classify, same_prefix_v4, same_prefix_v6, Blocked};
use super::ALLOW_VAR;
use reqwest::Url;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Why a call was refused. Its text is the step's error, word for word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("egress to {target} refused ({reason}); EGRESS_ALLOW lists exceptions")]
pub struct EgressRefused {
    /// `127.0.0.1:8082`, `[::1]:8082`, `localhost (127.0.0.1)` (a resolved name: the
    /// resolver is not told the port), or `host:port`.
    pub target: String,
    pub reason: Refusal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The address is in a refused range.
    Range(Blocked),
    /// `EGRESS_ALLOW` lists the name, but only with other ports.
    UnlistedPort,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Range(blocked) => blocked.fmt(f),
            Refusal::UnlistedPort => f.write_str("not a port EGRESS_ALLOW lists for this host"),
        }
    }
}

/// A redirect chain longer than the client allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stopped after {max} redirects (HTTP_MAX_REDIRECTS)")]
pub struct TooManyRedirects {
    pub max: usize,
}

/// One `EGRESS_ALLOW` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Allow {
    /// An address (prefix 32 or 128) or a network, on every port.
    Net { net: IpAddr, prefix: u8 },
    /// One address on one port.
    Socket { ip: IpAddr, port: u16 },
    /// A name (lowercase, no trailing dot), on every port or on one.
    Host { name: String, port: Option<u16> },
}

impl Allow {
    fn contains_ip(&self, ip: IpAddr) -> bool {
        match (self, ip) {
            (
                Allow::Net {
                    net: IpAddr::V4(net),
                    prefix,
                },
                IpAddr::V4(ip),
            ) => same_prefix_v4(u32::from(ip), u32::from(*net), *prefix),
            (
                Allow::Net {
                    net: IpAddr::V6(net),
                    prefix,
                },
                IpAddr::V6(ip),
            ) => same_prefix_v6(u128::from(ip), u128::from(*net), *prefix),
            _ => false,
        }
    }
}

/// A bad `EGRESS_ALLOW` entry: the process refuses to start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "EGRESS_ALLOW: '{entry}' {problem} (expected host, host:port, an address, [IPv6]:port or a CIDR such as 10.0.0.0/8)"
)]
pub struct AllowListError {
    pub entry: String,
    pub problem: String,
}

/// The operator's exceptions to the refused ranges (`EGRESS_ALLOW`).
///
/// - `10.0.0.0/8`, `fd00::/8`: every address of the network, on every port, whether the
///   URL writes the address or a name resolves to it.
/// - `127.0.0.1`, `::1`, `[::1]`: that address on every port, likewise.
/// - `127.0.0.1:9000`, `[::1]:8080`: that address on that port, when the URL writes the
///   address (the resolver is not told the port, so a name resolving to it stays refused
///   unless the name is listed).
/// - `hooks.internal`, `hooks.internal:8443`: that exact name (no subdomains, no
///   wildcards), whatever it resolves to; with a port, on that port only.
///
/// An empty policy refuses every range of [`classify`]. `0.0.0.0/0,::/0` turns it off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    allow: Vec<Allow>,
}

impl EgressPolicy {
    /// `EGRESS_ALLOW` from the environment (unset or blank: no exceptions).
    pub fn from_env() -> Result<Self, AllowListError> {
        Self::parse(&std::env::var(ALLOW_VAR).unwrap_or_default())
    }

    /// A comma-separated list; blanks between commas are ignored.
    pub fn parse(list: &str) -> Result<Self, AllowListError> {
        let allow = list
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                parse_entry(entry).map_err(|problem| AllowListError {
                    entry: entry.to_string(),
                    problem,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { allow })
    }

    /// True when nothing is excepted.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty()
    }

    /// Decide a URL before it is requested (and at every redirect hop): an address literal
    /// is decided here with its port; a name is decided here only for its port when
    /// `EGRESS_ALLOW` lists it, and otherwise by [`EgressResolver`] at connect.
    pub fn check_url(&self, url: &Url) -> Result<(), EgressRefused> {
        let Some(host) = url.host_str() else {
            return Ok(());
        };
        let port = url.port_or_known_default().unwrap_or(0);
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        match bare.parse::<IpAddr>() {
            Ok(ip) => self.check_socket(ip, port),
            Err(_) => self.check_name_port(host, port),
        }
    }

    /// Decide a connection to `ip:port`.
    pub(crate) fn check_socket(&self, ip: IpAddr, port: u16) -> Result<(), EgressRefused> {
        let ip = canonical(ip);
        let listed = self.allow.iter().any(|a| match a {
            Allow::Socket {
                ip: allowed,
                port: p,
            } => *allowed == ip && *p == port,
            other => other.contains_ip(ip),
        });
        match classify(ip) {
            Some(blocked) if !listed => Err(EgressRefused {
                target: SocketAddr::new(ip, port).to_string(),
                reason: Refusal::Range(blocked),
            }),
            _ => Ok(()),
        }
    }

    /// A listed name with ports is reachable on those ports only; an unlisted name is left
    /// to the resolver.
    fn check_name_port(&self, host: &str, port: u16) -> Result<(), EgressRefused> {
        let name = normal_name(host);
        let mut ports = self.allow.iter().filter_map(|a| match a {
            Allow::Host { name: n, port: p } if *n == name => Some(*p),
            _ => None,
        });
        let mut listed = false;
        let open = ports.any(|p| {
            listed = true;
            p.is_none() || p == Some(port)
        });
        if listed && !open {
            return Err(EgressRefused {
                target: format!("{name}:{port}"),
                reason: Refusal::UnlistedPort,
            });
        }
        Ok(())
    }

    /// The addresses `name` resolved to that may be connected to: all of them when the name
    /// is listed (its port was checked on the URL), else those outside every refused range
    /// or inside a listed network. None left: refused, naming the first address dropped.
    pub(crate) fn filter_resolved(
        &self,
        name: &str,
        addrs: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, EgressRefused> {
        let name = normal_name(name);
        if self
            .allow
            .iter()
            .any(|a| matches!(a, Allow::Host { name: n, .. } if *n == name))
        {
            return Ok(addrs);
        }
        let mut first_refused = None;
        let kept: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|addr| {
                let ip = canonical(addr.ip());
                match classify(ip) {
                    Some(_) if self.allow.iter().any(|a| a.contains_ip(ip)) => true,
                    Some(blocked) => {
                        first_refused.get_or_insert((ip, blocked));
                        false
                    }
                    None => true,
                }
            })
            .collect();
        match first_refused {
            Some((ip, blocked)) if kept.is_empty() => Err(EgressRefused {
                target: format!("{name} ({ip})"),
                reason: Refusal::Range(blocked),
            }),
            _ => Ok(kept),
        }
    }
}

fn normal_name(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn parse_entry(entry: &str) -> Result<Allow, String> {
    if let Some((addr, len)) = entry.split_once('/') {
        return parse_cidr(addr, len);
    }
    if let Some(rest) = entry.strip_prefix('[') {
        let (addr, after) = rest
            .split_once(']')
            .ok_or_else(|| "has '[' without ']'".to_string())?;
        let ip = canonical(IpAddr::V6(
            addr.parse::<Ipv6Addr>()
                .map_err(|_| "is not an IPv6 address in brackets".to_string())?,
        ));
        return match after {
            "" => Ok(single(ip)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok(Allow::Socket {
                    ip,
                    port: parse_port(port)?,
                }),
                None => Err("has text after ']' that is not ':port'".into()),
            },
        };
    }
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Ok(single(canonical(ip)));
    }
    let (host, port) = match entry.rsplit_once(':') {
        Some((host, port)) => (host, Some(parse_port(port)?)),
        None => (entry, None),
    };
    if host.contains(':') {
        return Err("looks like an IPv6 address with a port: write it [address]:port".into());
    }
    // The URL parser's view of the host, so that an entry is spelled as URLs are compared:
    // `2130706433` is 127.0.0.1, names are lowercase and punycode.
    let parsed = Url::parse(&format!("http://{host}/"))
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .ok_or_else(|| "is not a host name".to_string())?;
    if let Ok(ip) = parsed.parse::<IpAddr>() {
        let ip = canonical(ip);
        return Ok(match port {
            Some(port) => Allow::Socket { ip, port },
            None => single(ip),
        });
    }
    let name = normal_name(&parsed);
    let valid = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !valid {
        return Err("is not a host name (letters, digits, '-' and '.'; no wildcards)".into());
    }
    Ok(Allow::Host { name, port })
}

fn single(ip: IpAddr) -> Allow {
    let prefix = if ip.is_ipv4() { 32 } else { 128 };
    Allow::Net { net: ip, prefix }
}

fn parse_cidr(addr: &str, len: &str) -> Result<Allow, String> {
    let addr = addr
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(addr);
    let net: IpAddr = addr
        .parse()
        .map_err(|_| "is not a CIDR: the part before '/' is not an address".to_string())?;
    let max: u8 = if net.is_ipv4() { 32 } else { 128 };
    let prefix = len
        .parse::<u8>()
        .ok()
        .filter(|p| *p <= max)
        .ok_or_else(|| format!("is not a CIDR: the prefix length must be from 0 to {max}"))?;
    Ok(Allow::Net { net, prefix })
}

fn parse_port(port: &str) -> Result<u16, String> {
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("has port '{port}': a port is a number from 1 to 65535"))
}
