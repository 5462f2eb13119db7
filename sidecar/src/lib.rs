//! authz-sidecar: a policy-driven authorization sidecar.
//!
//! Every call is authenticated, turned into a Cedar request, decided against the
//! security team's policies over cached entities, logged, and only then handled or
//! forwarded. This crate holds the whole of it; the `authz-sidecar` binary is a thin
//! `main` over [`cli`].
//!
//! - [`policy_store`]: the immutable policy snapshot, built from files, and hot reload.
//! - [`authz`]: the decision engine the data plane and the CLI call.
//! - [`policy_tests`]: decision tables, the security team's unit tests for policies.
//! - [`cli`]: `validate`, `authorize`, `test`.

pub mod admin;
pub mod app;
pub mod authn;
pub mod authz;
pub mod avp;
pub mod aws;
pub mod cli;
pub mod config;
pub mod handlers;
pub mod http_client;
pub mod policy_store;
pub mod policy_tests;
pub mod proxy;
pub mod rescue;
pub mod server;
pub mod telemetry;
