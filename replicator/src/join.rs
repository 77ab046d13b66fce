//! Bringing a replica into one database's stream, in the background and
//! retried until it works, so that one replica that is down (or whose initial
//! copy fails) never stops the others — nor, in sync mode, the primary while
//! a quorum of replicas remains.
//!
//! Place in the data flow: beside the source loop of one database (see
//! [`crate::run`]). An attempt asks the replica side whether the replica still
//! needs its initial copy; if so, it is copied in the snapshot of a temporary
//! slot (everything committed after that snapshot is in the change log, which
//! is not trimmed past the replica meanwhile: its position counts as 0/0 until
//! it joins); then its applier starts and its position is forwarded to the
//! watch the source loop and the trimmer read.

use std::sync::Arc;
use std::time::Duration;

use tandem_core::Lsn;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::changelog::ChangeLog;
use crate::config::ReplicaConfig;
use crate::seam::{AppliedLsn, BoxError, ReplicaSide, SnapshotInfo};
use crate::source::primary::DatabaseInfo;
use crate::source::{HeldSnapshot, ReplicationConnection};

/// Pause after the first failed attempt; doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest pause between attempts.
const MAX_RETRY: Duration = Duration::from_secs(10);

/// What joining replicas to one database's stream needs.
pub(crate) struct Joiner {
    /// The primary (its database part is replaced per connection).
    pub primary: tokio_postgres::Config,
    /// The database whose stream the replicas join.
    pub db: DatabaseInfo,
    /// The stream's slot; temporary copy slots are named after it.
    pub slot: String,
    /// `application_name` of the stream; copy connections get a suffix.
    pub app: String,
    /// Copies and appliers.
    pub side: Arc<dyn ReplicaSide>,
    /// The database's change log, read by the appliers.
    pub log: ChangeLog,
    /// Ends retries, copies and appliers.
    pub stop: CancellationToken,
}

/// The snapshot a replica can be copied in, as the replica side sees it.
pub(crate) fn snapshot_info(db: &DatabaseInfo, held: &HeldSnapshot) -> SnapshotInfo {
    SnapshotInfo {
        database: db.name.clone(),
        slot: held.slot_name().to_owned(),
        snapshot: held.snapshot_name().to_owned(),
        consistent_point: held.consistent_point(),
    }
}

impl Joiner {
    /// Joins `replica` (the `index`-th of the configuration) in the
    /// background: the first attempt at once, then retries with backoff.
    /// The returned watch is 0/0 until its applier runs, then follows it.
    pub fn spawn(self: &Arc<Self>, index: usize, replica: ReplicaConfig) -> AppliedLsn {
        let (tx, rx) = watch::channel(Lsn::ZERO);
        let this = self.clone();
        tokio::spawn(async move {
            let mut delay = FIRST_RETRY;
            let applier = loop {
                let attempt = tokio::select! {
                    _ = this.stop.cancelled() => return,
                    r = this.attempt(index, &replica) => r,
                };
                match attempt {
                    Ok(rx) => break rx,
                    Err(e) => tracing::warn!(replica = %replica.name, database = this.db.name,
                        error = %e, retry_in = ?delay, "replica cannot join the stream yet"),
                }
                tokio::select! {
                    _ = this.stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(MAX_RETRY);
            };
            tracing::info!(replica = %replica.name, database = this.db.name, "replica joined the stream");
            forward(applier, tx, &this.stop).await;
        });
        rx
    }

    /// One attempt: copy if needed, then start the applier.
    async fn attempt(&self, index: usize, replica: &ReplicaConfig) -> Result<AppliedLsn, BoxError> {
        if self.side.needs_copy(&self.primary, replica, &self.db.name).await? {
            self.copy_in_temporary_slot(index, replica).await?;
        }
        self.side.spawn_applier(replica, &self.db.name, self.log.clone(), self.stop.clone())
    }

    /// Copies `replica` in the exported snapshot of a temporary slot, dropped afterwards.
    async fn copy_in_temporary_slot(&self, index: usize, replica: &ReplicaConfig) -> Result<(), BoxError> {
        let conn = ReplicationConnection::connect(&self.primary, &self.db.name, &format!("{}_copy", self.app)).await?;
        // One slot per replica, so replicas joining at once do not collide;
        // `<slot>_c<n>` stays within 63 bytes for the longest allowed prefix.
        let held = HeldSnapshot::create(conn, &format!("{}_c{index}", self.slot), true).await?;
        let snap = snapshot_info(&self.db, &held);
        tracing::info!(replica = %replica.name, database = self.db.name, "initial copy");
        let copied = self.side.initial_copy(&self.primary, replica, &snap).await;
        held.release().close().await;
        copied
    }
}

/// Publishes the applier's position on `tx` until the applier or `stop` ends.
async fn forward(mut applier: AppliedLsn, tx: watch::Sender<Lsn>, stop: &CancellationToken) {
    loop {
        let lsn = *applier.borrow_and_update();
        tx.send_if_modified(|cur| {
            let newer = lsn > *cur;
            if newer {
                *cur = lsn;
            }
            newer
        });
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = applier.changed() => if changed.is_err() { return },
        }
    }
}
