//! Built-in handlers: what the sidecar does itself with an allowed call, instead of
//! forwarding it.

pub(crate) mod access;
pub mod account_pool;
pub mod presign;
pub mod profiles;
