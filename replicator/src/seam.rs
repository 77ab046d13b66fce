//! The seam between the source side (this crate's `source/`, driven by
//! [`crate::run`]) and the replica side (`copy/` and `apply/`).
//!
//! [`crate::run`] decides *when* a replica needs an initial copy and holds the
//! exported snapshot for it; the replica side does the copy and runs one
//! applier per (replica, database), publishing its progress as an
//! [`AppliedLsn`] watch that the source uses for sync-mode flush and that
//! `run` uses to trim the change log.

use futures::future::BoxFuture;
use tandem_core::Lsn;
use tokio_util::sync::CancellationToken;

use crate::changelog::ChangeLog;
use crate::config::ReplicaConfig;
pub use crate::source::AppliedLsn;

/// Any error of the replica side, carried as is.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An exported snapshot a replica can be copied in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Database the snapshot belongs to.
    pub database: String,
    /// Slot whose creation exported it (temporary for replicas added later).
    pub slot: String,
    /// Name for `SET TRANSACTION SNAPSHOT` / `pg_dump --snapshot`; valid until
    /// [`ReplicaSide::initial_copy`] returns.
    pub snapshot: String,
    /// Transactions with `commit_lsn < consistent_point` are in the snapshot;
    /// those with `commit_lsn >= consistent_point` come through the change log
    /// and must be applied after the copy.
    pub consistent_point: Lsn,
}

/// What [`crate::run`] needs from `copy/` and `apply/`.
pub trait ReplicaSide: Send + Sync + 'static {
    /// Whether `database` on `replica` still needs its initial copy (no progress row).
    fn needs_copy<'a>(
        &'a self,
        primary: &'a tokio_postgres::Config,
        replica: &'a ReplicaConfig,
        database: &'a str,
    ) -> BoxFuture<'a, Result<bool, BoxError>>;

    /// Copies `snapshot.database` into `replica` inside the snapshot and records
    /// progress so that its applier starts at `snapshot.consistent_point`.
    fn initial_copy<'a>(
        &'a self,
        primary: &'a tokio_postgres::Config,
        replica: &'a ReplicaConfig,
        snapshot: &'a SnapshotInfo,
    ) -> BoxFuture<'a, Result<(), BoxError>>;

    /// Starts the applier of `replica` for `database`, reading `log`, until
    /// `shutdown`. The returned watch holds the commit LSN of the last
    /// transaction applied (every `commit_lsn <=` it is applied) and starts at
    /// the replica's progress row.
    fn spawn_applier(
        &self,
        replica: &ReplicaConfig,
        database: &str,
        log: ChangeLog,
        shutdown: CancellationToken,
    ) -> Result<AppliedLsn, BoxError>;
}

/// Placeholder until `copy/` and `apply/` are wired in: every call fails with a clear message.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unwired;

#[derive(Debug, thiserror::Error)]
#[error("the replica side (copy/apply) is not wired into tandem_replicator::run yet")]
struct NotWired;

impl ReplicaSide for Unwired {
    fn needs_copy<'a>(
        &'a self,
        _: &'a tokio_postgres::Config,
        _: &'a ReplicaConfig,
        _: &'a str,
    ) -> BoxFuture<'a, Result<bool, BoxError>> {
        Box::pin(async { Err(Box::new(NotWired) as BoxError) })
    }
    fn initial_copy<'a>(
        &'a self,
        _: &'a tokio_postgres::Config,
        _: &'a ReplicaConfig,
        _: &'a SnapshotInfo,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async { Err(Box::new(NotWired) as BoxError) })
    }
    fn spawn_applier(&self, _: &ReplicaConfig, _: &str, _: ChangeLog, _: CancellationToken) -> Result<AppliedLsn, BoxError> {
        Err(Box::new(NotWired))
    }
}
