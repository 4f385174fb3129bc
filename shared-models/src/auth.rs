//! Who is calling (docs/API.md "Tenancy and keys"): `Authorization: Bearer <key>` on every
//! route but health, metrics, the OpenAPI description and the dashboard's static pages.
//!
//! - An org key (`thy_…`, 256 random bits) belongs to one org; only its SHA-256 is stored
//!   (a fast hash is enough for keys this long: there is nothing to brute-force), and it is
//!   shown once, when created.
//! - The operator's `ADMIN_API_KEY` reaches `/admin` and `/ops` routes only; it is not an
//!   org key, and org keys get 403 there.
//! - Lookups are cached for at most [`CACHE_TTL`], so a revoked key stops working within a
//!   second on every replica, and a flood of requests costs one query per key per second.
//! - Each key (and the admin key) has its own rate limit, `RATE_LIMIT_PER_SECOND`
//!   requests per second with a burst of as many, or its org's `requestsPerSecond` override;
//!   over it the answer is 429 with `Retry-After`.
//! - The lookup of a key reads its org's quota overrides too (one query, cached with it), so
//!   a [`Caller`] carries the org's [`OrgLimits`] in effect and no request pays another query
//!   for them; a changed limit takes effect within [`CACHE_TTL`].
//!
//! [`authenticate`] is the middleware; handlers ask for a [`Caller`] (an org) or an
//! [`Admin`], and never see the key.

use crate::db::{blocking, PgPool, StorageError};
use crate::envelope::{ApiError, ErrorCode};
use crate::limits::{self, OrgLimitOverrides, OrgLimits};
use crate::schema::{api_keys, orgs};
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest, ResponseError};
use base64::Engine as _;
use diesel::prelude::*;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::future::{ready, Ready};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Every org key starts with this, so a leaked key is easy to recognise (and to scan for).
pub(crate) const KEY_PREFIX: &str = "thy_";
/// How long a key lookup is trusted: the most a revocation can lag behind.
pub const CACHE_TTL: Duration = Duration::from_secs(1);
/// The cache is cleared when it holds this many keys (after dropping the stale ones).
const CACHE_CAPACITY: usize = 10_000;
/// The operator's key must be at least this long (it guards every org's keys).
pub(crate) const MIN_ADMIN_KEY_LEN: usize = 24;
/// Routes anyone may call: liveness, readiness, metrics, the API description, the
/// dashboard's static pages (which ask for a key and send it with their data calls).
/// `/openapi/` holds each service's own part of the description (`/openapi.json` merges them).
const PUBLIC_PATHS: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/openapi.json"];
const PUBLIC_PREFIXES: [&str; 3] = ["/ui/", "/docs/", "/openapi/"];

/// Whether `path` needs no key.
pub(crate) fn is_public(path: &str) -> bool {
    PUBLIC_PATHS.contains(&path)
        || path == "/ui"
        || path == "/docs"
        || PUBLIC_PREFIXES.iter().any(|p| path.starts_with(p))
}

/// The hex SHA-256 of a key: what the database holds.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new org key: [`KEY_PREFIX`] and 32 random bytes from the OS, base64url.
pub fn generate_key() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// The part of a key kept in clear for listings (`thy_AbCd`): enough to tell keys apart,
/// far too little to guess the rest.
pub fn display_prefix(key: &str) -> String {
    key.chars().take(KEY_PREFIX.len() + 4).collect()
}

/// A new key id (`key_<ulid>`).
pub fn new_key_id() -> String {
    format!("key_{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// The principal a request authenticated as (in the request's extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Principal {
    Org {
        org_id: String,
        key_id: String,
        /// The org's quotas in effect, read with the key.
        limits: OrgLimits,
    },
    Admin,
}

/// Authentication settings and state, shared by every worker thread of a service.
pub struct Authenticator {
    pool: PgPool,
    admin_key_hash: Option<String>,
    cache: Mutex<HashMap<String, (Instant, Option<Principal>)>>,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    /// Keys of orgs whose `requestsPerSecond` is overridden: a limiter of that rate per key
    /// (replaced when the rate changes), at most [`CACHE_CAPACITY`] of them.
    overridden: Mutex<HashMap<String, (u32, DefaultDirectRateLimiter)>>,
    /// The rate-limit bucket of the admin key.
    admin_bucket: String,
    /// The quota defaults, with `requests_per_second` from [`AuthConfig`].
    defaults: OrgLimits,
}

/// What the environment says about keys (`ADMIN_API_KEY`, `RATE_LIMIT_PER_SECOND`).
#[derive(Clone)]
pub struct AuthConfig {
    pub admin_api_key: Option<String>,
    /// Requests per second per key (0: no limit).
    pub rate_limit_per_second: u32,
}

impl std::fmt::Debug for AuthConfig {
    // The admin key never reaches a log line, even through a settings dump.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field(
                "admin_api_key",
                &self.admin_api_key.as_ref().map(|_| "<set>"),
            )
            .field("rate_limit_per_second", &self.rate_limit_per_second)
            .finish()
    }
}

