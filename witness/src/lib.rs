//! Tandem witness group: 3 or 5 `tandem witness` processes that agree, through Raft
//! (openraft), on one cluster state and judge the PostgreSQL nodes by quorum.
//!
//! Data flow: probe ([`probe`]: every witness probes every node) → report ([`report`]: to
//! the leader) → detector ([`detector`]: failed only when a majority saw it fail for the
//! failure timeout) → a request committed in Raft ([`raft`]) → the [`state::ClusterState`] on
//! every witness → the HTTP API ([`api`]) that proxies, the replicator and the CLI read. When
//! the primary is declared failed, the leader runs the [`failover`] steps.
//! [`node`] assembles one witness; [`run`] runs it until shutdown. [`agent_client`] calls a
//! node's agent (`tandem agent`), which stops and starts its server for a switchover.

pub mod agent_client;
pub mod api;
pub mod client;
pub mod config;
pub mod detector;
pub mod failover;
pub mod node;
pub mod probe;
pub mod raft;
pub mod report;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use config::{FailoverSettings, ProbeLogin, Timing, WitnessConfig};

/// Why a witness stopped or a request failed.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The data directory cannot be used.
    #[error("witness data directory: {0}")]
    DataDir(String),
    /// The Raft store failed.
    #[error("witness storage: {0}")]
    Storage(#[from] raft::StorageError),
    /// Raft itself failed.
    #[error("raft: {0}")]
    Raft(String),
    /// A write was sent to a follower.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader's API address, if known.
        leader: Option<String>,
    },
    /// A write timed out: it may or may not have been committed.
    #[error("outcome unknown: the write did not complete in time")]
    Unknown,
    /// The API cannot listen.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Runs one witness until `shutdown`: its API on its own address from the cluster file, its
/// probes and its leader duties.
pub async fn run(cfg: Arc<WitnessConfig>, shutdown: CancellationToken) -> Result<(), WitnessError> {
    let addr = cfg.own_addr().to_owned();
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| WitnessError::Listen { addr: addr.clone(), source })?;
    let witness = node::Witness::start(cfg).await?;
    tracing::info!(id = witness.cfg.id, %addr, "witness started");
    let server = {
        let (router, stop) = (api::router(witness.clone()), shutdown.clone());
        tokio::spawn(async move {
            let served = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await;
            if let Err(e) = served {
                tracing::error!(error = %e, "witness API failed");
            }
        })
    };
    node::run_loops(witness.clone(), shutdown.clone()).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    if let Err(e) = witness.raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    tracing::info!("witness stopped");
    Ok(())
}
