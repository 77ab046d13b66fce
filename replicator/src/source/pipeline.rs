//! The source loop of one database: replication stream → decoder → change
//! log, and the feedback that goes back to the primary.
//!
//! Every committed transaction is encoded and appended to the change log
//! before its position can be reported; [`FlushTracker`] then decides, per
//! mode, when the primary may forget it. The appliers' progress arrives through
//! [`AppliedLsn`] watches.
//!
//! Appends are pipelined: the loop queues a transaction and goes on decoding
//! while earlier ones wait for their fsync, so one fsync covers every
//! transaction that arrived meanwhile (group commit). Waiting for each append
//! before decoding the next would cap the stream at one transaction per fsync.
//! Durability is still reported strictly in commit order.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesOrdered, StreamExt};
use tandem_core::Lsn;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::conn::ReplicationConnection;
use super::error::SourceError;
use super::progress::FlushTracker;
use super::stream::{Feedback, ReplicationStream, StreamEvent};
use crate::change;
use crate::config::Mode;
use crate::decoder::{Decoded, Decoder};

/// One replica's progress on one database: the commit LSN of the last
/// transaction it applied (every transaction with `commit_lsn <=` it is applied).
/// The applier owns the sender; the source reads it to report flush in sync mode.
pub type AppliedLsn = watch::Receiver<Lsn>;

/// Where decoded transactions go: the change log (`ChangeLog` implements it),
/// or anything with the same contract in tests.
pub trait ChangeSink: Send + Sync {
    /// The error of [`ChangeSink::append`].
    type Error: std::error::Error + Send + Sync + 'static;
    /// Highest LSN stored (`Lsn::ZERO` when empty).
    fn last_lsn(&self) -> Lsn;
    /// Queues `payload` under `lsn` **when called** (so calls made in LSN order
    /// are stored in that order however their futures are polled); the future
    /// resolves once it is durable. An `lsn` not above [`ChangeSink::last_lsn`]
    /// is a re-delivery and ignored.
    fn append(&self, lsn: Lsn, payload: Bytes) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// Settings of a stream loop.
#[derive(Clone, Debug)]
pub struct StreamOptions {
    /// Database the slot belongs to (stamped on every transaction).
    pub database: String,
    /// Slot to stream from.
    pub slot: String,
    /// Publication to stream.
    pub publication: String,
    /// Sync or async feedback.
    pub mode: Mode,
    /// Replicas that must have applied a commit in sync mode.
    pub sync_quorum: usize,
    /// Period of unsolicited status updates.
    pub feedback_interval: Duration,
    /// Bound of the reader → decoder queue.
    pub buffer: usize,
}

/// Most transactions queued to the change log and not yet durable; beyond
/// it the loop stops reading the stream until fsyncs catch up.
const MAX_APPENDS_IN_FLIGHT: usize = 4096;
/// Most payload bytes queued to the change log and not yet durable.
const MAX_APPEND_BYTES_IN_FLIGHT: usize = 64 << 20;

/// Counters of a running stream loop, for logs and status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Transactions appended to the change log (re-deliveries included).
    pub transactions: u64,
    /// Last feedback sent.
    pub feedback: Feedback,
}

/// The applied positions of all replicas, kept across replicas whose applier stopped.
struct AppliedSet {
    rx: Vec<Option<AppliedLsn>>,
    last: Vec<Lsn>,
}

impl AppliedSet {
    fn new(rx: Vec<AppliedLsn>) -> Self {
        let last = rx.iter().map(|r| *r.borrow()).collect();
        AppliedSet { rx: rx.into_iter().map(Some).collect(), last }
    }

    /// Waits until any replica's position changes (forever if none can).
    async fn changed(&mut self) {
        let waits: Vec<_> = self
            .rx
            .iter_mut()
            .enumerate()
            .filter_map(|(i, r)| r.as_mut().map(|r| Box::pin(async move { (i, r.changed().await.is_ok()) })))
            .collect();
        if waits.is_empty() {
            return std::future::pending().await;
        }
        let ((i, alive), _, _) = futures::future::select_all(waits).await;
        if !alive {
            self.rx[i] = None;
        }
        for (i, r) in self.rx.iter_mut().enumerate() {
            if let Some(r) = r {
                self.last[i] = *r.borrow_and_update();
            }
        }
    }
}

