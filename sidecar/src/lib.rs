//! authz-sidecar: a policy-driven authorization sidecar.
//!
//! Every call is authenticated, turned into a Cedar request, decided against the
//! security team's policies over cached entities, logged, and only then handled or
//! forwarded. This crate holds the whole of it; the `authz-sidecar` binary is a thin
//! `main` over [`cli`].
//!
//! The life of a forwarded request, module by module: [`server`] accepts the connection
//! and bounds it ([`server::limits`]), [`server::pipeline`] runs the phases, [`authn`]
//! verifies the token, [`server::path`] and [`server::router`] find the route,
//! [`server::context`] and [`server::forwarded`] say where the call came from,
//! [`authz`] decides over the [`policy_store`] snapshot, [`proxy`] forwards (or a
//! [`handlers`] module answers), and [`rescue`] turns any failure into the response.
//!
//! - [`policy_store`]: the immutable policy snapshot, built from files, and hot reload;
//!   [`avp`]: the same from a Verified Permissions store.
//! - [`authz`]: the decision engine the data plane, the handlers and the CLI call.
//! - [`decision_tables`]: decision tables, the security team's unit tests for policies.
//! - [`app`]: the state requests read and the background tasks; [`admin`]: its endpoints.
//! - [`cli`]: `serve`, `validate`, `authorize`, `test`, `lambda`, `avp`.

pub mod app;
pub mod audit;
pub mod authn;
pub mod authz;
pub mod avp;
pub mod aws;
pub mod body;
pub mod cli;
pub mod config;
pub mod decision_tables;
pub mod handlers;
pub mod http_client;
pub mod policy_store;
pub mod proxy;
pub mod rescue;
pub mod server;
pub mod telemetry;
