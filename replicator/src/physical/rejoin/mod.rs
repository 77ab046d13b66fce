//! `tandem rejoin NODE`: a fenced old primary becomes a standby of the new primary.
//!
//! Place in the data flow: after a failover, before the old primary serves anything again.
//! The flow, each step done before the next starts:
//! 1. the new primary is checked (a primary, the same system as the data directory, not
//!    the data directory itself), then the node's server is stopped if it runs;
//! 2. [`fork`]: where its timeline left the new primary's, and every transaction it
//!    committed after that (logged as "lost transaction" before anything changes);
//! 3. its slot on the new primary (kept WAL from here on), its own configuration files
//!    saved ([`local`]), `pg_rewind` from the new primary — or, when pg_rewind cannot
//!    (no `wal_log_hints`, WAL it needs gone...), a full re-clone: the directory moved aside
//!    and copied afresh as `tandem replica add` does ([`crate::physical::standby`]);
//! 4. its own configuration back, standby settings and `standby.signal`;
//! 5. started, and done once the new primary lists it as streaming.
//!
//! Telling the witness group (`POST /v1/rejoin`) is the caller's last step
//! (`tandem_witness::client`), taken only when this one succeeded.

pub mod fork;
pub mod local;
mod primary;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem_core::{Lsn, NodeId};

use super::standby::{self, StandbySettings};
use super::RelayError;
use crate::config::standby_slot_name;
pub use fork::{LostList, LostTransaction};

/// Why a rejoin stopped.
#[derive(Debug, thiserror::Error)]
pub enum RejoinError {
    /// Rejoining would be wrong or unsafe; nothing in the data directory was changed.
    #[error("refusing to rejoin: {0}")]
    Refused(String),
    /// A PostgreSQL program or file said something this code cannot read.
    #[error("cannot read {0}")]
    Parse(String),
    /// The node was made a standby and started, but the new primary does not list it as
    /// streaming.
    #[error("{0}")]
    NotStreaming(String),
    /// A step failed (SQL, a program, a file).
    #[error(transparent)]
    Step(#[from] RelayError),
    /// The re-clone failed after the old data directory was moved aside.
    #[error("re-cloning from the new primary failed (the old data directory is at {}): {source}", old_data.display())]
    Reclone {
        /// Where the old data directory is.
        old_data: PathBuf,
        /// Why the copy failed.
        source: Box<RelayError>,
    },
    /// A step after the node's slot was made on the new primary failed.
    #[error(
        "{source} (the slot {slot} on the new primary keeps WAL for this node from now on: run tandem rejoin \
         again, or drop the slot if the node will never rejoin)"
    )]
    SlotKept {
        /// The slot.
        slot: String,
        /// What failed.
        source: Box<RejoinError>,
    },
}

/// What to rejoin, and to what.
#[derive(Clone, Debug)]
pub struct RejoinSpec {
    /// The node's name: its `cluster_name`, its slot `tandem_standby_<name>` on the primary.
    pub node: NodeId,
    /// Its data directory (absolute).
    pub data_dir: PathBuf,
    /// The new primary, `host:port`.
    pub new_primary: String,
    /// The role to connect to the new primary as (superuser, or REPLICATION with pg_rewind's
    /// grants).
    pub user: String,
    /// Where `restore_command` reads the relay's WAL; `None` keeps the node's own setting.
    pub relay: Option<String>,
    /// The `tandem` program `restore_command` runs.
    pub tandem: PathBuf,
    /// Start the server and wait until it streams.
    pub start: bool,
    /// How long to wait for it to stream.
    pub stream_timeout: Duration,
}

/// How the node's data was brought back.
#[derive(Clone, Debug)]
pub enum RejoinPath {
    /// `pg_rewind` replaced what differed.
    Rewind,
    /// pg_rewind could not; the data directory was copied afresh.
    Reclone {
        /// What pg_rewind said.
        reason: String,
        /// Where the old data directory was moved.
        old_data: PathBuf,
    },
}

