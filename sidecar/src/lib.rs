//! authz-sidecar: a policy-driven authorization sidecar.
//!
//! Every call is authenticated, turned into a Cedar request, decided against the
//! security team's policies over cached entities, logged, and only then handled or
//! forwarded. This crate holds the whole of it; the `authz-sidecar` binary is a thin
//! `main` over [`cli`].
//!
//! The life of a forwarded request, module by module: [`server`] accepts the connection
//! and bounds it ([`server::limits`]), [`server::pipeline`] runs the phases over the
//! request-time [`server::state`], [`authn`] verifies the token, [`server::path`] and
//! [`server::router`] find the route, [`server::context`] and [`server::forwarded`] say
//! where the call came from, [`authz::authorize`] asks the [`authz::Engine`] over the
//! [`policy_store`] snapshot, writes the [`authz::audit`] event and returns a permit or a
//! denial, [`proxy`] forwards (or a [`handlers`] module answers), and [`rescue`] turns
//! any failure into the response.
//!
//! - [`app`]: the wiring on top: builds the state, starts the policy lifecycle, key
//!   refresh and both listeners. Nothing below imports it.
//! - [`policy_store`]: the immutable snapshot behind one swap, and
//!   [`policy_store::lifecycle`], the one loop that loads and refreshes it from any
//!   source (files; [`avp`], a Verified Permissions store).
//! - [`authz`]: the engine every caller asks, and the data plane's authorize step.
//! - [`decision_tables`]: decision tables, the security team's unit tests for policies.
//! - [`config`], [`telemetry`], [`otel`], [`aws`], [`http_client`], [`body`]:
//!   configuration, logs and metrics, traces, AWS clients, outbound HTTP, the one body
//!   type.
//! - [`lifecycle`]: group-membership events from IAM Identity Center, and the
//!   revocations the data plane applies.
//! - [`records`]: decision records, and `replay`, which decides them again under a
//!   candidate policy set; [`shadow`], which decides live requests under one too.
//! - [`cli`]: `serve`, `validate`, `authorize`, `test`, `replay`, `lambda`, `avp`.

#![warn(unreachable_pub)]

pub mod access;
pub mod app;
pub(crate) mod authn;
pub mod authz;
pub mod avp;
pub mod aws;
pub(crate) mod body;
pub(crate) mod cache;
pub mod cli;
pub mod config;
pub mod decision_tables;
pub mod directory;
pub mod handlers;
pub(crate) mod http_client;
pub(crate) mod kept_metrics;
pub mod lifecycle;
pub mod otel;
pub mod policy_store;
pub(crate) mod proxy;
pub mod records;
pub(crate) mod rescue;
pub mod server;
pub mod shadow;
pub(crate) mod telemetry;
