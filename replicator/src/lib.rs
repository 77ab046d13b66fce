//! Tandem replicator: the change stream from the primary to every replica.
//!
//! Data flow: slot (`source/`) → decoder (`decoder/`) → change log
//! (`changelog/`) → applier per replica (`apply/`). [`change`] holds the
//! decoded transactions that travel along it; [`run()`] wires the parts
//! together; [`seam`] is the interface to the replica side (copy and apply).

pub mod change;
pub mod changelog;
pub mod config;
pub mod decoder;
mod run;
pub mod seam;
pub mod source;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use config::{Mode, ReplicaConfig, ReplicatorConfig};
pub use run::{changelog_dir, run_with, ReplicatorError};

/// Runs the replicator described by `cfg` until `shutdown` is cancelled.
///
/// The replica side (initial copy and appliers) is not wired in yet: until
/// `copy/`/`apply/` provide a [`seam::ReplicaSide`], use [`run_with`].
pub async fn run(
    cfg: Arc<ReplicatorConfig>,
    shutdown: CancellationToken,
) -> Result<(), ReplicatorError> {
    run_with(cfg, shutdown, Arc::new(seam::Unwired)).await
}