/// What a rejoin did.
#[derive(Clone, Debug)]
pub struct Rejoined {
    /// Rewind or re-clone.
    pub path: RejoinPath,
    /// The timeline and position where the node left the new primary's history (none when it
    /// never did).
    pub fork: Option<(u32, Lsn)>,
    /// The transactions it committed after the fork, now gone from it.
    pub lost: LostList,
    /// Its port (from its own configuration).
    pub port: u16,
    /// Its slot on the new primary.
    pub slot: String,
    /// Started and streaming from the new primary (false with `start` off).
    pub streaming: bool,
    /// Things the operator should read.
    pub warnings: Vec<String>,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RejoinError> + Send + 'static,
) -> Result<T, RejoinError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| RelayError::Protocol(format!("blocking task: {e}")))?
}

/// Makes the node in `spec.data_dir` a standby of `spec.new_primary` (see the module
/// header for the steps).
pub async fn rejoin(spec: &RejoinSpec) -> Result<Rejoined, RejoinError> {
    let target = primary::Target::new(&spec.new_primary, &spec.user, &spec.node)?;
    let dir = spec.data_dir.clone();
    let mut warnings = Vec::new();

    // 1. The new primary, then the node: never a primary's own directory, never another system.
    let admin = target.connect().await?;
    let before = primary::facts(&admin).await?;
    let d = dir.clone();
    let control = blocking(move || local::control(&d)).await?;
    let after = primary::facts(&admin).await?;
    primary::check_node_dir(&dir, &control, &before, &after)?;
    let d = dir.clone();
    if blocking(move || local::stop(&d)).await? {
        tracing::info!(node = %spec.node, dir = %dir.display(), "stopped the node's server");
    }

    // 2. What it loses, before anything changes.
    let d = dir.clone();
    let (fork, lost) = blocking(move || lost_after_fork(&d, &after)).await?;
    report_lost(&spec.node, fork, &lost);
    if let Some(why) = &lost.incomplete {
        warnings.push(format!("the list of lost transactions may be incomplete: {why}"));
    }

    // 3. Its slot on the new primary first (the WAL it will ask for is kept from now on),
    //    then its data.
    let slot = standby_slot_name(&spec.node);
    primary::ensure_slot(&admin, &slot).await?;
    drop(admin);
    let prepared = Prepared { fork, lost, slot: slot.clone(), warnings };
    finish(spec, &target, prepared).await.map_err(|e| RejoinError::SlotKept { slot, source: Box::new(e) })
}

/// What [`rejoin`] knows when it reaches the data: the fork, the lost transactions, the
/// slot, warnings so far.
struct Prepared {
    fork: Option<(u32, Lsn)>,
    lost: LostList,
    slot: String,
    warnings: Vec<String>,
}

/// Steps 3 to 5, once the slot exists.
async fn finish(spec: &RejoinSpec, target: &primary::Target, prepared: Prepared) -> Result<Rejoined, RejoinError> {
    let Prepared { fork, lost, slot, mut warnings } = prepared;
    let dir = spec.data_dir.clone();
    let d = dir.clone();
    if blocking(move || local::save_own_files(&d)).await? {
        warnings.push(format!(
            "an interrupted rejoin left the node's own configuration in {}: using it",
            local::saved_dir(&dir).display()
        ));
    }
    let (d, source) = (dir.clone(), target.source_conninfo());
    let path = match blocking(move || Ok(local::rewind(&d, &source))).await? {
        Ok(out) => {
            for line in out.lines().filter(|l| l.starts_with("pg_rewind:")) {
                tracing::info!("{line}");
            }
            let what = if out.contains("no rewind required") { "had nothing to rewind" } else { "rewound the node" };
            tracing::info!(node = %spec.node, "pg_rewind {what}: its data is the new primary's history now");
            RejoinPath::Rewind
        }
        Err(reason) => {
            tracing::warn!(node = %spec.node, %reason, "pg_rewind cannot rejoin the node: re-cloning it from the new primary");
            let old_data = reclone(spec, target, &mut warnings).await?;
            RejoinPath::Reclone { reason, old_data }
        }
    };

    // 4. Its own configuration back, as a standby of the new primary.
    let d = dir.clone();
    blocking(move || local::restore_own_files(&d)).await?;
    let restore = spec.relay.as_deref().map(|relay| standby::restore_command(&spec.tandem, relay));
    let settings = StandbySettings {
        name: spec.node.clone(),
        primary_conninfo: target.primary_conninfo(),
        slot: slot.clone(),
        port: None,
        restore_command: restore,
    };
    standby::write_settings(&dir, &format!("tandem rejoin {}", spec.node), &settings)?;
    let d = dir.clone();
    blocking(move || local::forget_own_files(&d)).await?;
    let d = dir.clone();
    let port = blocking(move || local::configured_port(&d)).await?;

    // 5. Started and streaming.
    let streaming = spec.start && {
        start(&dir, port).await?;
        target.wait_streaming(&spec.node, spec.stream_timeout).await?;
        true
    };
    Ok(Rejoined { path, fork, lost, port, slot, streaming, warnings })
}

