//! The client side of the proxy: accepting connections and running sessions.
//!
//! `client → frontend → router`: [`listener`] accepts TCP connections and [`workers`] gives
//! each to a worker thread,
//! [`startup`] negotiates TLS and logs the client in (with [`login_params`] checking its
//! settings), [`session`] runs the
//! data path, with the client-message half in [`client_side`], getting and losing a server
//! connection per unit in [`attach`], the
//! server-message half in [`server_side`], response matching in [`pipeline`],
//! large CopyData streamed through in [`copy_stream`], SQL naming the client's prepared
//! statements mapped in [`sql_names`]
//! and the client's session state in [`state`].

mod attach;
mod client_side;
mod copy_stream;
mod effects;
pub mod listener;
pub mod login_params;
pub mod pipeline;
mod server_side;
pub mod session;
mod sql_names;
pub mod startup;
pub mod state;
mod wake;
pub mod workers;