/// Streams `opts.slot` (of `opts.database`) from `start` on `conn` until `shutdown` (Ok) or a
/// stream error (Err: reconnect and call again). `applied` are the replicas'
/// progress watches for this database, `stats` is updated as it goes.
pub async fn stream_database<S: ChangeSink>(
    mut conn: ReplicationConnection,
    start: Lsn,
    opts: &StreamOptions,
    sink: &S,
    applied: Vec<AppliedLsn>,
    stats: &watch::Sender<StreamStats>,
    shutdown: &CancellationToken,
) -> Result<(), SourceError> {
    let database = opts.database.as_str();
    conn.start_replication(&opts.slot, start, &opts.publication).await?;
    tracing::info!(database, slot = %opts.slot, %start, mode = %opts.mode, "streaming from the primary");
    let mut tracker = FlushTracker::new(opts.mode, opts.sync_quorum, start);
    let mut stream = ReplicationStream::new(conn, opts.buffer, opts.feedback_interval, tracker.feedback());
    let mut decoder = Decoder::new(database);
    let mut applied = AppliedSet::new(applied);
    tracker.applied(&applied.last);

    // Appends queued to the sink, oldest first: (commit, end, payload bytes, durable?).
    let mut appending = FuturesOrdered::new();
    let mut bytes_in_flight = 0usize;

    let result = loop {
        let room = appending.len() < MAX_APPENDS_IN_FLIGHT && bytes_in_flight < MAX_APPEND_BYTES_IN_FLIGHT;
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            Some((commit, end, len, durable)) = appending.next(), if !appending.is_empty() => {
                bytes_in_flight -= len;
                if let Err(e) = durable {
                    break Err(SourceError::Sink(Box::new(e)));
                }
                tracker.durable(commit, end);
                stats.send_modify(|s| s.transactions += 1);
            }
            _ = applied.changed() => tracker.applied(&applied.last),
            event = stream.next(), if room => match event {
                Ok(StreamEvent::XLogData { data, .. }) => match decoder.feed(data) {
                    Ok(Decoded::Transaction(txn)) => {
                        let (commit, end) = (txn.commit_lsn, txn.end_lsn);
                        let payload = change::encode(&txn);
                        let len = payload.len();
                        bytes_in_flight += len;
                        let durable = sink.append(commit, payload);
                        appending.push_back(async move { (commit, end, len, durable.await) });
                    }
                    Ok(Decoded::Message { prefix, .. }) => {
                        tracing::debug!(prefix, "ignoring non-transactional logical message");
                    }
                    Ok(Decoded::Nothing) => {}
                    Err(e) => break Err(e.into()),
                },
                Ok(StreamEvent::Keepalive { wal_end }) => {
                    // With appends still in flight the keepalive says nothing about
                    // them being durable; a later keepalive covers this position.
                    if !decoder.in_transaction() && appending.is_empty() {
                        tracker.idle_until(wal_end);
                    }
                }
                Err(e) => break Err(e),
            },
        }
        let fb = tracker.feedback();
        stream.set_feedback(fb);
        stats.send_if_modified(|s| {
            let changed = s.feedback != fb;
            s.feedback = fb;
            changed
        });
    };
    stream.close().await;
    result
}

impl ChangeSink for crate::changelog::ChangeLog {
    type Error = crate::changelog::ChangeLogError;
    fn last_lsn(&self) -> Lsn {
        crate::changelog::ChangeLog::last_lsn(self)
    }
    fn append(&self, lsn: Lsn, payload: Bytes) -> impl Future<Output = Result<(), Self::Error>> + Send {
        crate::changelog::ChangeLog::append(self, lsn, payload)
    }
}
