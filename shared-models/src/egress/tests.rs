//! The classifier, the allow list and the resolver filter, without a socket: no address
//! here is ever connected to.

use super::*;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

fn url(s: &str) -> Url {
    Url::parse(s).expect("a URL")
}

fn policy(list: &str) -> EgressPolicy {
    EgressPolicy::parse(list).expect("a valid allow list")
}

#[test]
fn every_refused_ipv4_range_is_named() {
    let cases = [
        ("127.0.0.1", Blocked::Loopback),
        ("127.255.255.254", Blocked::Loopback),
        ("0.0.0.0", Blocked::Unspecified),
        ("0.1.2.3", Blocked::Unspecified),
        ("10.0.0.5", Blocked::Private),
        ("10.255.255.255", Blocked::Private),
        ("172.16.0.1", Blocked::Private),
        ("172.31.255.255", Blocked::Private),
        ("192.168.1.1", Blocked::Private),
        ("169.254.169.254", Blocked::LinkLocal),
        ("169.254.0.1", Blocked::LinkLocal),
        ("100.64.0.1", Blocked::Cgnat),
        ("100.100.100.200", Blocked::Cgnat),
        ("100.127.255.255", Blocked::Cgnat),
        ("224.0.0.1", Blocked::Multicast),
        ("239.255.255.250", Blocked::Multicast),
        ("255.255.255.255", Blocked::Broadcast),
        ("240.0.0.1", Blocked::Reserved),
        ("255.255.255.254", Blocked::Reserved),
        ("192.0.0.8", Blocked::Reserved),
        ("192.0.0.170", Blocked::Reserved),
        ("192.88.99.1", Blocked::Reserved),
        ("192.0.2.1", Blocked::Documentation),
        ("198.51.100.7", Blocked::Documentation),
        ("203.0.113.9", Blocked::Documentation),
        ("198.18.0.1", Blocked::Benchmarking),
        ("198.19.255.255", Blocked::Benchmarking),
    ];
    for (addr, expected) in cases {
        assert_eq!(classify(ip(addr)), Some(expected), "{addr}");
    }
}

#[test]
fn public_ipv4_addresses_and_range_edges_pass() {
    for addr in [
        "8.8.8.8",
        "1.1.1.1",
        "9.255.255.255",
        "11.0.0.0",
        "100.63.255.255",
        "100.128.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "169.253.255.255",
        "192.167.255.255",
        "192.169.0.0",
        "198.17.255.255",
        "198.20.0.0",
        "223.255.255.255",
        "126.255.255.255",
        "128.0.0.0",
    ] {
        assert_eq!(classify(ip(addr)), None, "{addr}");
    }
}

#[test]
fn every_refused_ipv6_range_is_named() {
    let cases = [
        ("::1", Blocked::Loopback),
        ("::", Blocked::Unspecified),
        ("fc00::1", Blocked::Private),
        ("fd00:ec2::254", Blocked::Private),
        ("fdff:ffff::1", Blocked::Private),
        ("fec0::1", Blocked::Private),
        ("fe80::1", Blocked::LinkLocal),
        ("febf::1", Blocked::LinkLocal),
        ("ff02::1", Blocked::Multicast),
        ("ff05::1:3", Blocked::Multicast),
        ("2001:db8::1", Blocked::Documentation),
        ("3fff::1", Blocked::Documentation),
        ("2001:2::1", Blocked::Benchmarking),
        ("2001:0:4136:e378::1", Blocked::Reserved),
        ("100::1", Blocked::Discard),
        ("64:ff9b:1::a00:1", Blocked::Private),
        ("::ffff:0:a00:1", Blocked::Reserved),
    ];
    for (addr, expected) in cases {
        assert_eq!(classify(ip(addr)), Some(expected), "{addr}");
    }
}

