//! Recovery on open: torn tails are cut, corruption elsewhere is an error.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use tandem_core::Lsn;

use super::{append_all, assert_holds, open, segment_files};
use crate::changelog::format::{encode_segment_header, parse_segment_file_name, segment_file_name};
use crate::changelog::{ChangeLog, ChangeLogError, ChangeLogOptions};

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

fn set_len(path: &Path, len: u64) {
    OpenOptions::new().write(true).open(path).unwrap().set_len(len).unwrap();
}

fn flip_byte(path: &Path, offset: u64) {
    let f = OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], offset).unwrap();
}

fn try_open(dir: &Path) -> Result<ChangeLog, ChangeLogError> {
    ChangeLog::open(dir, ChangeLogOptions { segment_size: 1024, ..Default::default() })
}

/// A log of records 1..=n in 1 KiB segments, closed.
async fn make_log(dir: &Path, n: u64) {
    let log = open(dir, 1024);
    append_all(&log, 1..=n).await;
}

#[tokio::test]
async fn torn_tail_mid_record_is_cut_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 40).await;
    let last = segment_files(dir.path()).pop().unwrap();
    set_len(&last, file_len(&last) - 5);
    let log = open(dir.path(), 1024);
    assert_eq!(log.last_lsn(), Lsn(39));
    assert_holds(&log, 1..=39);
    append_all(&log, 40..=60).await;
    assert_holds(&log, 1..=60);
    drop(log);
    assert_holds(&open(dir.path(), 1024), 1..=60);
}

#[tokio::test]
async fn flipped_byte_in_last_record_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 40).await;
    let last = segment_files(dir.path()).pop().unwrap();
    let before = file_len(&last);
    flip_byte(&last, before - 3);
    let log = open(dir.path(), 1024);
    assert_eq!(log.last_lsn(), Lsn(39));
    assert_holds(&log, 1..=39);
    assert_eq!(file_len(&last), before - 16 - super::payload(40).len() as u64, "exactly the bad record is cut");
    append_all(&log, 40..=41).await;
    assert_holds(&log, 1..=41);
}

#[tokio::test]
async fn zero_filled_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 10).await;
    let last = segment_files(dir.path()).pop().unwrap();
    let len = file_len(&last);
    set_len(&last, len + 4096);
    let log = open(dir.path(), 1024);
    assert_eq!(file_len(&last), len);
    assert_holds(&log, 1..=10);
}

#[tokio::test]
async fn torn_only_record_of_last_segment_removes_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 40).await;
    let last = segment_files(dir.path()).pop().unwrap();
    let name = last.file_name().unwrap().to_str().unwrap();
    let first_in_last = parse_segment_file_name(name).unwrap().0;
    // Cut everything after the header of the last segment's first record.
    set_len(&last, 24 + 3);
    let log = open(dir.path(), 1024);
    assert!(!last.exists(), "empty torn segment should be removed");
    assert_eq!(log.last_lsn(), Lsn(first_in_last - 1));
    assert_holds(&log, 1..first_in_last);
    append_all(&log, first_in_last..=50).await;
    drop(log);
    assert_holds(&open(dir.path(), 1024), 1..=50);
}

#[tokio::test]
async fn interrupted_segment_creation_is_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 10).await;
    // Creation died before the header was complete...
    std::fs::write(dir.path().join(segment_file_name(Lsn(11))), [0u8; 10]).unwrap();
    let log = open(dir.path(), 1024);
    assert_holds(&log, 1..=10);
    drop(log);
    // ...or after the header, before any record.
    std::fs::write(dir.path().join(segment_file_name(Lsn(11))), encode_segment_header(Lsn(10))).unwrap();
    let log = open(dir.path(), 1024);
    assert_eq!(log.last_lsn(), Lsn(10));
    append_all(&log, 12..=14).await;
    assert_holds(&log, (1..=10).chain(12..=14));
}

#[tokio::test]
async fn corruption_in_an_older_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 40).await;
    let first = segment_files(dir.path()).remove(0);
    flip_byte(&first, 100);
    match try_open(dir.path()) {
        Err(ChangeLogError::Corrupt { path, .. }) => assert_eq!(path, first),
        other => panic!("expected corruption error, got {:?}", other.map(|_| ())),
    }
    flip_byte(&first, 100);
    try_open(dir.path()).expect("repaired log opens");
}

#[tokio::test]
async fn truncated_older_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 40).await;
    let first = segment_files(dir.path()).remove(0);
    set_len(&first, file_len(&first) - 1);
    assert!(matches!(try_open(dir.path()), Err(ChangeLogError::Corrupt { .. })));
}

#[tokio::test]
async fn missing_middle_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 120).await;
    let files = segment_files(dir.path());
    assert!(files.len() >= 3);
    std::fs::remove_file(&files[1]).unwrap();
    match try_open(dir.path()) {
        Err(ChangeLogError::Corrupt { path, reason, .. }) => {
            assert_eq!(path, files[2]);
            assert!(reason.contains("missing"), "{reason}");
        }
        other => panic!("expected corruption error, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn bad_header_with_records_is_an_error_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 40).await;
    let last = segment_files(dir.path()).pop().unwrap();
    flip_byte(&last, 2);
    assert!(matches!(try_open(dir.path()), Err(ChangeLogError::Corrupt { offset: 0, .. })));
}

#[tokio::test]
async fn file_renamed_to_a_wrong_lsn_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 40).await;
    let last = segment_files(dir.path()).pop().unwrap();
    std::fs::rename(&last, dir.path().join(segment_file_name(Lsn(1000)))).unwrap();
    assert!(matches!(try_open(dir.path()), Err(ChangeLogError::Corrupt { .. })));
}
