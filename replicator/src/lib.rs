//! Tandem replicator: the change stream from the primary to every replica.
//!
//! Physical mode (the default, [`physical`]): standbys stream WAL from the primary and the
//! replicator is a durable WAL relay in the primary's commit quorum.
//!
//! Logical mode (opt-in): slot (`source/`) → decoder (`decoder/`) → change log
//! (`changelog/`) → applier per replica (`apply/`). [`change`] holds the
//! decoded transactions that travel along it; [`run()`] wires the parts
//! together; [`seam`] is the interface to the replica side (copy and apply).

pub mod apply;
pub mod change;
pub mod changelog;
pub mod config;
pub mod copy;
pub mod ddl;
pub mod decoder;
mod join;
pub mod physical;
mod run;
pub mod seam;
pub mod source;
pub mod status;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use config::{standby_slot_name, Mode, ReplicaConfig, Replication, ReplicatorConfig};
pub use run::{changelog_dir, run_with, ReplicatorError};

/// Runs the replicator described by `cfg` until `shutdown` is cancelled:
/// the status endpoint (if `status_listen` is set), then the source with
/// [`apply::Replicas`] doing initial copies and applies.
pub async fn run(cfg: Arc<ReplicatorConfig>, shutdown: CancellationToken) -> Result<(), ReplicatorError> {
    if cfg.replication == Replication::Physical {
        return Ok(physical::run(cfg, shutdown).await?);
    }
    let board = status::StatusBoard::new(cfg.mode.as_str());
    if let Some(addr) = cfg.status_listen {
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|source| ReplicatorError::Status { addr, source })?;
        let (board, stop) = (board.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = status::serve(listener, board, stop).await {
                tracing::error!(error = %e, "status endpoint failed");
            }
        });
    }
    let side = apply::Replicas::new(&cfg, Some(board))?;
    run_with(cfg, shutdown, Arc::new(side)).await
}