#[test]
fn ipv6_forms_carrying_an_ipv4_address_are_classified_by_it() {
    let cases = [
        // IPv4-mapped.
        ("::ffff:127.0.0.1", Some(Blocked::Loopback)),
        ("::ffff:7f00:1", Some(Blocked::Loopback)),
        ("::ffff:10.1.2.3", Some(Blocked::Private)),
        ("::ffff:169.254.169.254", Some(Blocked::LinkLocal)),
        ("::ffff:0.0.0.0", Some(Blocked::Unspecified)),
        ("::ffff:100.64.0.1", Some(Blocked::Cgnat)),
        ("::ffff:255.255.255.255", Some(Blocked::Broadcast)),
        ("::ffff:8.8.8.8", None),
        // IPv4-compatible (deprecated): refused even for a public address.
        ("::127.0.0.1", Some(Blocked::Loopback)),
        ("::192.168.0.1", Some(Blocked::Private)),
        ("::8.8.8.8", Some(Blocked::Reserved)),
        // NAT64.
        ("64:ff9b::127.0.0.1", Some(Blocked::Loopback)),
        ("64:ff9b::a9fe:a9fe", Some(Blocked::LinkLocal)),
        ("64:ff9b::172.16.0.1", Some(Blocked::Private)),
        ("64:ff9b::8.8.8.8", None),
        // 6to4.
        ("2002:7f00:1::1", Some(Blocked::Loopback)),
        ("2002:c0a8:101::1", Some(Blocked::Private)),
        ("2002:808:808::1", None),
    ];
    for (addr, expected) in cases {
        assert_eq!(classify(ip(addr)), expected, "{addr}");
    }
}

#[test]
fn public_ipv6_addresses_pass() {
    for addr in [
        "2606:4700:4700::1111",
        "2a00:1450:4001::200e",
        "2001:4860::8888",
    ] {
        assert_eq!(classify(ip(addr)), None, "{addr}");
    }
}

#[test]
fn every_numeric_spelling_of_loopback_is_refused_on_the_url() {
    let empty = EgressPolicy::default();
    for spelling in [
        "http://127.0.0.1:8082/healthz",
        "http://2130706433:8082/",
        "http://0177.0.0.1:8082/",
        "http://0x7f.1:8082/",
        "http://0x7f000001:8082/",
        "http://127.1:8082/",
        "http://127.0.1:8082/",
        "http://017700000001:8082/",
        "http://0x7F.0.0.1:8082/",
        "http://127.000.000.001:8082/",
    ] {
        let refused = empty.check_url(&url(spelling)).expect_err(spelling);
        assert_eq!(
            refused.to_string(),
            "egress to 127.0.0.1:8082 refused (loopback); EGRESS_ALLOW lists exceptions",
            "{spelling}"
        );
    }
}

#[test]
fn other_literal_forms_are_refused_on_the_url() {
    let empty = EgressPolicy::default();
    let cases = [
        ("http://0.0.0.0:8081/", "0.0.0.0:8081", "unspecified"),
        ("http://0:8081/", "0.0.0.0:8081", "unspecified"),
        ("http://[::]:8081/", "[::]:8081", "unspecified"),
        ("http://[::1]:8081/", "[::1]:8081", "loopback"),
        (
            "http://[::ffff:127.0.0.1]:8081/",
            "127.0.0.1:8081",
            "loopback",
        ),
        (
            "http://[0:0:0:0:0:ffff:7f00:1]/",
            "127.0.0.1:80",
            "loopback",
        ),
        (
            "http://169.254.169.254/latest/meta-data/",
            "169.254.169.254:80",
            "link-local",
        ),
        ("https://10.0.0.1/", "10.0.0.1:443", "private"),
        ("http://[fe80::1]/", "[fe80::1]:80", "link-local"),
        (
            "http://[64:ff9b::7f00:1]/",
            "[64:ff9b::7f00:1]:80",
            "loopback",
        ),
        ("http://user:pw@127.0.0.1:9/", "127.0.0.1:9", "loopback"),
    ];
    for (spelling, target, range) in cases {
        let refused = empty.check_url(&url(spelling)).expect_err(spelling);
        assert_eq!(refused.target, target, "{spelling}");
        assert_eq!(refused.reason.to_string(), range, "{spelling}");
    }
}

