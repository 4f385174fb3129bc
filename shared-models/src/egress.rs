//! The egress policy: which addresses an outbound call whose target a tenant decides (an
//! `http` step's URL today; callbacks and agent tools later) may reach.
//!
//! Thygon's workers run inside the operator's network, so a URL a tenant writes must not
//! reach what only that network can: the worker's own host, the other services, the
//! broker's management API, a cloud VM's metadata service. Every address in a range of
//! [`classify`] is refused unless the operator lists it in `EGRESS_ALLOW` ([`EgressPolicy`]).
//!
//! Where it is decided, so that no spelling and no DNS answer gets around it:
//! - On the URL, before the request is sent and again at every redirect hop
//!   ([`EgressPolicy::check_url`], [`redirect_policy`]). The URL is parsed the WHATWG way
//!   (`reqwest::Url`), which already turns every numeric spelling (`2130706433`,
//!   `0177.0.0.1`, `0x7f.1`, `127.1`) into the dotted address that is then classified. An
//!   address-literal host never reaches a resolver, so this is where literals are decided.
//! - On the addresses a name resolves to, in the client's resolver ([`EgressResolver`]):
//!   refused addresses are dropped from the answer, so the connection can only be made to
//!   an address that was checked (`localhost`, a name that resolves inside, or an answer that
//!   changes between a check and the connect are all refused).
//!
//! Ranges refused beyond the ones every deployment must refuse (loopback, unspecified,
//! private, link-local, CGNAT, multicast, broadcast) and why:
//! - `240.0.0.0/4` and `192.88.99.0/24` (reserved / the retired 6to4 relay anycast),
//!   `192.0.0.0/24` (IETF protocol assignments: DS-Lite, NAT64 discovery, ...), the IPv6
//!   `::/8` block outside the forms below, Teredo `2001::/32` and local-use NAT64
//!   `64:ff9b:1::/48`: none is a public service; some reach a host's own tunnel or
//!   translator endpoints.
//! - Documentation (`192.0.2.0/24`, `198.51.100.0/24`, `203.0.113.0/24`, `2001:db8::/32`,
//!   `3fff::/20`), benchmarking (`198.18.0.0/15`, `2001:2::/48`) and discard-only
//!   (`100::/64`): never routed on the Internet, so only a private network would answer.
//! - Deprecated site-local `fec0::/10`, treated as private.
//!
//! IPv6 forms that carry an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible
//! `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are classified by the address they
//! carry.

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// The environment variable listing the operator's exceptions.
pub const ALLOW_VAR: &str = "EGRESS_ALLOW";

/// The range a refused address falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    Loopback,
    Unspecified,
    Private,
    LinkLocal,
    /// 100.64.0.0/10, shared address space (RFC 6598).
    Cgnat,
    Multicast,
    Broadcast,
    Reserved,
    Documentation,
    Benchmarking,
    Discard,
}

impl Blocked {
    pub fn as_str(self) -> &'static str {
        match self {
            Blocked::Loopback => "loopback",
            Blocked::Unspecified => "unspecified",
            Blocked::Private => "private",
            Blocked::LinkLocal => "link-local",
            Blocked::Cgnat => "carrier-grade NAT",
            Blocked::Multicast => "multicast",
            Blocked::Broadcast => "broadcast",
            Blocked::Reserved => "reserved",
            Blocked::Documentation => "documentation",
            Blocked::Benchmarking => "benchmarking",
            Blocked::Discard => "discard-only",
        }
    }
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// IPv4 ranges, first match wins (broadcast before the reserved 240/4 that holds it).
const V4_RANGES: &[([u8; 4], u8, Blocked)] = &[
    ([0, 0, 0, 0], 8, Blocked::Unspecified),
    ([10, 0, 0, 0], 8, Blocked::Private),
    ([100, 64, 0, 0], 10, Blocked::Cgnat),
    ([127, 0, 0, 0], 8, Blocked::Loopback),
    ([169, 254, 0, 0], 16, Blocked::LinkLocal),
    ([172, 16, 0, 0], 12, Blocked::Private),
    ([192, 0, 0, 0], 24, Blocked::Reserved),
    ([192, 0, 2, 0], 24, Blocked::Documentation),
    ([192, 88, 99, 0], 24, Blocked::Reserved),
    ([192, 168, 0, 0], 16, Blocked::Private),
    ([198, 18, 0, 0], 15, Blocked::Benchmarking),
    ([198, 51, 100, 0], 24, Blocked::Documentation),
    ([203, 0, 113, 0], 24, Blocked::Documentation),
    ([224, 0, 0, 0], 4, Blocked::Multicast),
    ([255, 255, 255, 255], 32, Blocked::Broadcast),
    ([240, 0, 0, 0], 4, Blocked::Reserved),
];

/// IPv6 ranges checked after the exact addresses and the IPv4-carrying forms.
const V6_RANGES: &[([u16; 8], u8, Blocked)] = &[
    ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, Blocked::Private),
    ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, Blocked::Private),
    ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, Blocked::LinkLocal),
    ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, Blocked::Multicast),
    (
        [0x2001, 0x0db8, 0, 0, 0, 0, 0, 0],
        32,
        Blocked::Documentation,
    ),
    ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, Blocked::Documentation),
    (
        [0x2001, 0x0002, 0, 0, 0, 0, 0, 0],
        48,
        Blocked::Benchmarking,
    ),
    ([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, Blocked::Reserved),
    ([0x0100, 0, 0, 0, 0, 0, 0, 0], 64, Blocked::Discard),
    (
        [0x0064, 0xff9b, 0x0001, 0, 0, 0, 0, 0],
        48,
        Blocked::Private,
    ),
    ([0, 0, 0, 0, 0, 0, 0, 0], 8, Blocked::Reserved),
];

