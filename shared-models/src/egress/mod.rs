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

mod client;
mod policy;
mod ranges;
#[cfg(test)]
mod tests;

pub use client::{client_builder, redirect_policy, refusal_in, EgressResolver};
pub use policy::{AllowListError, EgressPolicy, EgressRefused, Refusal, TooManyRedirects};
pub use ranges::{classify, Blocked};

/// The environment variable listing the operator's exceptions.
pub(crate) const ALLOW_VAR: &str = "EGRESS_ALLOW";
