//! The Raft state machine: committed requests applied to the [`ClusterState`], and its
//! snapshots.
//!
//! Place in the data flow: the last step of a commit on every witness. The state lives in
//! memory (it is small: nodes, leases, history) behind a `watch` channel that API readers
//! and long-polls subscribe to; a snapshot (state + last applied log id + membership) is
//! written to redb durably, so a restarted witness starts from its last snapshot and openraft
//! re-applies the committed log after it (the log store keeps the committed id).

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftSnapshotBuilder, StoredMembership};
use redb::{Database, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{storage_error, StorageError, TypeConfig, WitnessId};
use crate::state::{ClusterState, Outcome};

const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
const CURRENT: &str = "current";

/// What a snapshot holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Stored {
    last_applied: Option<LogId<WitnessId>>,
    membership: StoredMembership<WitnessId, BasicNode>,
    state: ClusterState,
    snapshot_id: String,
}

/// The state machine of one witness.
pub struct StateMachine {
    db: Arc<Database>,
    last_applied: Option<LogId<WitnessId>>,
    membership: StoredMembership<WitnessId, BasicNode>,
    state: ClusterState,
    /// Publishes the state after every apply, for readers and watchers.
    published: watch::Sender<ClusterState>,
    snapshot_count: u64,
}

impl StateMachine {
    /// The state machine in `db`, starting from its last durable snapshot (if any).
    pub fn open(db: Arc<Database>) -> Result<StateMachine, StorageError> {
        let stored = read_snapshot(&db)?.unwrap_or_default();
        let (published, _) = watch::channel(stored.state.clone());
        Ok(StateMachine {
            db,
            last_applied: stored.last_applied,
            membership: stored.membership,
            state: stored.state,
            published,
            snapshot_count: 0,
        })
    }

    /// A receiver of the state as applied on this witness.
    pub fn subscribe(&self) -> watch::Receiver<ClusterState> {
        self.published.subscribe()
    }

    fn stored(&self) -> Stored {
        Stored {
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            state: self.state.clone(),
            snapshot_id: String::new(),
        }
    }
}

fn read_snapshot(db: &Database) -> Result<Option<Stored>, StorageError> {
    let err = |e: &dyn std::fmt::Display| storage_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e);
    let txn = db.begin_read().map_err(|e| err(&e))?;
    let table = match txn.open_table(SNAPSHOT) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(err(&e)),
    };
    match table.get(CURRENT).map_err(|e| err(&e))? {
        Some(v) => serde_json::from_slice(v.value()).map(Some).map_err(|e| err(&e)),
        None => Ok(None),
    }
}

fn write_snapshot(db: &Database, bytes: &[u8]) -> Result<(), StorageError> {
    let err = |e: &dyn std::fmt::Display| storage_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e);
    let mut txn = db.begin_write().map_err(|e| err(&e))?;
    txn.set_durability(redb::Durability::Immediate);
    {
        let mut table = txn.open_table(SNAPSHOT).map_err(|e| err(&e))?;
        table.insert(CURRENT, bytes).map_err(|e| err(&e))?;
    }
    txn.commit().map_err(|e| err(&e))
}

fn snapshot_of(stored: &Stored) -> Result<Snapshot<TypeConfig>, StorageError> {
    let bytes =
        serde_json::to_vec(stored).map_err(|e| storage_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
    Ok(Snapshot {
        meta: SnapshotMeta {
            last_log_id: stored.last_applied,
            last_membership: stored.membership.clone(),
            snapshot_id: stored.snapshot_id.clone(),
        },
        snapshot: Box::new(Cursor::new(bytes)),
    })
}

/// Builds snapshots from a copy of the state taken when openraft asks.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    stored: Stored,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let snapshot = snapshot_of(&self.stored)?;
        write_snapshot(&self.db, snapshot.snapshot.get_ref())?;
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<WitnessId>>, StoredMembership<WitnessId, BasicNode>), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut outcomes = Vec::new();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => outcomes.push(Outcome { epoch: self.state.epoch, ..Outcome::default() }),
                EntryPayload::Normal(req) => outcomes.push(self.state.apply(&req)),
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    outcomes.push(Outcome { epoch: self.state.epoch, ..Outcome::default() });
                }
            }
        }
        self.published.send_replace(self.state.clone());
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_count += 1;
        let mut stored = self.stored();
        let last = stored.last_applied.map(|l| format!("{}-{}", l.leader_id, l.index)).unwrap_or_default();
        stored.snapshot_id = format!("{last}-{}", self.snapshot_count);
        SnapshotBuilder { db: self.db.clone(), stored }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<WitnessId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let mut stored: Stored = serde_json::from_slice(&bytes)
            .map_err(|e| storage_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        stored.last_applied = meta.last_log_id;
        stored.membership = meta.last_membership.clone();
        stored.snapshot_id = meta.snapshot_id.clone();
        let bytes = serde_json::to_vec(&stored)
            .map_err(|e| storage_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        write_snapshot(&self.db, &bytes)?;
        self.last_applied = stored.last_applied;
        self.membership = stored.membership;
        self.state = stored.state;
        self.published.send_replace(self.state.clone());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        match read_snapshot(&self.db)? {
            Some(stored) => snapshot_of(&stored).map(Some),
            None => Ok(None),
        }
    }
}
