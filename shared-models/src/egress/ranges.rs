//! The refused ranges and the classifier of an address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
    pub(crate) fn as_str(self) -> &'static str {
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

pub(super) fn same_prefix_v4(a: u32, b: u32, prefix: u8) -> bool {
    let shift = 32 - u32::from(prefix.min(32));
    a.checked_shr(shift).unwrap_or(0) == b.checked_shr(shift).unwrap_or(0)
}

pub(super) fn same_prefix_v6(a: u128, b: u128, prefix: u8) -> bool {
    let shift = 128 - u32::from(prefix.min(128));
    a.checked_shr(shift).unwrap_or(0) == b.checked_shr(shift).unwrap_or(0)
}

/// An IPv4-mapped IPv6 address is the IPv4 address it maps: one allow entry covers both.
pub(super) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}