/// The range `ip` falls in if it is refused by default, or `None` for an address the
/// Internet routes.
pub fn classify(ip: IpAddr) -> Option<Blocked> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<Blocked> {
    let bits = u32::from(ip);
    V4_RANGES
        .iter()
        .find(|(net, prefix, _)| same_prefix_v4(bits, u32::from_be_bytes(*net), *prefix))
        .map(|(_, _, blocked)| *blocked)
}

fn classify_v6(ip: Ipv6Addr) -> Option<Blocked> {
    if ip.is_unspecified() {
        return Some(Blocked::Unspecified);
    }
    if ip.is_loopback() {
        return Some(Blocked::Loopback);
    }
    if let Some((v4, compatible)) = embedded_v4(ip) {
        // The deprecated IPv4-compatible form routes nowhere public even when its IPv4
        // address would.
        return classify_v4(v4).or(compatible.then_some(Blocked::Reserved));
    }
    let bits = u128::from(ip);
    V6_RANGES
        .iter()
        .find(|(net, prefix, _)| same_prefix_v6(bits, u128::from(Ipv6Addr::from(*net)), *prefix))
        .map(|(_, _, blocked)| *blocked)
}

/// The IPv4 address an IPv6 address carries, for the forms that carry one (mapped, NAT64,
/// 6to4, and IPv4-compatible, flagged `true`).
fn embedded_v4(ip: Ipv6Addr) -> Option<(Ipv4Addr, bool)> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some((v4, false));
    }
    let bits = u128::from(ip);
    let low = Ipv4Addr::from(bits as u32);
    if same_prefix_v6(
        bits,
        u128::from(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0)),
        96,
    ) {
        return Some((low, false));
    }
    if same_prefix_v6(bits, 0, 96) {
        return Some((low, true));
    }
    if same_prefix_v6(
        bits,
        u128::from(Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0)),
        16,
    ) {
        return Some((Ipv4Addr::from((bits >> 80) as u32), false));
    }
    None
}

fn same_prefix_v4(a: u32, b: u32, prefix: u8) -> bool {
    let shift = 32 - u32::from(prefix.min(32));
    a.checked_shr(shift).unwrap_or(0) == b.checked_shr(shift).unwrap_or(0)
}

fn same_prefix_v6(a: u128, b: u128, prefix: u8) -> bool {
    let shift = 128 - u32::from(prefix.min(128));
    a.checked_shr(shift).unwrap_or(0) == b.checked_shr(shift).unwrap_or(0)
}

/// An IPv4-mapped IPv6 address is the IPv4 address it maps: one allow entry covers both.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

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
    pub fn check_socket(&self, ip: IpAddr, port: u16) -> Result<(), EgressRefused> {
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
    pub fn filter_resolved(
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

/// A resolver that drops every address the policy refuses from the answer of `inner`, so
/// a connection is only ever made to an address that was checked.
pub struct EgressResolver {
    policy: Arc<EgressPolicy>,
    inner: Arc<dyn Resolve>,
}

impl EgressResolver {
    /// Over the system resolver (getaddrinfo, off the async threads).
    pub fn new(policy: Arc<EgressPolicy>) -> Self {
        Self::with_inner(policy, Arc::new(SystemResolver))
    }

    /// Over another resolver (tests give a fixed answer).
    pub fn with_inner(policy: Arc<EgressPolicy>, inner: Arc<dyn Resolve>) -> Self {
        Self { policy, inner }
    }
}

impl Resolve for EgressResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        let policy = self.policy.clone();
        let lookup = self.inner.resolve(name);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = lookup.await?.collect();
            let kept = policy.filter_resolved(&host, addrs)?;
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

/// getaddrinfo through tokio (on its blocking pool).
struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Follow at most `max` redirects, each hop's URL checked as the first one was (a name in it
/// is checked again by the resolver at connect).
pub fn redirect_policy(policy: Arc<EgressPolicy>, max: usize) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        // `previous` holds the first URL too: one entry per hop already made.
        if attempt.previous().len() > max {
            return attempt.error(TooManyRedirects { max });
        }
        match policy.check_url(attempt.url()) {
            Ok(()) => attempt.follow(),
            Err(refused) => attempt.error(refused),
        }
    })
}

/// A client builder every connection of which obeys `policy`: names through
/// [`EgressResolver`], every redirect hop checked ([`redirect_policy`]), and no proxy from
/// the environment (`HTTP_PROXY` would otherwise carry the call past the check). The
/// caller still checks the first URL ([`EgressPolicy::check_url`]): reqwest connects to an
/// address literal without asking the resolver.
pub fn client_builder(policy: Arc<EgressPolicy>, max_redirects: usize) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .dns_resolver(EgressResolver::new(policy.clone()))
        .redirect(redirect_policy(policy, max_redirects))
}

/// The refusal or redirect cap somewhere in `error`'s source chain, as the step's error.
pub fn refusal_in(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(refused) = e.downcast_ref::<EgressRefused>() {
            return Some(refused.to_string());
        }
        if let Some(too_many) = e.downcast_ref::<TooManyRedirects>() {
            return Some(too_many.to_string());
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests;