#[test]
fn public_literals_and_names_pass_the_url_check() {
    let empty = EgressPolicy::default();
    for ok in [
        "https://8.8.8.8/",
        "http://[2606:4700:4700::1111]/",
        "https://example.com/",
        // A name is decided by the resolver, at connect.
        "http://localhost:8082/",
    ] {
        assert_eq!(empty.check_url(&url(ok)), Ok(()), "{ok}");
    }
}

#[test]
fn an_address_and_port_entry_allows_that_port_only() {
    let p = policy("127.0.0.1:9000");
    assert_eq!(p.check_url(&url("http://127.0.0.1:9000/webhook")), Ok(()));
    assert_eq!(p.check_url(&url("http://2130706433:9000/")), Ok(()));
    assert_eq!(p.check_url(&url("http://[::ffff:127.0.0.1]:9000/")), Ok(()));
    assert!(p.check_url(&url("http://127.0.0.1:8082/")).is_err());
    assert!(p.check_url(&url("http://127.0.0.2:9000/")).is_err());
    // The resolver is not told the port: a name resolving to it stays refused.
    assert!(p
        .filter_resolved("localhost", vec!["127.0.0.1:0".parse().unwrap()])
        .is_err());
}

#[test]
fn an_address_entry_allows_every_port() {
    let p = policy("127.0.0.1, [::1]");
    assert_eq!(p.check_url(&url("http://127.0.0.1:1/")), Ok(()));
    assert_eq!(p.check_url(&url("http://[::1]:8080/")), Ok(()));
    assert!(p.check_url(&url("http://127.0.0.2/")).is_err());
    let kept = p
        .filter_resolved("localhost", vec!["127.0.0.1:0".parse().unwrap()])
        .expect("allowed");
    assert_eq!(kept.len(), 1);
}

#[test]
fn an_ipv6_entry_with_a_port() {
    let p = policy("[::1]:8080");
    assert_eq!(p.check_url(&url("http://[::1]:8080/")), Ok(()));
    assert!(p.check_url(&url("http://[::1]:8081/")).is_err());
    assert!(p.check_url(&url("http://127.0.0.1:8080/")).is_err());
}

#[test]
fn cidr_entries_allow_their_network() {
    let p = policy("10.0.0.0/8,fd00::/8, 192.168.1.7/24");
    assert_eq!(p.check_url(&url("http://10.20.30.40:5/")), Ok(()));
    assert_eq!(p.check_url(&url("http://[fd12::1]/")), Ok(()));
    assert_eq!(p.check_url(&url("http://[::ffff:10.0.0.1]/")), Ok(()));
    assert_eq!(p.check_url(&url("http://192.168.1.200/")), Ok(()));
    assert!(p.check_url(&url("http://192.168.2.1/")).is_err());
    assert!(p.check_url(&url("http://11.0.0.1/")).is_ok());
    assert!(p.check_url(&url("http://172.16.0.1/")).is_err());
    assert!(p.check_url(&url("http://[fc00::1]/")).is_err());
    let kept = p
        .filter_resolved(
            "inside.test",
            vec![
                "10.0.0.5:0".parse().unwrap(),
                "127.0.0.1:0".parse().unwrap(),
            ],
        )
        .expect("10.0.0.5 is listed");
    assert_eq!(kept, vec!["10.0.0.5:0".parse::<SocketAddr>().unwrap()]);
}

#[test]
fn name_entries_allow_what_the_name_resolves_to_on_their_ports() {
    let p = policy("hooks.internal:8443,Open.Internal.");
    let inside: Vec<SocketAddr> = vec!["10.0.0.5:0".parse().unwrap()];
    assert_eq!(p.check_url(&url("https://hooks.internal:8443/x")), Ok(()));
    let refused = p
        .check_url(&url("http://hooks.internal:22/"))
        .expect_err("not the listed port");
    assert_eq!(
        refused.to_string(),
        "egress to hooks.internal:22 refused (not a port EGRESS_ALLOW lists for this host); \
         EGRESS_ALLOW lists exceptions"
    );
    assert_eq!(
        p.filter_resolved("hooks.internal", inside.clone()),
        Ok(inside.clone())
    );
    assert_eq!(p.check_url(&url("http://open.internal:1/")), Ok(()));
    assert_eq!(
        p.filter_resolved("OPEN.internal.", inside.clone()),
        Ok(inside.clone())
    );
    // No subdomains.
    assert!(p.filter_resolved("a.hooks.internal", inside).is_err());
}

