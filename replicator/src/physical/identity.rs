//! Which PostgreSQL system the relay holds WAL of.
//!
//! Place in the data flow: checked before every start of the receiver. The first start
//! records the primary's system identifier (from `IDENTIFY_SYSTEM`) in the relay's data
//! directory; every later start refuses a primary with another identifier, so the relay
//! never mixes two systems' WAL (a DSN pointed at the wrong server, a primary rebuilt with
//! initdb). Segments already in the directory are checked too (their first page carries the
//! identifier), for a directory filled before this file existed.

use std::path::Path;

use tandem_core::Lsn;

use super::segments;
use super::RelayError;
use crate::source::ReplicationConnection;

/// File in the relay's data directory holding the system identifier.
const SYSTEM_ID_FILE: &str = "system_identifier";

/// What `IDENTIFY_SYSTEM` said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The system identifier (initdb's random number, kept by every physical copy).
    pub system_id: u64,
    /// The server's current timeline.
    pub timeline: u32,
    /// Its current WAL position.
    pub position: Lsn,
}

/// Asks the server behind `config` who it is, over a physical replication connection.
pub async fn identify(config: &tokio_postgres::Config, application_name: &str) -> Result<Identity, RelayError> {
    let params = [("replication", "true"), ("application_name", application_name)];
    let mut conn = ReplicationConnection::connect_with_params(config, &params).await.map_err(RelayError::Source)?;
    let info = conn.identify_system().await.map_err(RelayError::Source);
    conn.close().await;
    let info = info?;
    let system_id = info
        .system_id
        .parse::<u64>()
        .map_err(|_| RelayError::Protocol(format!("IDENTIFY_SYSTEM returned system id {:?}", info.system_id)))?;
    Ok(Identity { system_id, timeline: info.timeline, position: info.xlog_pos })
}

/// Checks `found` against the identifier recorded in `data_dir` (and in the newest segment
/// of `wal_dir`), recording it on first use.
pub fn check_and_record(data_dir: &Path, wal_dir: &Path, seg_size: u64, found: u64) -> Result<(), RelayError> {
    let file = data_dir.join(SYSTEM_ID_FILE);
    let recorded = match std::fs::read_to_string(&file) {
        Ok(text) => Some(text.trim().parse::<u64>().map_err(|_| {
            RelayError::Protocol(format!("{} holds {:?}, not a system identifier", file.display(), text.trim()))
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(RelayError::Io { what: format!("read {}", file.display()), source: e }),
    };
    let on_disk = match recorded {
        Some(id) => Some(id),
        None => newest_segment_system_id(wal_dir, seg_size)?,
    };
    if let Some(expected) = on_disk {
        if expected != found {
            return Err(RelayError::OtherSystem { expected, found, data_dir: data_dir.to_path_buf() });
        }
    }
    if recorded.is_none() {
        let tmp = data_dir.join(format!("{SYSTEM_ID_FILE}.tmp"));
        std::fs::write(&tmp, format!("{found}\n")).map_err(RelayError::io("record the system identifier"))?;
        std::fs::rename(&tmp, &file).map_err(RelayError::io("record the system identifier"))?;
    }
    Ok(())
}

fn newest_segment_system_id(wal_dir: &Path, seg_size: u64) -> Result<Option<u64>, RelayError> {
    let files = match segments::list(wal_dir, seg_size) {
        Ok(files) => files,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RelayError::Io { what: format!("list {}", wal_dir.display()), source: e }),
    };
    for seg in files.iter().rev() {
        if let Some(id) = segments::system_identifier(&seg.path).map_err(RelayError::io("read a WAL segment"))? {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_then_refuses_another_system() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("wal");
        std::fs::create_dir(&wal).unwrap();
        check_and_record(dir.path(), &wal, 1 << 24, 42).unwrap();
        check_and_record(dir.path(), &wal, 1 << 24, 42).unwrap();
        let err = check_and_record(dir.path(), &wal, 1 << 24, 43).unwrap_err().to_string();
        assert!(err.contains("system 43") && err.contains("system 42"), "{err}");
    }
}
