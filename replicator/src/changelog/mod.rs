//! The durable change log: every committed transaction decoded from the
//! primary, kept on disk in commit-LSN order until every replica applied it.
//!
//! Place in the data flow: slot → decoder → **change log** → appliers. The
//! source task appends each transaction (already encoded by `change.rs`) under
//! its commit LSN and acknowledges the primary only after `append` returned,
//! i.e. after the record is fsynced. Each apply task follows the log with a
//! [`ChangeLogReader`] from its replica's applied LSN. Once every replica has
//! applied a position, `trim` deletes the segments below it. After a crash,
//! `open` verifies every record and cuts a torn tail, so the log holds exactly
//! the records that were acknowledged (and maybe some that were not yet).
//!
//! Layout: segment files in one directory (see `format`), an in-memory LSN
//! index (`index`), recovery (`recover`), one writer thread doing group commit
//! (`writer`) and readers (`reader`).

mod error;
mod format;
mod index;
mod reader;
mod recover;
mod writer;

#[cfg(test)]
mod tests;

use std::fs::{self, File, OpenOptions, TryLockError};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use bytes::Bytes;
use tandem_core::Lsn;
use tokio::sync::{oneshot, watch};
use tracing::{debug, info};

pub use error::ChangeLogError;
pub use reader::ChangeLogReader;

use format::MAX_PAYLOAD_LEN;
use index::Index;
use writer::{AppendRequest, Writer};

/// Name of the lock file that keeps two processes from writing one log.
const LOCK_FILE: &str = "LOCK";

/// Tuning of the change log.
#[derive(Clone, Debug)]
pub struct ChangeLogOptions {
    /// A segment is closed and a new one started once the next record would
    /// make it larger than this (a single larger record gets a segment of its
    /// own). Trimming deletes whole segments, so this is also the granularity
    /// of freeing disk space.
    pub segment_size: u64,
    /// Upper bound on the payload bytes the writer gathers into one batch
    /// (one fsync) before it syncs, so huge bursts still get acknowledged
    /// progressively.
    pub max_batch_bytes: usize,
}

impl Default for ChangeLogOptions {
    fn default() -> Self {
        ChangeLogOptions { segment_size: 64 << 20, max_batch_bytes: 16 << 20 }
    }
}

/// Counters for status and `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChangeLogStats {
    /// Records made durable since open.
    pub records: u64,
    /// Batches (group commits) made durable since open.
    pub batches: u64,
    /// `fsync`/`fdatasync` calls since open (files and directory).
    pub fsyncs: u64,
    /// Segment files currently kept.
    pub segments: u64,
    /// Records with LSN <= this are no longer in the log.
    pub base: Lsn,
}

/// The durable change log. Cheap to clone: all clones share one writer.
///
/// Dropping the last clone stops the writer after it finished the queued
/// appends (waiting for it) and releases the directory lock; readers then
/// return what is left and then `ChangeLogError::Closed`.
#[derive(Clone)]
pub struct ChangeLog {
    handle: Arc<Handle>,
}

/// Owned by all `ChangeLog` clones; its drop stops the writer.
struct Handle {
    shared: Arc<Shared>,
    /// Queue to the writer thread; `None` only during drop.
    queue: Option<mpsc::Sender<AppendRequest>>,
    durable: watch::Receiver<Lsn>,
    writer: Option<JoinHandle<()>>,
    /// Holds the exclusive lock on the directory for as long as the log is open.
    _lock: File,
}

/// State shared by the handle, the writer thread and readers.
pub(crate) struct Shared {
    /// Directory holding the segments.
    pub(crate) dir: PathBuf,
    index: Mutex<Index>,
    pub(crate) stats: Counters,
}

/// Monotonic counters updated by the writer.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) records: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) fsyncs: AtomicU64,
}

