//! Tandem's PostgreSQL endpoint.
//!
//! Data flows `client → frontend → router → pool → server`:
//! - [`protocol`]: framing and the few message fields the proxy reads;
//! - [`frontend`]: accepts clients, negotiates TLS, authenticates ([`auth`]),
//!   then runs one session task per client;
//! - [`router`]: classifies statements as reads or writes and picks a node;
//! - [`pool`]: bb8 pools of server connections per (node, user, database);
//! - [`admin`] and [`metrics`]: the `tandem` admin database and `/metrics`;
//! - [`cancel`] and [`gate`]: CancelRequest forwarding, PAUSE/RESUME;
//! - [`stream`], [`tls`] and [`server_tls`]: plain or TLS transports, TLS towards clients
//!   and towards servers.
//!
//! [`run`] wires them together under one cancellation token.

pub mod admin;
pub mod auth;
pub mod cancel;
pub mod config;
pub mod context;
pub mod frontend;
pub mod gate;
pub mod group;
pub mod metrics;
pub mod pool;
pub mod protocol;
pub mod router;
mod runtime;
pub mod server_tls;
pub mod stream;
pub mod tls;

pub use config::ProxyConfig;
pub use runtime::{run, ProxyError, Reloader};
