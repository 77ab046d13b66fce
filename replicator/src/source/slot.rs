//! Slot creation with an exported snapshot, kept alive for the initial copy.
//!
//! Between the slot (`conn.rs`) and the initial copy (`copy/`): the snapshot
//! `CREATE_REPLICATION_SLOT ... EXPORT_SNAPSHOT` exports lives only as long
//! as its replication connection runs no further command, so
//! [`HeldSnapshot`] owns that connection until [`HeldSnapshot::release`].

use tandem_core::Lsn;

use super::conn::{CreatedSlot, ReplicationConnection};
use super::error::SourceError;

/// An exported snapshot and the idle connection that keeps it valid.
#[derive(Debug)]
pub struct HeldSnapshot {
    conn: ReplicationConnection,
    slot: CreatedSlot,
    snapshot: String,
}

impl HeldSnapshot {
    /// Creates `slot` (TEMPORARY if asked: it then disappears with the
    /// connection) exporting a snapshot, and holds the snapshot.
    pub async fn create(
        mut conn: ReplicationConnection,
        slot: &str,
        temporary: bool,
    ) -> Result<HeldSnapshot, SourceError> {
        let created = conn.create_slot(slot, temporary, true).await?;
        let snapshot = created
            .snapshot_name
            .clone()
            .ok_or_else(|| SourceError::Protocol("CREATE_REPLICATION_SLOT exported no snapshot".into()))?;
        tracing::info!(slot, %created.consistent_point, snapshot, temporary, "created replication slot");
        Ok(HeldSnapshot { conn, slot: created, snapshot })
    }

    /// Name to pass to `SET TRANSACTION SNAPSHOT` / `pg_dump --snapshot`.
    pub fn snapshot_name(&self) -> &str {
        &self.snapshot
    }

    /// Transactions committing before this LSN are in the snapshot; those at or
    /// after it come through the stream.
    pub fn consistent_point(&self) -> Lsn {
        self.slot.consistent_point
    }

    /// The slot's name.
    pub fn slot_name(&self) -> &str {
        &self.slot.slot_name
    }

    /// Ends the snapshot and returns the connection (ready for START_REPLICATION).
    pub fn release(self) -> ReplicationConnection {
        self.conn
    }
}
