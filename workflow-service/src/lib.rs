//! Workflow Service: owns workflow definitions and their versions, and the orgs and API
//! keys of the deployment.
//!
//! - [`config`]: settings from the environment.
//! - [`startup`]: builds the actix `App` and binds its listener ([`startup::Application`]).
//! - [`routes`]: HTTP in and out, one file per resource; [`openapi()`] describes them.
//! - [`domain`]: request bodies parsed into known-good types (no I/O).
//! - [`storage`]: plain diesel functions over `&mut PgConnection`.
//! - [`tenancy`]: orgs and API keys (the `/admin` routes), parsing and storage.
//! - [`error`]: the one error enum of this service and its envelope mapping.

pub mod config;
pub mod domain;
pub mod error;
pub mod routes;
pub mod startup;
pub mod storage;
pub mod tenancy;

pub use routes::openapi::openapi;
