//! Segment rollover, trim, and readers that follow the log.

use std::time::Duration;

use tandem_core::Lsn;
use tokio::time::timeout;

use super::{append_all, assert_holds, open, payload, read_all, segment_files};
use crate::changelog::format::parse_segment_file_name;
use crate::changelog::ChangeLogError;

const WAIT: Duration = Duration::from_secs(10);

/// First LSN of every segment file, from the file names.
fn segment_starts(dir: &std::path::Path) -> Vec<u64> {
    segment_files(dir)
        .iter()
        .map(|p| parse_segment_file_name(p.file_name().unwrap().to_str().unwrap()).unwrap().0)
        .collect()
}

#[tokio::test]
async fn segments_roll_at_the_size_limit_and_trim_deletes_whole_ones() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), 512);
    append_all(&log, 1..=100).await;
    let starts = segment_starts(dir.path());
    assert!(starts.len() > 5, "{starts:?}");
    assert_eq!(starts[0], 1);
    for f in segment_files(dir.path()) {
        // A segment only exceeds the limit when it holds a single record.
        assert!(std::fs::metadata(&f).unwrap().len() <= 512, "{f:?}");
    }
    // Trim below the end of the second segment: only the first goes.
    log.trim(Lsn(starts[2] - 2)).unwrap();
    assert_eq!(segment_starts(dir.path()), starts[1..]);
    assert_eq!(log.stats().base, Lsn(starts[1] - 1));
    // Trim through the fourth segment's last record.
    log.trim(Lsn(starts[4] - 1)).unwrap();
    assert_eq!(segment_starts(dir.path()), starts[4..]);
    let base = starts[4] - 1;
    assert!(matches!(log.reader(Lsn(base - 1)), Err(ChangeLogError::Trimmed { .. })));
    assert_holds_from(&log, base, base + 1..=100);
    // The segment being written is never trimmed.
    log.trim(Lsn(u64::MAX)).unwrap();
    assert_eq!(segment_starts(dir.path()), vec![*starts.last().unwrap()]);
    assert_eq!(log.last_lsn(), Lsn(100));
    append_all(&log, 101..=110).await;
    drop(log);
    // What was trimmed stays trimmed across a reopen.
    let log = open(dir.path(), 512);
    assert_eq!(log.stats().base, Lsn(*starts.last().unwrap() - 1));
    assert!(matches!(log.reader(Lsn::ZERO), Err(ChangeLogError::Trimmed { .. })));
    assert_holds_from(&log, starts.last().unwrap() - 1, *starts.last().unwrap()..=110);
}

fn assert_holds_from(log: &crate::changelog::ChangeLog, after: u64, lsns: impl IntoIterator<Item = u64>) {
    let got: Vec<u64> = read_all(log, after).into_iter().map(|(l, _)| l.0).collect();
    assert_eq!(got, lsns.into_iter().collect::<Vec<_>>());
}

#[tokio::test]
async fn trim_everything_then_restart_keeps_the_last_lsn() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), 512);
    append_all(&log, 1..=50).await;
    log.trim(Lsn(50)).unwrap();
    drop(log);
    let log = open(dir.path(), 512);
    assert_eq!(log.last_lsn(), Lsn(50));
    append_all(&log, 40..=60).await;
    let last_start = *segment_starts(dir.path()).first().unwrap();
    assert_holds_from(&log, last_start - 1, last_start..=60);
}

#[tokio::test]
async fn reader_waits_for_new_appends() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), 64 << 20);
    let mut reader = log.reader(Lsn::ZERO).unwrap();
    assert!(timeout(Duration::from_millis(100), reader.next()).await.is_err(), "nothing to read yet");
    log.append(Lsn(5), payload(5)).await.unwrap();
    let (lsn, p) = timeout(WAIT, reader.next()).await.unwrap().unwrap();
    assert_eq!((lsn, p), (Lsn(5), payload(5)));
    assert_eq!(reader.position(), Lsn(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_follows_appends_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), 700);
    let mut reader = log.reader(Lsn::ZERO).unwrap();
    let follower = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < 300 {
            let (lsn, p) = reader.next().await.unwrap();
            assert_eq!(p, payload(lsn.0));
            got.push(lsn.0);
        }
        got
    });
    let writer = log.clone();
    tokio::spawn(async move {
        for lsn in 1..=300 {
            writer.append(Lsn(lsn), payload(lsn)).await.unwrap();
            if lsn % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let got = timeout(WAIT, follower).await.unwrap().unwrap();
    assert_eq!(got, (1..=300).collect::<Vec<_>>());
    assert!(segment_files(dir.path()).len() > 10);
}

#[tokio::test]
async fn readers_and_trim() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), 512);
    append_all(&log, 1..=100).await;
    let starts = segment_starts(dir.path());
    let first_end = starts[1] - 1;
    // `behind` stopped in the middle of the first segment, `caught_up` at its end.
    let mut behind = log.reader(Lsn::ZERO).unwrap();
    assert_eq!(behind.try_next().unwrap().unwrap().0, Lsn(1));
    let mut caught_up = log.reader(Lsn::ZERO).unwrap();
    while caught_up.position() < Lsn(first_end) {
        caught_up.try_next().unwrap().unwrap();
    }
    log.trim(Lsn(first_end)).unwrap();
    match behind.try_next() {
        Err(ChangeLogError::Trimmed { requested, base }) => {
            assert_eq!(requested, Lsn(1));
            assert_eq!(base, Lsn(first_end));
        }
        other => panic!("expected Trimmed, got {other:?}"),
    }
    // The reader that already had everything the trimmed segment held moves on.
    let rest: Vec<u64> = std::iter::from_fn(|| caught_up.try_next().unwrap()).map(|(l, _)| l.0).collect();
    assert_eq!(rest, (first_end + 1..=100).collect::<Vec<_>>());
}

#[tokio::test]
async fn readers_end_with_closed_after_the_log_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), 64 << 20);
    append_all(&log, 1..=3).await;
    let mut reader = log.reader(Lsn::ZERO).unwrap();
    drop(log);
    for lsn in 1..=3 {
        assert_eq!(timeout(WAIT, reader.next()).await.unwrap().unwrap().0, Lsn(lsn));
    }
    assert!(matches!(timeout(WAIT, reader.next()).await.unwrap(), Err(ChangeLogError::Closed)));
    assert_holds(&open(dir.path(), 64 << 20), 1..=3);
}
