//! Tests of the change log against real files in temporary directories.

mod append;
mod recovery;
mod trim;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use tandem_core::Lsn;

use super::{ChangeLog, ChangeLogOptions};

/// A payload that differs per LSN (and in length) so mix-ups show.
fn payload(lsn: u64) -> Bytes {
    Bytes::from(format!("txn {lsn};").repeat((lsn % 7 + 1) as usize))
}

fn open(dir: &Path, segment_size: u64) -> ChangeLog {
    ChangeLog::open(dir, ChangeLogOptions { segment_size, ..Default::default() }).expect("open change log")
}

async fn append_all(log: &ChangeLog, lsns: impl IntoIterator<Item = u64>) {
    for lsn in lsns {
        log.append(Lsn(lsn), payload(lsn)).await.expect("append");
    }
}

/// Every record above `after` that is durable now.
fn read_all(log: &ChangeLog, after: u64) -> Vec<(Lsn, Bytes)> {
    let mut reader = log.reader(Lsn(after)).expect("reader");
    let mut out = Vec::new();
    while let Some(rec) = reader.try_next().expect("read") {
        out.push(rec);
    }
    out
}

/// Asserts the log holds exactly `lsns`, with their payloads, in order.
fn assert_holds(log: &ChangeLog, lsns: impl IntoIterator<Item = u64>) {
    let want: Vec<(Lsn, Bytes)> = lsns.into_iter().map(|l| (Lsn(l), payload(l))).collect();
    let got = read_all(log, 0);
    assert_eq!(got.len(), want.len(), "record count");
    assert!(got == want, "records differ: got LSNs {:?}", got.iter().map(|r| r.0 .0).collect::<Vec<_>>());
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    files.sort();
    files
}
