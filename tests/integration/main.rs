//! The integration tests: one binary, real files, the real commands in-process.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

mod access;
mod account_pool;
mod avp;
mod avp_binary;
mod aws_emulator;
mod binary;
mod cedar_parity;
mod cleanup;
mod cli;
mod cognito;
mod data_plane_path;
mod directory;
mod edge;
mod engine;
mod ext_authz;
mod ext_authz_grpc;
mod forwarding;
mod harness;
mod lambda;
mod layers;
mod lifecycle;
mod operator;
mod policy_index;
mod presign;
mod presign_faults;
mod reload;
mod replay;
mod server;
mod shadow;
mod support;
mod tls;
mod traces;
