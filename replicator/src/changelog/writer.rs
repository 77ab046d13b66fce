//! The change log's writer thread: group commit of appended records.
//!
//! Place in the data flow: the source task calls `ChangeLog::append` for every
//! decoded transaction; the request lands in this thread's queue. The thread
//! takes everything queued (up to a byte limit), writes it to the active
//! segment, rolls to a new segment at the size limit, and then does ONE
//! `fsync` (`sync_data`) for the whole batch. Only then does it publish the new
//! durable end to the index (readers see the records) and answer every caller.
//! While an fsync runs, new requests queue up and form the next batch: that is
//! the group commit.
//!
//! A plain OS thread does the blocking file I/O so that no async worker ever
//! waits on the disk. Any failed write or fsync makes the log fail for good
//! (see `ChangeLogError::Failed`).

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use bytes::Bytes;
use tandem_core::Lsn;
use tokio::sync::{oneshot, watch};
use tracing::{debug, error};

use super::error::ChangeLogError;
use super::format::{encode_record_header, encode_segment_header, segment_file_name, RECORD_HEADER_LEN};
use super::index::SegMeta;
use super::{sync_dir, Shared};

/// Bytes gathered in memory before they are handed to the kernel.
const WRITE_BUFFER: usize = 1 << 20;
/// Payloads at least this big are written directly instead of being copied.
const DIRECT_WRITE: usize = 64 * 1024;

/// One `append` call waiting for its record to be durable.
pub(crate) struct AppendRequest {
    /// Commit LSN of the record.
    pub(crate) lsn: Lsn,
    /// Encoded transaction.
    pub(crate) payload: Bytes,
    /// Answered once the record is durable (or the batch failed).
    pub(crate) done: oneshot::Sender<Result<(), ChangeLogError>>,
}

/// The segment being appended to.
struct Active {
    /// Its metadata as written (durable only after the batch's fsync).
    meta: SegMeta,
    file: File,
}

/// State owned by the writer thread.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    segment_size: u64,
    max_batch_bytes: usize,
    active: Option<Active>,
    /// Highest LSN written (queued before it is ignored as a re-delivery).
    last_lsn: Lsn,
    /// Highest durable LSN, watched by `ChangeLog::last_lsn` and readers.
    durable: watch::Sender<Lsn>,
    /// Set by the first failed write or fsync; every later batch fails.
    failed: Option<Arc<str>>,
}

impl Writer {
    /// Prepares the writer after recovery; reopens the last segment for appending.
    pub(crate) fn new(
        shared: Arc<Shared>,
        last_segment: Option<SegMeta>,
        last_lsn: Lsn,
        segment_size: u64,
        max_batch_bytes: usize,
        durable: watch::Sender<Lsn>,
    ) -> Result<Self, ChangeLogError> {
        let active = match last_segment {
            Some(meta) => {
                let io = |e| ChangeLogError::io(&meta.path, e);
                let mut file = OpenOptions::new().write(true).open(&meta.path).map_err(io)?;
                file.seek(SeekFrom::Start(meta.durable_len)).map_err(io)?;
                Some(Active { meta, file })
            }
            None => None,
        };
        Ok(Writer { shared, segment_size, max_batch_bytes, active, last_lsn, durable, failed: None })
    }

    /// Serves append requests until every sender is gone.
    pub(crate) fn run(mut self, queue: Receiver<AppendRequest>) {
        while let Ok(first) = queue.recv() {
            let mut bytes = first.payload.len();
            let mut batch = vec![first];
            while bytes < self.max_batch_bytes {
                match queue.try_recv() {
                    Ok(req) => {
                        bytes += req.payload.len();
                        batch.push(req);
                    }
                    Err(_) => break,
                }
            }
            let outcome = self.commit(&batch);
            for req in batch {
                let answer = match &outcome {
                    Ok(()) => Ok(()),
                    Err(reason) => Err(ChangeLogError::Failed { reason: reason.clone() }),
                };
                // A caller that stopped waiting does not care.
                let _ = req.done.send(answer);
            }
        }
        debug!("change log writer stopped");
    }

