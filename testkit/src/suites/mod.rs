//! The suites both HTTP services run: authentication ([`auth`]) and `/metrics`
//! ([`metrics`]). A service's tests describe it once ([`ServiceUnderTest`]) and call
//! [`auth_suite!`](crate::auth_suite) and [`metrics_suite!`](crate::metrics_suite), which
//! make one `#[tokio::test]` of each test of the suite; what only one service does stays in
//! its own tests.

pub mod auth;
pub mod metrics;
pub mod openapi;

use crate::http::{self, Reply};
use serde_json::Value;
use shared_models::auth::AuthConfig;

/// One route and method a service serves, on real ids.
pub struct Route {
    pub method: &'static str,
    pub path: String,
    pub body: Option<Value>,
    /// An `/admin` route (the admin key's), else an org route (an org key's).
    pub admin: bool,
    /// It answers an event stream (`text/event-stream`) rather than an envelope.
    pub stream: bool,
}

impl Route {
    pub fn new(method: &'static str, path: impl Into<String>, body: Option<Value>) -> Route {
        let path = path.into();
        Route {
            method,
            admin: path.starts_with("/admin"),
            path,
            body,
            stream: false,
        }
    }

    /// A GET of an event stream.
    pub fn stream(path: impl Into<String>) -> Route {
        Route {
            stream: true,
            ..Route::new("GET", path, None)
        }
    }
}

/// What [`ServiceUnderTest::seed`] made: every route the service serves, on the seeded ids,
/// and routes and methods it does not serve.
pub struct Routes {
    pub served: Vec<Route>,
    /// Each with the status it gets with a key (404: no route has that path; 405: a route
    /// has it, with other methods), and a 401 without one.
    pub unserved: Vec<(&'static str, String, u16)>,
}

/// A request whose duration `/metrics` must count under the route's pattern, never its path.
pub struct Timed {
    pub path: String,
    /// The `route` label: the pattern the path matched.
    pub route: &'static str,
    pub status: u16,
    /// The part of the path (an id) that must never show in `/metrics`.
    pub id: String,
}

/// An HTTP service started for a test, as the shared suites see it: how to start it, one
/// secured route, how its keys are made and revoked, what it serves.
#[allow(async_fn_in_trait)] // Tests run each on a runtime of their own: no `Send` needed.
pub trait ServiceUnderTest: Sized {
    /// The `service` label of its metrics.
    const NAME: &'static str;
    /// A GET that answers 200 to any key of the app's org.
    const SECURED: &'static str;
    /// A GET that answers 200 to the admin key, if the service has admin routes.
    const ADMIN_ROUTE: Option<&'static str>;
    /// Its `src/routes/mod.rs`, where its routes are registered (`include_str!`).
    const ROUTES_SOURCE: &'static str;

    /// Its part of the API description, as it serves it.
    fn description() -> Value;

    /// Start the service with `auth`; its org has one key, [`ServiceUnderTest::key`].
    async fn start(auth: AuthConfig) -> Self;
    fn address(&self) -> &str;
    fn client(&self) -> &reqwest::Client;
    /// The key the app started with.
    fn key(&self) -> &str;
    /// Another key of the app's org.
    fn new_key(&self) -> String;
    /// A key of the app's org made as an operator makes one (by default [`Self::new_key`]).
    async fn revocable_key(&self) -> String {
        self.new_key()
    }
    /// Revoke `key` as an operator would.
    async fn revoke(&self, key: &str);
    /// Seed what the routes act on; every route then answers 200 or 201 with the app's key
    /// (the admin key on admin routes), deletes last.
    async fn seed(&self) -> Routes;
    /// What the database holds that a refused request must not change.
    fn snapshot(&self) -> Value;
    /// Requests `/metrics` must time by their route's pattern, besides [`Self::SECURED`].
    async fn timed(&self) -> Vec<Timed>;

    /// A request with `authorization` as its Authorization header, verbatim (or none).
    async fn send_auth(
        &self,
        authorization: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        http::send(
            self.client(),
            self.address(),
            authorization,
            method,
            path,
            body,
            &[],
        )
        .await
    }

    /// A request with `key` as its bearer token, or with no Authorization header at all.
    async fn send_as(
        &self,
        key: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        let authorization = key.map(|k| format!("Bearer {k}"));
        self.send_auth(authorization.as_deref(), method, path, body)
            .await
    }
}

/// One `#[tokio::test]` per test of the [`auth`] suite, for `$service`.
#[macro_export]
macro_rules! auth_suite {
    ($service:ty) => {
        $crate::__suite_tests!(
            auth,
            $service;
            every_route_without_a_valid_bearer_key_is_a_401_and_changes_nothing,
            the_admin_key_is_refused_on_every_org_route_and_org_keys_on_every_admin_route,
            the_seeded_routes_are_real_ones_for_the_right_key,
            unknown_routes_and_methods_are_a_401_without_a_key,
            health_needs_no_key_and_ignores_a_bad_one,
            the_bearer_scheme_is_case_insensitive_and_the_key_exact,
            a_revoked_key_is_refused_within_about_a_second,
            each_key_has_its_own_rate_limit_with_retry_after
        );
    };
}

/// One `#[tokio::test]` per test of the [`openapi`] suite, for `$service`.
#[macro_export]
macro_rules! openapi_suite {
    ($service:ty) => {
        $crate::__suite_tests!(
            openapi,
            $service;
            every_route_is_documented_and_every_operation_is_served,
            operations_need_the_bearer_key_and_carry_the_edge_errors,
            a_wrong_method_is_a_405_that_names_the_right_ones
        );
    };
}

/// One `#[tokio::test]` per test of the [`metrics`] suite, for `$service`.
#[macro_export]
macro_rules! metrics_suite {
    ($service:ty) => {
        $crate::__suite_tests!(
            metrics,
            $service;
            metrics_need_no_key_and_time_requests_by_their_matched_route
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __suite_tests {
    ($suite:ident, $service:ty; $($name:ident),+) => {
        $(
            #[::tokio::test]
            async fn $name() {
                $crate::suites::$suite::$name::<$service>().await;
            }
        )+
    };
}
