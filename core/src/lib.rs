//! Shared vocabulary of Tandem.
//!
//! The proxy, the replicator and (later) the witness group talk about the same
//! few things: positions in the primary's write-ahead log ([`Lsn`]), the
//! PostgreSQL nodes of a cluster ([`NodeId`], [`NodeAddr`]) and the generation
//! of the cluster's topology ([`Epoch`]). They live here so that every part
//! parses, prints and compares them the same way. [`agent`] holds the JSON bodies of
//! the node agent's API (`tandem agent`), shared by the agent and its caller.

mod addr;
pub mod agent;
mod auth;
mod cluster;
mod epoch;
mod lsn;
mod node;

pub use addr::{AddrError, NodeAddr};
pub use auth::bearer_allows;
pub use cluster::{ClusterError, ClusterSpec, NodeSpec, WitnessSpec};
pub use epoch::Epoch;
pub use lsn::{Lsn, LsnParseError};
pub use node::{standby_slot_name, NodeId, NodeIdError, Role};
