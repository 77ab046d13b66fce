//! Tandem's PostgreSQL endpoint.
//!
//! Data flows `client → frontend → router → pool → server`:
//! - [`protocol`]: framing and the few message fields the proxy reads;
//! - [`frontend`]: accepts clients, negotiates TLS, authenticates ([`auth`]),
//!   then runs one session task per client;
//! - [`router`]: classifies statements as reads or writes and picks a node;
//! - [`pool`]: bb8 pools of server connections per (node, user, database);
//! - [`admin`] and [`metrics`]: the `tandem` admin database and `/metrics`.
//!
//! [`run`] wires them together under one cancellation token.

pub mod auth;
pub mod config;
pub mod pool;
pub mod protocol;
pub mod router;

pub use config::ProxyConfig;
