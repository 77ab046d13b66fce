//! Tandem witness group: 3 or 5 `tandem witness` processes that agree, through Raft
//! (openraft), on one cluster state and judge the PostgreSQL nodes by quorum.
//!
//! Data flow: probe (every witness probes every node) → the leader's detector (a node is
//! failed only when a majority saw it fail for the failure timeout) → a request committed in
//! Raft ([`raft`]) → the [`state::ClusterState`] on every witness → the HTTP API that
//! proxies, the replicator and the CLI read.

pub mod raft;
pub mod state;
