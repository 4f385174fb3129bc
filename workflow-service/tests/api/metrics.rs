//! `GET /metrics`: public, Prometheus text, request durations labelled by matched route: the
//! suite every HTTP service runs ([`thygon_testkit::suites::metrics`]).

use crate::helpers::TestApp;

thygon_testkit::metrics_suite!(TestApp);
