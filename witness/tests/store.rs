//! The witness's Raft storage (redb log store + state machine) against openraft's own storage
//! test suite, and a reopen after a kill -9 in the middle of writes.

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use tandem_witness::raft::log_store::LogStore;
use tandem_witness::raft::state_machine::StateMachine;
use tandem_witness::raft::{StorageError, TypeConfig};

/// A fresh store in a temporary directory (kept alive by the guard).
struct TempStores;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for TempStores {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Arc::new(redb::Database::create(dir.path().join("witness.redb")).expect("redb"));
        Ok((dir, LogStore::new(db.clone())?, StateMachine::open(db)?))
    }
}

#[test]
fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(TempStores) {
        panic!("openraft's storage suite failed: {e}");
    }
}

/// Child mode of [`acknowledged_entries_survive_a_kill_9`]: appends entries one batch at a
/// time to the store at `$TANDEM_WITNESS_STORE_CHILD` and prints each acknowledged index.
#[test]
fn store_writer_child() {
    use std::io::Write;

    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    let Some(path) = std::env::var_os("TANDEM_WITNESS_STORE_CHILD") else { return };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let db = Arc::new(redb::Database::create(path).expect("redb"));
        let mut store = LogStore::new(db).expect("store");
        let mut out = std::io::stdout();
        for index in 1u64.. {
            let entry = Entry::<TypeConfig> {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                payload: EntryPayload::Blank,
            };
            store.blocking_append([entry]).await.expect("append");
            writeln!(out, "{index}").expect("stdout");
            out.flush().expect("stdout");
        }
    });
}

#[test]
fn acknowledged_entries_survive_a_kill_9() -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader};

    use openraft::storage::RaftLogStorage;
    use openraft::RaftLogReader;

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("witness.redb");
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["--exact", "store_writer_child", "--nocapture", "--test-threads", "1"])
        .env("TANDEM_WITNESS_STORE_CHILD", &path)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("child stdout"))?;
    let mut acknowledged = 0u64;
    for line in BufReader::new(stdout).lines() {
        if let Ok(n) = line?.trim().parse::<u64>() {
            acknowledged = n;
            if n >= 200 {
                break;
            }
        }
    }
    // SIGKILL in the middle of its writes: no clean shutdown of redb.
    child.kill()?;
    child.wait()?;
    assert!(acknowledged >= 200, "the child acknowledged {acknowledged} entries");

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let db = Arc::new(redb::Database::create(&path)?);
        let mut store = LogStore::new(db)?;
        let state = store.get_log_state().await?;
        let last = state.last_log_id.map(|l| l.index).unwrap_or(0);
        assert!(last >= acknowledged, "acknowledged up to {acknowledged}, reopened store ends at {last}");
        let entries = store.try_get_log_entries(1..=last).await?;
        let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, (1..=last).collect::<Vec<_>>(), "no gaps after the crash");
        anyhow::Ok(())
    })
}