#[test]
fn bad_entries_are_refused_with_the_entry_named() {
    for bad in [
        "10.0.0.0/33",
        "::/129",
        "nonsense/8",
        "[::1",
        "[::1]x",
        "[nope]:80",
        "127.0.0.1:0",
        "127.0.0.1:70000",
        "host:port",
        "::1:80:x",
        "*.example.com",
        "exa mple.com",
    ] {
        let err = EgressPolicy::parse(bad).expect_err(bad);
        assert_eq!(err.entry, bad);
        assert!(err.to_string().starts_with("EGRESS_ALLOW: '"), "{err}");
    }
    assert!(EgressPolicy::parse(" , ").expect("blank").is_empty());
    assert_eq!(
        EgressPolicy::parse("2130706433:9000"),
        EgressPolicy::parse("127.0.0.1:9000")
    );
}

/// A resolver answering fixed addresses, so no lookup and no packet.
struct Fixed(Vec<SocketAddr>);

impl Resolve for Fixed {
    fn resolve(&self, _: Name) -> Resolving {
        let addrs = self.0.clone();
        Box::pin(async move { Ok(Box::new(addrs.into_iter()) as Addrs) })
    }
}

fn resolve_with(
    list: &str,
    answer: &[&str],
    name: &str,
) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
    let resolver = EgressResolver::with_inner(
        Arc::new(policy(list)),
        Arc::new(Fixed(answer.iter().map(|a| a.parse().unwrap()).collect())),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let addrs = resolver.resolve(name.parse().expect("a name")).await?;
        Ok(addrs.collect())
    })
}

#[test]
fn the_resolver_drops_refused_addresses() {
    let kept = resolve_with("", &["10.0.0.5:0", "8.8.8.8:0", "[::1]:0"], "mixed.test")
        .expect("one public address");
    assert_eq!(kept, vec!["8.8.8.8:0".parse::<SocketAddr>().unwrap()]);
}

#[test]
fn the_resolver_refuses_a_name_that_resolves_only_inside() {
    let err =
        resolve_with("", &["10.0.0.5:0", "127.0.0.1:0"], "inside.test").expect_err("nothing left");
    let refused = err
        .downcast_ref::<EgressRefused>()
        .expect("the refusal itself");
    assert_eq!(
        refused.to_string(),
        "egress to inside.test (10.0.0.5) refused (private); EGRESS_ALLOW lists exceptions"
    );
    assert_eq!(refusal_in(err.as_ref()), Some(refused.to_string()));
    let err = resolve_with("", &["[::ffff:169.254.169.254]:0"], "metadata.test")
        .expect_err("mapped metadata address");
    assert!(err.to_string().contains("(link-local)"), "{err}");
}

#[test]
fn the_resolver_keeps_listed_addresses_and_names() {
    assert_eq!(
        resolve_with("127.0.0.1", &["127.0.0.1:0"], "localhost")
            .expect("listed")
            .len(),
        1
    );
    assert_eq!(
        resolve_with("inside.test", &["10.0.0.5:0"], "inside.test")
            .expect("listed name")
            .len(),
        1
    );
    assert!(resolve_with("inside.test", &["10.0.0.5:0"], "other.test").is_err());
}

#[test]
fn redirect_cap_and_refusal_are_found_in_a_source_chain() {
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Box<dyn std::error::Error + Send + Sync>);
    let wrapped = Outer(Box::new(TooManyRedirects { max: 5 }));
    assert_eq!(
        refusal_in(&wrapped),
        Some("stopped after 5 redirects (HTTP_MAX_REDIRECTS)".into())
    );
    let plain = Outer("connection refused".into());
    assert_eq!(refusal_in(&plain), None);
}