impl Shared {
    /// The index. Critical sections never panic, so a poisoned lock still holds
    /// consistent data and is used as is.
    pub(crate) fn lock_index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ChangeLog {
    /// Opens (creating if needed) the log in `dir`, recovering it: every record
    /// is verified, a torn tail of the last segment is cut, corruption anywhere
    /// else is an error. Takes an exclusive lock on the directory.
    pub fn open(dir: &Path, opts: ChangeLogOptions) -> Result<ChangeLog, ChangeLogError> {
        fs::create_dir_all(dir).map_err(|e| ChangeLogError::io(dir, e))?;
        let lock = lock_dir(dir)?;
        let recovered = recover::recover(dir)?;
        let last_segment = recovered.index.segments.values().next_back().cloned();
        let last_lsn = recovered.last_lsn;
        info!(
            dir = %dir.display(),
            segments = recovered.index.segments.len(),
            base = %recovered.index.base,
            last = %last_lsn,
            "change log opened"
        );
        let shared =
            Arc::new(Shared { dir: dir.to_path_buf(), index: Mutex::new(recovered.index), stats: Counters::default() });
        let (durable_tx, durable_rx) = watch::channel(last_lsn);
        let writer = Writer::new(
            shared.clone(),
            last_segment,
            last_lsn,
            opts.segment_size.max(1),
            opts.max_batch_bytes.max(1),
            durable_tx,
        )?;
        let (queue_tx, queue_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("changelog-writer".into())
            .spawn(move || writer.run(queue_rx))
            .map_err(|e| ChangeLogError::io(dir, e))?;
        Ok(ChangeLog {
            handle: Arc::new(Handle {
                shared,
                queue: Some(queue_tx),
                durable: durable_rx,
                writer: Some(thread),
                _lock: lock,
            }),
        })
    }

    /// Appends a record and resolves once it is durable (fsynced, batched with
    /// concurrent appends into one fsync).
    ///
    /// The record is queued when `append` is called, not when the future is
    /// first polled: calls made in LSN order are written in that order even if
    /// their futures are awaited concurrently, and dropping the future does not
    /// withdraw the record. LSNs must increase; an `lsn` not above the last one
    /// appended is ignored (re-delivery after a restart) and resolves once the
    /// batch it was queued with is durable.
    pub fn append(
        &self,
        lsn: Lsn,
        payload: Bytes,
    ) -> impl Future<Output = Result<(), ChangeLogError>> + Send + 'static {
        let (done_tx, done_rx) = oneshot::channel();
        let queued = if payload.len() > MAX_PAYLOAD_LEN {
            Err(ChangeLogError::TooLarge { len: payload.len(), limit: MAX_PAYLOAD_LEN })
        } else {
            match &self.handle.queue {
                Some(queue) => {
                    queue.send(AppendRequest { lsn, payload, done: done_tx }).map_err(|_| ChangeLogError::Closed)
                }
                None => Err(ChangeLogError::Closed),
            }
        };
        async move {
            queued?;
            done_rx.await.map_err(|_| ChangeLogError::Closed)?
        }
    }

    /// Highest durable LSN (`Lsn::ZERO` when the log never held a record).
    /// After trimming everything but the last segment it is still the last LSN.
    pub fn last_lsn(&self) -> Lsn {
        *self.handle.durable.borrow()
    }

    /// A reader of the records with LSN above `after`, in order. Fails with
    /// `ChangeLogError::Trimmed` if some of those records were already trimmed.
    pub fn reader(&self, after: Lsn) -> Result<ChangeLogReader, ChangeLogError> {
        let base = self.handle.shared.lock_index().base;
        if after < base {
            return Err(ChangeLogError::Trimmed { requested: after, base });
        }
        Ok(ChangeLogReader::new(self.handle.shared.clone(), self.handle.durable.clone(), after))
    }

    /// Deletes the segments whose records are all <= `upto` (never the segment
    /// being written). Readers that still need a deleted record get
    /// `ChangeLogError::Trimmed`.
    pub fn trim(&self, upto: Lsn) -> Result<(), ChangeLogError> {
        let shared = &self.handle.shared;
        let removed = shared.lock_index().trim(upto);
        if removed.is_empty() {
            return Ok(());
        }
        for path in &removed {
            match fs::remove_file(path) {
                Ok(()) => debug!(path = %path.display(), "trimmed change log segment"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ChangeLogError::io(path, e)),
            }
        }
        sync_dir(&shared.dir)?;
        shared.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Counters for status and metrics.
    pub fn stats(&self) -> ChangeLogStats {
        let shared = &self.handle.shared;
        let (segments, base) = {
            let index = shared.lock_index();
            (index.segments.len() as u64, index.base)
        };
        ChangeLogStats {
            records: shared.stats.records.load(Ordering::Relaxed),
            batches: shared.stats.batches.load(Ordering::Relaxed),
            fsyncs: shared.stats.fsyncs.load(Ordering::Relaxed),
            segments,
            base,
        }
    }

    /// The directory holding the log.
    pub fn dir(&self) -> &Path {
        &self.handle.shared.dir
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and stop;
        // waiting for it means a reopen never races a still-running writer.
        self.queue.take();
        if let Some(thread) = self.writer.take() {
            if thread.join().is_err() {
                tracing::error!("change log writer thread panicked");
            }
        }
    }
}

/// Takes the exclusive lock on the log directory.
fn lock_dir(dir: &Path) -> Result<File, ChangeLogError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ChangeLogError::io(&path, e))?;
    // A process forked by another thread holds a copy of every descriptor (and so of the
    // lock) until it executes its program, so a lock released a moment ago may still look
    // held: retry briefly before calling it another owner's.
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(TryLockError::WouldBlock) => return Err(ChangeLogError::Locked { path: dir.to_path_buf() }),
            Err(TryLockError::Error(e)) => return Err(ChangeLogError::io(&path, e)),
        }
    }
}

/// Makes creations and deletions of files in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), ChangeLogError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| ChangeLogError::io(dir, e))
}