    /// Makes a batch durable and publishes it, or fails the log.
    fn commit(&mut self, batch: &[AppendRequest]) -> Result<(), Arc<str>> {
        if let Some(reason) = &self.failed {
            return Err(reason.clone());
        }
        match self.write_batch(batch) {
            Ok(()) => Ok(()),
            Err(e) => {
                error!(error = %e, "change log write failed; refusing further appends until restart");
                let reason: Arc<str> = e.to_string().into();
                self.failed = Some(reason.clone());
                Err(reason)
            }
        }
    }

    fn write_batch(&mut self, batch: &[AppendRequest]) -> Result<(), ChangeLogError> {
        let mut sealed = Vec::new();
        let mut buf = Vec::with_capacity(WRITE_BUFFER.min(self.max_batch_bytes + 4096));
        let mut written = 0u64;
        for req in batch {
            if req.lsn <= self.last_lsn {
                debug!(lsn = %req.lsn, last = %self.last_lsn, "ignoring re-delivered change log record");
                continue;
            }
            let record_len = (RECORD_HEADER_LEN + req.payload.len()) as u64;
            let roll = match &self.active {
                None => true,
                Some(a) => a.meta.has_records() && a.meta.durable_len + record_len > self.segment_size,
            };
            if roll {
                if let Some(mut old) = self.active.take() {
                    flush(&mut old, &mut buf)?;
                    self.sync(&old)?;
                    sealed.push(old.meta);
                }
                self.active = Some(self.create_segment(req.lsn)?);
            }
            let Some(active) = self.active.as_mut() else {
                // create_segment either set it or returned an error above.
                continue;
            };
            buf.extend_from_slice(&encode_record_header(req.lsn, &req.payload));
            if req.payload.len() >= DIRECT_WRITE {
                flush(active, &mut buf)?;
                active.file.write_all(&req.payload).map_err(|e| ChangeLogError::io(&active.meta.path, e))?;
            } else {
                buf.extend_from_slice(&req.payload);
                if buf.len() >= WRITE_BUFFER {
                    flush(active, &mut buf)?;
                }
            }
            active.meta.push_record(req.lsn, record_len);
            self.last_lsn = req.lsn;
            written += 1;
        }
        if written == 0 {
            return Ok(());
        }
        if let Some(active) = self.active.as_mut() {
            flush(active, &mut buf)?;
        }
        if let Some(active) = &self.active {
            self.sync(active)?;
        }
        self.publish(sealed, written);
        Ok(())
    }

    /// Makes the batch visible: index first, then the durable LSN readers wait on.
    fn publish(&self, sealed: Vec<SegMeta>, written: u64) {
        {
            let mut index = self.shared.lock_index();
            for meta in sealed {
                index.segments.insert(meta.first, meta);
            }
            if let Some(active) = &self.active {
                index.segments.insert(active.meta.first, active.meta.clone());
            }
        }
        self.shared.stats.records.fetch_add(written, Ordering::Relaxed);
        self.shared.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.durable.send_replace(self.last_lsn);
    }

    /// Creates the segment whose first record will be `first`; its header and
    /// directory entry are durable before any record goes in.
    fn create_segment(&self, first: Lsn) -> Result<Active, ChangeLogError> {
        let path: PathBuf = self.shared.dir.join(segment_file_name(first));
        let io = |e| ChangeLogError::io(&path, e);
        let mut file = OpenOptions::new().write(true).create_new(true).open(&path).map_err(io)?;
        file.write_all(&encode_segment_header(self.last_lsn)).map_err(io)?;
        file.sync_data().map_err(io)?;
        sync_dir(&self.shared.dir)?;
        self.shared.stats.fsyncs.fetch_add(2, Ordering::Relaxed);
        debug!(path = %path.display(), "created change log segment");
        Ok(Active { meta: SegMeta::empty(first, self.last_lsn, path), file })
    }

    fn sync(&self, active: &Active) -> Result<(), ChangeLogError> {
        active.file.sync_data().map_err(|e| ChangeLogError::io(&active.meta.path, e))?;
        self.shared.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Hands the buffered bytes to the kernel.
fn flush(active: &mut Active, buf: &mut Vec<u8>) -> Result<(), ChangeLogError> {
    if !buf.is_empty() {
        active.file.write_all(buf).map_err(|e| ChangeLogError::io(&active.meta.path, e))?;
        buf.clear();
    }
    Ok(())
}
