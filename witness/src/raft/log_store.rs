//! The Raft log and vote on disk, in redb.
//!
//! Place in the data flow: the leader's proposals and a follower's appended entries land
//! here before they count: every write is one redb transaction committed with
//! `Durability::Immediate` (fsync) and only then does openraft hear that the I/O completed,
//! so a witness that acknowledged an entry still has it after a kill -9. The vote and the
//! committed log id live in the same file, so a restarted witness neither votes twice in a
//! term nor forgets what was committed. Entries are stored as JSON (small, and readable with
//! any redb tool when debugging).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, LogId, RaftLogReader, Vote};
use redb::{Database, ReadableTable, TableDefinition};

use super::{storage_error, StorageError, TypeConfig, WitnessId};

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// The log store of one witness (clones share the database).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    /// The log store in `db` (tables are created on first write).
    pub fn new(db: Arc<Database>) -> Result<LogStore, StorageError> {
        let store = LogStore { db };
        // Create the tables so readers never see "table does not exist".
        store.write(ErrorSubject::Store, |txn| {
            txn.open_table(LOGS)?;
            txn.open_table(META)?;
            Ok(())
        })?;
        Ok(store)
    }

    /// Runs `f` in one durable write transaction (fsynced at commit).
    fn write(
        &self,
        subject: ErrorSubject<WitnessId>,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StorageError> {
        let err = |e: &dyn std::fmt::Display| storage_error(subject.clone(), ErrorVerb::Write, e);
        let mut txn = self.db.begin_write().map_err(|e| err(&e))?;
        txn.set_durability(redb::Durability::Immediate);
        f(&txn).map_err(|e| err(&e))?;
        txn.commit().map_err(|e| err(&e))
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        let err = |e: &dyn std::fmt::Display| storage_error(ErrorSubject::Store, ErrorVerb::Read, e);
        let txn = self.db.begin_read().map_err(|e| err(&e))?;
        let table = txn.open_table(META).map_err(|e| err(&e))?;
        match table.get(key).map_err(|e| err(&e))? {
            Some(v) => serde_json::from_slice(v.value()).map(Some).map_err(|e| err(&e)),
            None => Ok(None),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(value).map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
        self.write(ErrorSubject::Store, |txn| {
            txn.open_table(META)?.insert(key, bytes.as_slice())?;
            Ok(())
        })
    }

    fn read_range(&self, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let err = |e: &dyn std::fmt::Display| storage_error(ErrorSubject::Logs, ErrorVerb::Read, e);
        let txn = self.db.begin_read().map_err(|e| err(&e))?;
        let table = txn.open_table(LOGS).map_err(|e| err(&e))?;
        let mut out = Vec::new();
        for item in table.range::<u64>(range).map_err(|e| err(&e))? {
            let (_, v) = item.map_err(|e| err(&e))?;
            out.push(serde_json::from_slice(v.value()).map_err(|e| err(&e))?);
        }
        Ok(out)
    }

    fn last_entry(&self) -> Result<Option<Entry<TypeConfig>>, StorageError> {
        let err = |e: &dyn std::fmt::Display| storage_error(ErrorSubject::Logs, ErrorVerb::Read, e);
        let txn = self.db.begin_read().map_err(|e| err(&e))?;
        let table = txn.open_table(LOGS).map_err(|e| err(&e))?;
        let last = table.last().map_err(|e| err(&e))?;
        let entry = match last {
            Some((_, v)) => serde_json::from_slice(v.value()).map(Some).map_err(|e| err(&e)),
            None => Ok(None),
        };
        entry
    }
}

fn owned_bounds<RB: RangeBounds<u64>>(range: &RB) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        self.read_range(owned_bounds(&range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId<WitnessId>> = self.get_meta(LAST_PURGED)?;
        let last = self.last_entry()?.map(|e| e.log_id).or(last_purged);
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<WitnessId>) -> Result<(), StorageError> {
        self.put_meta(VOTE, vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<WitnessId>>, StorageError> {
        self.get_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<WitnessId>>) -> Result<(), StorageError> {
        self.put_meta(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<WitnessId>>, StorageError> {
        Ok(self.get_meta::<Option<LogId<WitnessId>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut rows = Vec::new();
        for entry in entries {
            let bytes =
                serde_json::to_vec(&entry).map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Write, e))?;
            rows.push((entry.log_id.index, bytes));
        }
        let result = self.write(ErrorSubject::Logs, |txn| {
            let mut table = txn.open_table(LOGS)?;
            for (index, bytes) in &rows {
                table.insert(*index, bytes.as_slice())?;
            }
            Ok(())
        });
        // Durable (or failed) before openraft hears of it.
        callback.log_io_completed(result.clone().map_err(std::io::Error::other));
        result
    }

    async fn truncate(&mut self, log_id: LogId<WitnessId>) -> Result<(), StorageError> {
        self.write(ErrorSubject::Logs, |txn| {
            let mut table = txn.open_table(LOGS)?;
            table.retain_in(log_id.index.., |_, _| false)?;
            Ok(())
        })
    }

    async fn purge(&mut self, log_id: LogId<WitnessId>) -> Result<(), StorageError> {
        let bytes =
            serde_json::to_vec(&Some(log_id)).map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        self.write(ErrorSubject::Logs, |txn| {
            txn.open_table(META)?.insert(LAST_PURGED, bytes.as_slice())?;
            let mut table = txn.open_table(LOGS)?;
            table.retain_in(..=log_id.index, |_, _| false)?;
            Ok(())
        })
    }
}
