//! Readers of the change log: each apply task follows the log from its
//! replica's applied LSN, across segment boundaries, waiting for new appends.
//!
//! Place in the data flow: change log → reader → applier. A reader reads from
//! the segment files (with a small read-ahead buffer), never past the durable
//! end the writer published, and checks every record's CRC again.
//!
//! Trim and readers: a reader keeps reading its current segment file as long
//! as it is in the index. When trim deleted it, a reader that had already
//! returned every record up to the trimmed point moves on to the oldest
//! remaining segment; a reader that still needed a deleted record gets
//! `ChangeLogError::Trimmed`. `ChangeLog::reader(after)` fails the same way
//! when records above `after` were trimmed.
//!
//! Reads are blocking `pread`s of data the writer just wrote (normally still
//! in the page cache), bounded by the read-ahead size or one record.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tandem_core::Lsn;
use tokio::sync::watch;

use super::error::ChangeLogError;
use super::format::{decode_record_header, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use super::index::Start;
use super::Shared;

/// Bytes read from a segment at once when the buffer runs dry.
const READ_AHEAD: usize = 128 * 1024;
/// Payloads smaller than this are copied out of the read-ahead buffer instead
/// of sharing its allocation.
const COPY_BELOW: usize = 16 * 1024;

/// Follows the change log in LSN order. Created by `ChangeLog::reader`.
pub struct ChangeLogReader {
    shared: Arc<Shared>,
    durable: watch::Receiver<Lsn>,
    /// LSN of the last record returned (or the `after` the reader was made with).
    last: Lsn,
    cursor: Option<Cursor>,
}

impl ChangeLogReader {
    pub(crate) fn new(shared: Arc<Shared>, durable: watch::Receiver<Lsn>, after: Lsn) -> Self {
        ChangeLogReader { shared, durable, last: after, cursor: None }
    }

    /// LSN of the last record returned, or the `after` the reader started from.
    pub fn position(&self) -> Lsn {
        self.last
    }

    /// The next record with an LSN above the last one returned, waiting for it
    /// to be appended if needed. Cancel-safe: dropping the future loses nothing.
    /// Returns `ChangeLogError::Closed` once every `ChangeLog` handle is gone and
    /// all durable records were read.
    pub async fn next(&mut self) -> Result<(Lsn, Bytes), ChangeLogError> {
        loop {
            // Mark the current durable LSN as seen before looking, so an append
            // published after the look wakes the wait below.
            self.durable.borrow_and_update();
            if let Some(record) = self.try_next()? {
                return Ok(record);
            }
            self.durable.changed().await.map_err(|_| ChangeLogError::Closed)?;
        }
    }

    /// The next durable record, or `None` if there is none yet.
    pub fn try_next(&mut self) -> Result<Option<(Lsn, Bytes)>, ChangeLogError> {
        loop {
            let Some(cursor) = self.cursor.as_mut() else {
                match self.seek()? {
                    Some(cursor) => {
                        self.cursor = Some(cursor);
                        continue;
                    }
                    None => return Ok(None),
                }
            };
            let (limit, next) = {
                let index = self.shared.lock_index();
                match index.segments.get(&cursor.first) {
                    Some(seg) => (seg.durable_len, index.after(seg.first).map(|n| (n.first, n.path.clone()))),
                    None if self.last >= index.base => {
                        // Trimmed, but we had read everything it held: continue after it.
                        drop(index);
                        self.cursor = None;
                        continue;
                    }
                    None => return Err(ChangeLogError::Trimmed { requested: self.last, base: index.base }),
                }
            };
            match cursor.read_record(limit)? {
                Some((lsn, _)) if lsn <= self.last => continue,
                Some((lsn, payload)) => {
                    self.last = lsn;
                    return Ok(Some((lsn, payload)));
                }
                // The end of a segment that has a successor is final: move on.
                None => match next {
                    Some((first, path)) => {
                        let start = Start { first, path, offset: SEGMENT_HEADER_LEN };
                        self.cursor = self.open(start)?;
                    }
                    None => return Ok(None),
                },
            }
        }
    }

    /// Positions the reader at the segment holding the next record.
    fn seek(&mut self) -> Result<Option<Cursor>, ChangeLogError> {
        let start = self.shared.lock_index().locate(self.last)?;
        match start {
            Some(start) => self.open(start),
            None => Ok(None),
        }
    }

    /// Opens a segment; `None` if trim deleted it meanwhile (the caller looks again).
    fn open(&self, start: Start) -> Result<Option<Cursor>, ChangeLogError> {
        match File::open(&start.path) {
            Ok(file) => Ok(Some(Cursor {
                first: start.first,
                path: start.path,
                file,
                offset: start.offset,
                buf: BytesMut::new(),
            })),
            Err(e)
                if e.kind() == ErrorKind::NotFound && !self.shared.lock_index().segments.contains_key(&start.first) =>
            {
                Ok(None)
            }
            Err(e) => Err(ChangeLogError::io(start.path, e)),
        }
    }
}

/// A read position inside one segment file.
struct Cursor {
    first: Lsn,
    path: PathBuf,
    file: File,
    /// File offset of the next record; `buf` holds the bytes from here on.
    offset: u64,
    buf: BytesMut,
}

impl Cursor {
    /// Reads the record at the cursor if it lies below `limit` (the durable end).
    fn read_record(&mut self, limit: u64) -> Result<Option<(Lsn, Bytes)>, ChangeLogError> {
        if self.offset >= limit {
            return Ok(None);
        }
        let header_end = RECORD_HEADER_LEN;
        if !self.fill(header_end, limit)? {
            return Err(self.corrupt("partial record header inside the durable part"));
        }
        let mut h = [0u8; RECORD_HEADER_LEN];
        h.copy_from_slice(&self.buf[..RECORD_HEADER_LEN]);
        let hdr = decode_record_header(&h);
        let total = usize::try_from(hdr.record_len()).map_err(|_| self.corrupt("record too large"))?;
        if !self.fill(total, limit)? {
            return Err(self.corrupt("record extends past the durable end"));
        }
        let payload = &self.buf[RECORD_HEADER_LEN..total];
        if !hdr.verify(payload) {
            return Err(self.corrupt("record checksum mismatch"));
        }
        let payload = if payload.len() < COPY_BELOW {
            let copy = Bytes::copy_from_slice(payload);
            self.buf.advance(total);
            copy
        } else {
            self.buf.advance(RECORD_HEADER_LEN);
            self.buf.split_to(total - RECORD_HEADER_LEN).freeze()
        };
        self.offset += hdr.record_len();
        Ok(Some((hdr.lsn, payload)))
    }

    /// Makes `buf` hold at least `need` bytes, reading no further than `limit`.
    /// False if the file (up to `limit`) ends first.
    fn fill(&mut self, need: usize, limit: u64) -> Result<bool, ChangeLogError> {
        if self.buf.len() >= need {
            return Ok(true);
        }
        let have = self.buf.len() as u64;
        let available = limit.saturating_sub(self.offset + have);
        let missing = (need - self.buf.len()) as u64;
        if available < missing {
            return Ok(false);
        }
        let want = missing.max(READ_AHEAD as u64).min(available) as usize;
        let old = self.buf.len();
        self.buf.resize(old + want, 0);
        let at = self.offset + have;
        if let Err(e) = self.file.read_exact_at(&mut self.buf[old..], at) {
            self.buf.truncate(old);
            return Err(ChangeLogError::io(&self.path, e));
        }
        Ok(true)
    }

    fn corrupt(&self, reason: &str) -> ChangeLogError {
        ChangeLogError::corrupt(&self.path, self.offset, reason)
    }
}
