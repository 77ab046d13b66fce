//! Appending: read-back, concurrency, group commit, re-delivery, reopen.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tandem_core::Lsn;

use super::{append_all, assert_holds, open, payload, read_all, segment_files};
use crate::changelog::{ChangeLog, ChangeLogError, ChangeLogOptions};

#[tokio::test]
async fn appends_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), 64 << 20);
    assert_eq!(log.last_lsn(), Lsn::ZERO);
    assert!(read_all(&log, 0).is_empty());
    append_all(&log, (1..=100).map(|i| i * 10)).await;
    assert_eq!(log.last_lsn(), Lsn(1000));
    assert_holds(&log, (1..=100).map(|i| i * 10));
    // Readers start strictly after the given LSN, also between records.
    assert_eq!(read_all(&log, 500)[0].0, Lsn(510));
    assert_eq!(read_all(&log, 505)[0].0, Lsn(510));
    assert!(read_all(&log, 1000).is_empty());
    assert_eq!(segment_files(dir.path()).len(), 1);
}

#[tokio::test]
async fn large_payloads_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), 64 << 20);
    let sizes = [0usize, 1, 20_000, 70_000, 300_000, 5, 2 << 20];
    let payloads: Vec<Bytes> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| Bytes::from((0..n).map(|b| (b * 31 + i) as u8).collect::<Vec<_>>()))
        .collect();
    for (i, p) in payloads.iter().enumerate() {
        log.append(Lsn(i as u64 + 1), p.clone()).await.unwrap();
    }
    let mut reader = log.reader(Lsn::ZERO).unwrap();
    for (i, p) in payloads.iter().enumerate() {
        let (lsn, got) = reader.try_next().unwrap().unwrap();
        assert_eq!(lsn, Lsn(i as u64 + 1));
        assert!(got == *p, "payload {i} of {} bytes differs", p.len());
    }
    assert!(reader.try_next().unwrap().is_none());
}

#[tokio::test]
async fn seeks_inside_a_large_segment() {
    // ~3 MiB in one segment: readers starting in the middle use the sparse index.
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), 64 << 20);
    let big = |lsn: u64| Bytes::from(vec![(lsn % 251) as u8; 10_000]);
    for lsn in 1..=300 {
        log.append(Lsn(lsn * 2), big(lsn * 2)).await.unwrap();
    }
    for after in [0u64, 1, 2, 199, 200, 333, 598, 599] {
        let mut reader = log.reader(Lsn(after)).unwrap();
        let (lsn, p) = reader.try_next().unwrap().unwrap();
        let want = (after / 2 + 1) * 2;
        assert_eq!(lsn, Lsn(want), "after {after}");
        assert!(p == big(want));
    }
    assert!(log.reader(Lsn(600)).unwrap().try_next().unwrap().is_none());
}

/// Runs `tasks` tasks that each append `per_task` records; LSNs are handed out
/// under a lock and `append` queues on call, so the log sees them in order.
async fn append_concurrently(log: &ChangeLog, tasks: u64, per_task: u64) {
    let next = Arc::new(Mutex::new(0u64));
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (log, next) = (log.clone(), next.clone());
        handles.push(tokio::spawn(async move {
            for _ in 0..per_task {
                let pending = {
                    let mut n = next.lock().unwrap();
                    *n += 1;
                    log.append(Lsn(*n), payload(*n))
                };
                pending.await.expect("append");
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appenders_are_all_durable_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), 32 * 1024);
    append_concurrently(&log, 8, 200).await;
    assert_eq!(log.last_lsn(), Lsn(1600));
    assert_holds(&log, 1..=1600);
    assert!(segment_files(dir.path()).len() > 1, "expected several segments");
    drop(log);
    let log = open(dir.path(), 32 * 1024);
    assert_eq!(log.last_lsn(), Lsn(1600));
    assert_holds(&log, 1..=1600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_batches_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), 64 << 20);
    append_concurrently(&log, 100, 100).await;
    let stats = log.stats();
    assert_eq!(stats.records, 10_000);
    assert_holds(&log, 1..=10_000);
    // One segment creation (file + directory sync), then one sync per batch.
    assert_eq!(stats.fsyncs, stats.batches + 2);
    assert!(
        stats.fsyncs * 10 < stats.records,
        "{} fsyncs for {} records: no group commit",
        stats.fsyncs,
        stats.records
    );
}

#[tokio::test]
async fn pipelined_appends_without_waiting_are_written_in_call_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), 64 << 20);
    let pending: Vec<_> = (1..=1000).map(|l| log.append(Lsn(l), payload(l))).collect();
    for r in futures::future::join_all(pending).await {
        r.unwrap();
    }
    assert_holds(&log, 1..=1000);
    assert!(log.stats().fsyncs < 100);
}

#[tokio::test]
async fn reappending_old_lsns_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), 64 << 20);
    append_all(&log, 1..=10).await;
    // Re-delivery in the same session, with other payloads: ignored.
    log.append(Lsn(7), Bytes::from_static(b"other")).await.unwrap();
    log.append(Lsn::ZERO, Bytes::from_static(b"zero")).await.unwrap();
    drop(log);
    // And after a restart the source resends from the slot: overlap ignored.
    let log = open(dir.path(), 64 << 20);
    append_all(&log, 5..=15).await;
    assert_eq!(log.last_lsn(), Lsn(15));
    assert_holds(&log, 1..=15);
}

#[tokio::test]
async fn reopen_keeps_everything_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), 1024);
    append_all(&log, 1..=200).await;
    let segments = segment_files(dir.path()).len();
    assert!(segments > 5);
    drop(log);
    let log = open(dir.path(), 1024);
    assert_eq!(log.last_lsn(), Lsn(200));
    assert_eq!(log.stats().segments as usize, segments);
    assert_holds(&log, 1..=200);
    append_all(&log, 201..=300).await;
    drop(log);
    let log = open(dir.path(), 1024);
    assert_holds(&log, 1..=300);
}

#[tokio::test]
async fn a_directory_is_opened_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), 1024);
    let second = ChangeLog::open(dir.path(), ChangeLogOptions::default());
    assert!(matches!(second, Err(ChangeLogError::Locked { .. })), "second open succeeded");
    drop(log);
    ChangeLog::open(dir.path(), ChangeLogOptions::default()).expect("open after close");
}