impl AuthConfig {
    pub fn from_env() -> Result<Self, String> {
        // The quota defaults are read once per process (`limits::defaults`); a bad value
        // stops the service here rather than being ignored.
        crate::limits::OrgLimits::from_env()?;
        Ok(Self {
            admin_api_key: admin_key(std::env::var("ADMIN_API_KEY").ok())?,
            rate_limit_per_second: crate::config::env_parse("RATE_LIMIT_PER_SECOND", 100)?,
        })
    }
}

/// Words that mark an example value: a key containing one was copied from a file that ships
/// with Thygon (or any other example), and everyone who read that file knows it.
const PLACEHOLDER_MARKS: [&str; 6] = [
    "change-me",
    "changeme",
    "change_me",
    "replace-me",
    "replace_me",
    "replaceme",
];

/// The admin key from its variable: unset or blank is none; a short one, or a placeholder
/// from an example file, is an error that stops the service at start.
fn admin_key(raw: Option<String>) -> Result<Option<String>, String> {
    match raw.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(k) if k.len() < MIN_ADMIN_KEY_LEN => Err(format!(
            "ADMIN_API_KEY must be at least {MIN_ADMIN_KEY_LEN} characters"
        )),
        Some(k) if is_placeholder(k) => Err(
            "ADMIN_API_KEY is a placeholder from an example file; set a long random secret \
             (for example: openssl rand -hex 24)"
                .to_string(),
        ),
        Some(k) => Ok(Some(k.to_string())),
    }
}

fn is_placeholder(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    PLACEHOLDER_MARKS.iter().any(|mark| lower.contains(mark))
}

impl Authenticator {
    pub fn new(pool: PgPool, config: &AuthConfig) -> Self {
        if config.admin_api_key.is_none() {
            log::warn!("ADMIN_API_KEY is not set: the /admin and /ops routes answer 401");
        }
        Self {
            pool,
            admin_key_hash: config.admin_api_key.as_deref().map(hash_key),
            cache: Mutex::new(HashMap::new()),
            limiter: NonZeroU32::new(config.rate_limit_per_second)
                .map(|n| RateLimiter::keyed(Quota::per_second(n))),
            overridden: Mutex::new(HashMap::new()),
            admin_bucket: "admin".to_string(),
            defaults: OrgLimits {
                requests_per_second: config.rate_limit_per_second,
                ..limits::defaults()
            },
        }
    }

    /// Who `key` is, if anyone: the admin, or an org key that is not revoked.
    pub(crate) async fn resolve(&self, key: &str) -> Result<Option<Principal>, StorageError> {
        let hash = hash_key(key);
        if self.admin_key_hash.as_deref() == Some(hash.as_str()) {
            return Ok(Some(Principal::Admin));
        }
        if let Some(hit) = self.cached(&hash) {
            return Ok(hit);
        }
        let lookup = hash.clone();
        let found: Option<(String, String, OrgLimitOverrides)> =
            blocking(&self.pool, move |conn| {
                api_keys::table
                    .inner_join(orgs::table.on(orgs::id.eq(api_keys::org_id)))
                    .filter(api_keys::key_hash.eq(&lookup))
                    .filter(api_keys::revoked_at.is_null())
                    .select((
                        api_keys::id,
                        api_keys::org_id,
                        OrgLimitOverrides::as_select(),
                    ))
                    .first(conn)
                    .optional()
            })
            .await?;
        let principal = found.map(|(key_id, org_id, overrides)| Principal::Org {
            org_id,
            key_id,
            limits: limits::effective(&self.defaults, &overrides),
        });
        self.remember(hash, principal.clone());
        Ok(principal)
    }

