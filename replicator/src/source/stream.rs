//! The CopyBoth phase of a replication connection: `XLogData` in, standby
//! status updates out. Sits between `conn.rs` (which set the stream up) and
//! the decoder loop in `pipeline.rs`.
//!
//! Two tasks own the socket halves. The reader parses CopyData and forwards
//! [`StreamEvent`]s through a bounded channel (backpressure: it stops reading
//! when the consumer is behind). Keepalives asking for a reply poke the writer
//! first, before anything can block. The writer sends a status update
//! whenever the consumer publishes new [`Feedback`], when asked, and on a
//! fixed interval regardless of the consumer, so the primary's
//! `wal_sender_timeout` never fires on a slow consumer.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tandem_core::Lsn;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::conn::{Io, ReplicationConnection};
use super::error::SourceError;
use super::wire::{read_message, server_error, Backend};

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// What the reader hands to the consumer, in stream order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// One pgoutput message.
    XLogData {
        /// WAL position the message starts at (0 for most pgoutput messages).
        wal_start: Lsn,
        /// The server's current WAL end.
        wal_end: Lsn,
        /// The pgoutput payload.
        data: Bytes,
    },
    /// A keepalive: the server has sent everything up to `wal_end`.
    Keepalive {
        /// The server's position; safe to confirm once everything before it is done.
        wal_end: Lsn,
    },
}

/// Positions reported to the primary in standby status updates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Feedback {
    /// Received and stored (durable in the change log).
    pub write: Lsn,
    /// Safe for the slot to forget and, in sync mode, for waiting commits to return:
    /// durable (async) or applied by the quorum (sync).
    pub flush: Lsn,
    /// Applied (reported for `remote_apply` and monitoring).
    pub apply: Lsn,
}

/// A running replication stream.
pub struct ReplicationStream {
    events: mpsc::Receiver<Result<StreamEvent, SourceError>>,
    feedback: watch::Sender<Feedback>,
    cancel: CancellationToken,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl ReplicationStream {
    /// Takes over a connection on which START_REPLICATION succeeded.
    ///
    /// `buffer` bounds the queue of unconsumed events; `interval` is the
    /// period of unsolicited status updates; `initial` the first feedback.
    pub fn new(conn: ReplicationConnection, buffer: usize, interval: Duration, initial: Feedback) -> ReplicationStream {
        let ReplicationConnection { io, rbuf, .. } = conn;
        let (rd, wr) = tokio::io::split(io);
        let (tx, events) = mpsc::channel(buffer.max(1));
        let (feedback, fb_rx) = watch::channel(initial);
        let cancel = CancellationToken::new();
        let reply_now = Arc::new(Notify::new());
        let reader = tokio::spawn(read_loop(rd, rbuf, tx, reply_now.clone(), cancel.clone()));
        let writer = tokio::spawn(write_loop(wr, fb_rx, reply_now, interval, cancel.clone()));
        ReplicationStream { events, feedback, cancel, reader, writer }
    }

    /// The next event; `Err(Closed)` once the stream ended.
    pub async fn next(&mut self) -> Result<StreamEvent, SourceError> {
        self.events.recv().await.unwrap_or(Err(SourceError::Closed))
    }

    /// Publishes new positions; the writer reports them promptly.
    pub fn set_feedback(&self, fb: Feedback) {
        self.feedback.send_if_modified(|cur| {
            let changed = *cur != fb;
            *cur = fb;
            changed
        });
    }

    /// The positions last published.
    pub fn feedback(&self) -> Feedback {
        *self.feedback.borrow()
    }

    /// Sends a last status update, Terminate, and waits for both tasks.
    pub async fn close(mut self) {
        self.cancel.cancel();
        let _ = (&mut self.reader).await;
        let _ = (&mut self.writer).await;
    }
}

impl Drop for ReplicationStream {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn read_loop(
    mut rd: ReadHalf<Box<dyn Io>>,
    mut buf: BytesMut,
    tx: mpsc::Sender<Result<StreamEvent, SourceError>>,
    reply_now: Arc<Notify>,
    cancel: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return,
            m = read_message(&mut rd, &mut buf) => m,
        };
        let event = match msg {
            Ok(Backend::Message(Message::CopyData(body))) => parse_copy_data(body.into_bytes()),
            Ok(Backend::Message(Message::CopyDone)) => Err(SourceError::Closed),
            Ok(Backend::Message(Message::ErrorResponse(e))) => Err(SourceError::Server(server_error(e.fields()))),
            Ok(Backend::Message(Message::NoticeResponse(n))) => {
                tracing::info!(notice = %server_error(n.fields()), "notice from primary");
                continue;
            }
            Ok(Backend::Message(Message::ParameterStatus(_))) => continue,
            Ok(_) => Err(SourceError::Protocol("unexpected message in replication stream".into())),
            Err(e) => Err(e),
        };
        let event = match event {
            Ok(Some((ev, reply))) => {
                if reply {
                    reply_now.notify_one();
                }
                Ok(ev)
            }
            Ok(None) => continue,
            Err(e) => Err(e),
        };
        let fatal = event.is_err();
        tokio::select! {
            _ = cancel.cancelled() => return,
            sent = tx.send(event) => if sent.is_err() { return },
        }
        if fatal {
            // Wake the writer so it notices the end too.
            cancel.cancel();
            return;
        }
    }
}

