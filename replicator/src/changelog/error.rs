//! Errors of the change log.
//!
//! Place in the data flow: returned to the source task (appends), to apply
//! tasks (readers) and to whoever opens or trims the log.

use std::path::PathBuf;
use std::sync::Arc;

use tandem_core::Lsn;

/// What went wrong in the change log.
#[derive(Debug, thiserror::Error)]
pub enum ChangeLogError {
    /// An operating-system call on a change log file or directory failed.
    #[error("change log I/O on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The error from the operating system.
        #[source]
        source: std::io::Error,
    },
    /// A segment holds bytes that are not what the writer wrote, in a place a
    /// crash cannot explain (an older segment, or a record that was durable).
    /// Nothing is skipped: the operator must look.
    #[error("change log segment {path} is corrupt at byte {offset}: {reason}")]
    Corrupt {
        /// The damaged segment file.
        path: PathBuf,
        /// Byte offset of the damaged record or header.
        offset: u64,
        /// What check failed.
        reason: String,
    },
    /// A write or fsync failed earlier. The log refuses further appends because
    /// after a failed fsync the kernel may have dropped the dirty pages and
    /// cleared the error ("fsyncgate"): a retried fsync could report success for
    /// data that never reached the disk. Restarting reopens the log from what is
    /// really on disk.
    #[error("change log is unusable after a failed write or fsync ({reason}); restart to recover from disk")]
    Failed {
        /// The original I/O error, as text (shared by every caller that sees it).
        reason: Arc<str>,
    },
    /// The records a reader needs were already deleted by `trim`.
    #[error("change log records after {requested} were trimmed; the log only holds records after {base}")]
    Trimmed {
        /// The position the reader needed to continue from.
        requested: Lsn,
        /// Records up to this LSN are gone.
        base: Lsn,
    },
    /// Another process (or another `ChangeLog` in this one) has the directory open.
    #[error("change log directory {path} is locked by another open change log")]
    Locked {
        /// The directory.
        path: PathBuf,
    },
    /// A payload does not fit a record (its length is a `u32`).
    #[error("change log record of {len} bytes is too large (limit {limit})")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// Largest accepted payload.
        limit: usize,
    },
    /// Every `ChangeLog` handle was dropped: nothing will be appended any more.
    #[error("change log is closed")]
    Closed,
}

impl ChangeLogError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ChangeLogError::Io { path: path.into(), source }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, offset: u64, reason: impl Into<String>) -> Self {
        ChangeLogError::Corrupt { path: path.into(), offset, reason: reason.into() }
    }
}