/// Finds the fork and lists what the node committed after it.
fn lost_after_fork(dir: &Path, primary: &primary::Facts) -> Result<(Option<(u32, Lsn)>, LostList), RejoinError> {
    let control = local::control(dir)?;
    let tli = local::newest_timeline(dir, &control);
    let old = fork::timeline_path(&local::history(dir, tli)?, tli)?;
    let new = fork::timeline_path(&primary.history, primary.timeline)?;
    let Some((index, fork_lsn)) = fork::fork_point(&old, &new) else {
        return Err(RejoinError::Refused(format!(
            "the node's timelines ({}) and the new primary's ({}) share no history",
            describe(&old),
            describe(&new)
        )));
    };
    let Some(fork_lsn) = fork_lsn else { return Ok((None, LostList::default())) };
    let ranges = fork::lost_ranges(&old, index, fork_lsn);
    Ok((Some((old[index].tli, fork_lsn)), fork::list_lost(dir, &ranges)?))
}

fn describe(path: &[fork::TimelineSpan]) -> String {
    path.iter().map(|s| s.tli.to_string()).collect::<Vec<_>>().join(" → ")
}

/// Logs every lost transaction and the count.
fn report_lost(node: &NodeId, fork: Option<(u32, Lsn)>, lost: &LostList) {
    let Some((tli, at)) = fork else {
        tracing::info!(%node, "the node never left the new primary's timeline: it loses nothing");
        return;
    };
    for t in &lost.transactions {
        tracing::warn!(
            "lost transaction: xid {} committed at {} (timeline {}, {}) on {node} after the fork",
            t.xid,
            t.committed,
            t.tli,
            t.lsn
        );
    }
    tracing::warn!(
        "{node} loses {} transaction(s) it committed after it left the new primary's history at {at} on \
         timeline {tli}; in sync mode none of them was acknowledged to a client through Tandem (the commit \
         quorum never confirmed them), in async mode they may have been",
        lost.transactions.len()
    );
}

/// Moves the data directory aside and copies the new primary into it; returns where the old
/// one went.
async fn reclone(
    spec: &RejoinSpec,
    target: &primary::Target,
    warnings: &mut Vec<String>,
) -> Result<PathBuf, RejoinError> {
    let d = spec.data_dir.clone();
    let old_data = blocking(move || local::move_aside(&d, std::time::SystemTime::now())).await?;
    tracing::info!(old = %old_data.display(), "moved the node's data directory aside");
    let added = standby::clone_primary(&spec.node, &target.source_conninfo(), &spec.data_dir)
        .await
        .map_err(|e| RejoinError::Reclone { old_data: old_data.clone(), source: Box::new(e) })?;
    warnings.extend(added.warnings);
    Ok(old_data)
}

async fn start(dir: &Path, port: u16) -> Result<(), RejoinError> {
    let server = tandem_localpg::LocalServer::at(dir, port);
    let log = server.log_path();
    tokio::task::spawn_blocking(move || server.start())
        .await
        .map_err(|e| RelayError::Protocol(format!("start task: {e}")))?
        .map_err(|e| RejoinError::NotStreaming(format!("starting it failed: {e} (server log: {})", log.display())))
}