/// Parses one CopyData payload: `w` XLogData or `k` keepalive (with its reply flag).
fn parse_copy_data(mut b: Bytes) -> Result<Option<(StreamEvent, bool)>, SourceError> {
    let short = || SourceError::Protocol("truncated CopyData in replication stream".into());
    if b.is_empty() {
        return Err(short());
    }
    match b.get_u8() {
        b'w' => {
            if b.remaining() < 24 {
                return Err(short());
            }
            let wal_start = Lsn(b.get_u64());
            let wal_end = Lsn(b.get_u64());
            let _send_time = b.get_i64();
            Ok(Some((StreamEvent::XLogData { wal_start, wal_end, data: b }, false)))
        }
        b'k' => {
            if b.remaining() < 17 {
                return Err(short());
            }
            let wal_end = Lsn(b.get_u64());
            let _send_time = b.get_i64();
            let reply = b.get_u8() != 0;
            Ok(Some((StreamEvent::Keepalive { wal_end }, reply)))
        }
        tag => {
            tracing::debug!(tag, "ignoring unknown CopyData message in replication stream");
            Ok(None)
        }
    }
}

async fn write_loop(
    mut wr: WriteHalf<Box<dyn Io>>,
    mut feedback: watch::Receiver<Feedback>,
    reply_now: Arc<Notify>,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = BytesMut::new();
    loop {
        let closing = tokio::select! {
            _ = cancel.cancelled() => true,
            _ = ticker.tick() => false,
            _ = reply_now.notified() => false,
            changed = feedback.changed() => changed.is_err(),
        };
        let fb = *feedback.borrow_and_update();
        status_update(&fb, &mut buf);
        if closing {
            frontend::terminate(&mut buf);
        }
        let out = buf.split();
        if let Err(e) = async {
            wr.write_all(&out).await?;
            wr.flush().await
        }
        .await
        {
            tracing::warn!(error = %e, "cannot send standby status update");
            cancel.cancel();
            return;
        }
        if closing {
            let _ = wr.shutdown().await;
            return;
        }
    }
}

/// Appends a standby status update ('r') in a CopyData message to `out`.
pub fn status_update(fb: &Feedback, out: &mut BytesMut) {
    let mut body = BytesMut::with_capacity(34);
    body.put_u8(b'r');
    body.put_u64(fb.write.0);
    body.put_u64(fb.flush.0);
    body.put_u64(fb.apply.0);
    body.put_i64(pg_now_us());
    body.put_u8(0);
    // CopyData::new only fails for payloads over 2 GiB; this one is 34 bytes.
    if let Ok(m) = frontend::CopyData::new(body.freeze()) {
        m.write(out);
    }
}

fn pg_now_us() -> i64 {
    let unix_us = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
    unix_us - PG_EPOCH_OFFSET_US
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_xlogdata_and_keepalive() {
        let mut w = BytesMut::new();
        w.put_u8(b'w');
        w.put_u64(1);
        w.put_u64(2);
        w.put_i64(3);
        w.put_slice(b"Bpayload");
        let (ev, reply) = parse_copy_data(w.freeze()).unwrap().unwrap();
        assert_eq!(
            ev,
            StreamEvent::XLogData { wal_start: Lsn(1), wal_end: Lsn(2), data: Bytes::from_static(b"Bpayload") }
        );
        assert!(!reply);
        let mut k = BytesMut::new();
        k.put_u8(b'k');
        k.put_u64(9);
        k.put_i64(0);
        k.put_u8(1);
        let k = k.freeze();
        assert_eq!(parse_copy_data(k.clone()).unwrap(), Some((StreamEvent::Keepalive { wal_end: Lsn(9) }, true)));
        for len in 0..k.len() {
            assert!(parse_copy_data(k.slice(..len)).is_err());
        }
    }

    #[test]
    fn status_update_layout() {
        let mut out = BytesMut::new();
        status_update(&Feedback { write: Lsn(1), flush: Lsn(2), apply: Lsn(3) }, &mut out);
        assert_eq!(out[0], b'd');
        assert_eq!(out.len(), 1 + 4 + 34);
        assert_eq!(out[5], b'r');
        assert_eq!(&out[6..14], &1u64.to_be_bytes());
        assert_eq!(&out[14..22], &2u64.to_be_bytes());
        assert_eq!(&out[22..30], &3u64.to_be_bytes());
    }
}