    fn cached(&self, hash: &str) -> Option<Option<Principal>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        match cache.get(hash) {
            Some((at, p)) if at.elapsed() < CACHE_TTL => Some(p.clone()),
            _ => None,
        }
    }

    fn remember(&self, hash: String, principal: Option<Principal>) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(hash, (Instant::now(), principal));
    }

    /// `Err(wait)` when `principal` is over its rate limit.
    pub(crate) fn check_rate(&self, principal: &Principal) -> Result<(), Duration> {
        // Key ids are `key_…`, so the admin's bucket cannot collide with an org key's.
        let key = match principal {
            Principal::Org { key_id, limits, .. } => {
                if limits.requests_per_second != self.defaults.requests_per_second {
                    return self.check_overridden(key_id, limits.requests_per_second);
                }
                key_id
            }
            Principal::Admin => &self.admin_bucket,
        };
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if limiter.len() > CACHE_CAPACITY {
            limiter.retain_recent();
        }
        limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

impl Authenticator {
    /// The rate limit of a key whose org overrides `requestsPerSecond` (always positive):
    /// a limiter of its own, kept while the rate stays the same.
    fn check_overridden(&self, key_id: &str, rate: u32) -> Result<(), Duration> {
        let Some(per_second) = NonZeroU32::new(rate) else {
            return Ok(());
        };
        let mut limiters = self.overridden.lock().unwrap_or_else(|e| e.into_inner());
        if limiters.len() >= CACHE_CAPACITY && !limiters.contains_key(key_id) {
            // A bound on memory: the buckets start full again, as after a restart.
            limiters.clear();
        }
        let entry = limiters
            .entry(key_id.to_string())
            .or_insert_with(|| (rate, RateLimiter::direct(Quota::per_second(per_second))));
        if entry.0 != rate {
            *entry = (rate, RateLimiter::direct(Quota::per_second(per_second)));
        }
        entry
            .1
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// Whether org key `key_id` still works (exists, not revoked). Long-lived responses (event
/// streams) ask this every [`CACHE_TTL`], so a revocation ends them as it ends requests.
pub fn key_is_live(conn: &mut PgConnection, key_id: &str) -> Result<bool, diesel::result::Error> {
    diesel::select(diesel::dsl::exists(
        api_keys::table
            .find(key_id)
            .filter(api_keys::revoked_at.is_null()),
    ))
    .get_result(conn)
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, message)
}

/// The key in `Authorization: Bearer <key>`, or why there is none.
fn bearer(req: &ServiceRequest) -> Result<&str, ApiError> {
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("send an API key: Authorization: Bearer <key>"))?;
    let value = value
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not valid"))?;
    let (scheme, key) = value
        .split_once(' ')
        .ok_or_else(|| unauthorized("the Authorization header must be 'Bearer <key>'"))?;
    let key = key.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || key.is_empty() {
        return Err(unauthorized(
            "the Authorization header must be 'Bearer <key>'",
        ));
    }
    Ok(key)
}

/// Middleware: authenticate every request to a non-public route, enforce the key's rate
/// limit, and leave the [`Principal`] in the request's extensions. Runs before routing, so
/// an unknown route without a key is a 401 too (routes are not revealed to strangers).
pub(crate) async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    if is_public(req.path()) {
        return Ok(next.call(req).await?.map_into_left_body());
    }
    let Some(auth) = req.app_data::<web::Data<Authenticator>>().cloned() else {
        log::error!("Authenticator is not registered as app data");
        return Ok(reject(req, ApiError::internal(), None));
    };
    let key = match bearer(&req) {
        Ok(key) => key.to_string(),
        Err(e) => return Ok(reject(req, e, None)),
    };
    let principal = match auth.resolve(&key).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            let e = unauthorized("the API key is not valid (unknown or revoked)");
            return Ok(reject(req, e, None));
        }
        Err(e) => return Ok(reject(req, e.to_api(), None)),
    };
    if let Err(wait) = auth.check_rate(&principal) {
        let e = ApiError::new(
            ErrorCode::RateLimited,
            "too many requests for this API key (RATE_LIMIT_PER_SECOND, or the org's requestsPerSecond); retry after the time in Retry-After",
        );
        return Ok(reject(req, e, Some(wait)));
    }
    req.extensions_mut().insert(principal);
    Ok(next.call(req).await?.map_into_left_body())
}

fn reject<B>(
    req: ServiceRequest,
    error: ApiError,
    retry_after: Option<Duration>,
) -> ServiceResponse<EitherBody<B>> {
    let mut response = error.error_response();
    if let Some(wait) = retry_after {
        // Whole seconds, rounded up, at least 1 (RFC 9110 delay-seconds).
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(secs.max(1)));
    }
    if error.code == ErrorCode::Unauthorized {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    req.into_response(response).map_into_right_body()
}

