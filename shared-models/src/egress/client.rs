//! The client side: a resolver that drops refused addresses, the redirect policy, and the
//! client builder that puts both in place.

use super::policy::{EgressPolicy, EgressRefused, TooManyRedirects};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::SocketAddr;
use std::sync::Arc;

/// A resolver that drops every address the policy refuses from the answer of `inner`, so
/// a connection is only ever made to an address that was checked.
pub struct EgressResolver {
    policy: Arc<EgressPolicy>,
    inner: Arc<dyn Resolve>,
}

impl EgressResolver {
    /// Over the system resolver (getaddrinfo, off the async threads).
    pub(crate) fn new(policy: Arc<EgressPolicy>) -> Self {
        Self::with_inner(policy, Arc::new(SystemResolver))
    }

    /// Over another resolver (tests give a fixed answer).
    pub(crate) fn with_inner(policy: Arc<EgressPolicy>, inner: Arc<dyn Resolve>) -> Self {
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
