mod admin;
mod auth;
mod helpers;
mod hostile;
mod tenancy;
mod validate;
mod versions;
mod workflows;