fn principal(req: &HttpRequest) -> Result<Principal, ApiError> {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| unauthorized("send an API key: Authorization: Bearer <key>"))
}

/// The org a request acts for: the org of its key. Every query of an org route is scoped
/// by it. The admin key gets 403 here (it is not an org key).
#[derive(Debug, Clone)]
pub struct Caller {
    pub org_id: String,
    pub key_id: String,
    /// The org's quotas in effect (read with the key, at most [`CACHE_TTL`] old).
    pub limits: OrgLimits,
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(match principal(req) {
            Ok(Principal::Org {
                org_id,
                key_id,
                limits,
            }) => Ok(Caller {
                org_id,
                key_id,
                limits,
            }),
            Ok(Principal::Admin) => Err(ApiError::new(
                ErrorCode::Forbidden,
                "the admin key reaches /admin and /ops routes only; use an org's API key",
            )),
            Err(e) => Err(e),
        })
    }
}

/// The operator (the `ADMIN_API_KEY`): required by `/admin` and `/ops` routes.
#[derive(Debug, Clone)]
pub struct Admin;

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(match principal(req) {
            Ok(Principal::Admin) => Ok(Admin),
            Ok(Principal::Org { .. }) => Err(ApiError::new(
                ErrorCode::Forbidden,
                "this route needs the operator's ADMIN_API_KEY; org keys cannot use it",
            )),
            Err(e) => Err(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_and_prefixed() {
        let a = generate_key().unwrap();
        let b = generate_key().unwrap();
        assert!(a.starts_with(KEY_PREFIX));
        assert_eq!(a.len(), KEY_PREFIX.len() + 43);
        assert_ne!(a, b);
        assert!(a[KEY_PREFIX.len()..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }

    #[test]
    fn the_stored_hash_is_sha256_hex_and_reveals_nothing_of_the_key() {
        let key = generate_key().unwrap();
        let h = hash_key(&key);
        assert_eq!(h.len(), 64);
        assert!(!h.contains(&key[KEY_PREFIX.len()..KEY_PREFIX.len() + 8]));
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(display_prefix(&key).len(), KEY_PREFIX.len() + 4);
    }

    #[test]
    fn public_paths_are_exactly_health_metrics_spec_and_pages() {
        for p in [
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
            "/ui",
            "/ui/",
            "/ui/runs.html",
            "/docs/",
            "/docs/swagger-ui-bundle.js",
            "/openapi/workflow-service.json",
            "/openapi/runtime-service.json",
        ] {
            assert!(is_public(p), "{p}");
        }
        for p in [
            "/workflows",
            "/admin/orgs",
            "/ops/queues",
            "/healthz/x",
            "/uix",
            "/metrics2",
            "/openapi",
            "/openapi.jsonx",
            "/",
        ] {
            assert!(!is_public(p), "{p}");
        }
    }

    #[test]
    fn a_short_admin_key_is_refused_and_the_key_never_shows_in_debug() {
        assert!(admin_key(Some("short".into())).is_err());
        assert_eq!(admin_key(Some("  ".into())), Ok(None));
        assert_eq!(admin_key(None), Ok(None));
        assert_eq!(
            admin_key(Some(format!(" {} ", "k".repeat(24)))),
            Ok(Some("k".repeat(24)))
        );
        let config = AuthConfig {
            admin_api_key: Some("x".repeat(40)),
            rate_limit_per_second: 5,
        };
        assert!(!format!("{config:?}").contains("xxxx"));
    }

    #[test]
    fn the_placeholders_shipped_in_example_files_are_refused() {
        // What docker-compose.yml and k8s/ used to ship, and the usual spellings; then what the
        // dev overlay ships.
        for key in [
            "thygon-compose-admin-key-change-me",
            "REPLACE_ME_WITH_A_LONG_RANDOM_ADMIN_KEY",
            "please-ChangeMe-0123456789abcdef",
            "replace-me-replace-me-replace-me",
        ] {
            let err = admin_key(Some(key.into())).unwrap_err();
            assert!(err.contains("placeholder"), "{key}: {err}");
        }
        let k8s = include_str!("../../k8s/overlays/dev/kustomization.yaml");
        let shipped = k8s
            .lines()
            .find_map(|l| l.trim().strip_prefix("- admin-api-key="))
            .expect("the dev overlay's Secret has admin-api-key")
            .trim();
        assert!(admin_key(Some(shipped.into())).is_err(), "{shipped}");
        assert!(admin_key(Some("0f3a9c1e7b2d4a6f8e0c2b4d6f8a1c3e".into())).is_ok());
    }
}
