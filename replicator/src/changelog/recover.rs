//! Recovery of the change log on open: scan every segment, verify every
//! record, cut a torn tail, rebuild the LSN index.
//!
//! Place in the data flow: runs once in `ChangeLog::open`, before the writer
//! starts, so appends continue after the last record that really is on disk.
//!
//! Only the last segment can have a torn tail: the writer fsyncs a segment
//! before it creates the next one, and fsyncs every new segment's header (and
//! the directory) before it writes records into it. So damage in an older
//! segment, a broken chain between segments, or records out of LSN order are
//! corruption and stop the open instead of being skipped.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use tandem_core::Lsn;
use tracing::{info, warn};

use super::error::ChangeLogError;
use super::format::{
    decode_record_header, decode_segment_header, parse_segment_file_name, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use super::index::{Index, SegMeta};
use super::sync_dir;

/// Buffer size for the sequential scan of a segment.
const SCAN_BUFFER: usize = 256 * 1024;

/// The state of the log on disk after recovery.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// Every segment that holds records.
    pub(crate) index: Index,
    /// Highest LSN the log holds or held (trimmed records included).
    pub(crate) last_lsn: Lsn,
}

/// Outcome of scanning one segment file.
enum Scanned {
    /// The header is valid; `torn` is where the first bad record starts, if any.
    Segment { meta: SegMeta, torn: Option<(u64, String)> },
    /// The file is no longer than a header and the header is not valid: the
    /// process died while creating the segment.
    TornHeader(String),
}

/// Recovers the log in `dir` (which must exist): see the module docs.
pub(crate) fn recover(dir: &Path) -> Result<Recovered, ChangeLogError> {
    let files = list_segments(dir)?;
    let mut index = Index::default();
    let mut base = None;
    let mut last_lsn = Lsn::ZERO;
    let count = files.len();
    for (i, (first, path)) in files.into_iter().enumerate() {
        let is_last = i + 1 == count;
        match scan_segment(&path, first)? {
            Scanned::TornHeader(reason) => {
                if !is_last {
                    return Err(ChangeLogError::corrupt(path, 0, reason));
                }
                warn!(path = %path.display(), %reason, "removing change log segment whose creation was interrupted");
                remove(dir, &path)?;
            }
            Scanned::Segment { meta, torn } => {
                if let Some((offset, reason)) = torn {
                    if !is_last {
                        return Err(ChangeLogError::corrupt(path, offset, reason));
                    }
                    cut_torn_tail(&path, offset, &reason)?;
                }
                if let Some(prev) = index.segments.values().next_back() {
                    if meta.prev != prev.last {
                        let reason = format!(
                            "segment continues after LSN {} but the previous segment ends at {} (a segment is missing)",
                            meta.prev, prev.last
                        );
                        return Err(ChangeLogError::corrupt(path, 0, reason));
                    }
                }
                base.get_or_insert(meta.prev);
                last_lsn = last_lsn.max(meta.prev);
                if !meta.has_records() {
                    if !is_last {
                        return Err(ChangeLogError::corrupt(path, SEGMENT_HEADER_LEN, "segment holds no record"));
                    }
                    info!(path = %path.display(), "removing empty last change log segment");
                    remove(dir, &path)?;
                    continue;
                }
                last_lsn = meta.last;
                index.segments.insert(meta.first, meta);
            }
        }
    }
    index.base = base.unwrap_or(Lsn::ZERO);
    Ok(Recovered { index, last_lsn })
}

/// Segment files in `dir`, sorted by first LSN. Other files are left alone.
fn list_segments(dir: &Path) -> Result<Vec<(Lsn, PathBuf)>, ChangeLogError> {
    let mut files = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| ChangeLogError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ChangeLogError::io(dir, e))?;
        let name = entry.file_name();
        match name.to_str().and_then(parse_segment_file_name) {
            Some(first) => files.push((first, entry.path())),
            None if name.to_string_lossy().ends_with(".seg") => {
                warn!(path = %entry.path().display(), "ignoring file with a segment suffix but not a segment name");
            }
            None => {}
        }
    }
    files.sort();
    Ok(files)
}

/// Reads and verifies every record of one segment.
fn scan_segment(path: &Path, first: Lsn) -> Result<Scanned, ChangeLogError> {
    let io = |e| ChangeLogError::io(path, e);
    let file = File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut r = BufReader::with_capacity(SCAN_BUFFER, file);
    if file_len < SEGMENT_HEADER_LEN {
        return Ok(Scanned::TornHeader(format!("file of {file_len} bytes is shorter than a segment header")));
    }
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    r.read_exact(&mut header).map_err(io)?;
    let prev = match decode_segment_header(&header) {
        Ok(prev) => prev,
        Err(e) if file_len == SEGMENT_HEADER_LEN => return Ok(Scanned::TornHeader(e.to_string())),
        Err(e) => return Err(ChangeLogError::corrupt(path, 0, e.to_string())),
    };
    let mut meta = SegMeta::empty(first, prev, path.to_path_buf());
    let mut payload = Vec::new();
    let mut offset = SEGMENT_HEADER_LEN;
    while offset < file_len {
        let remaining = file_len - offset;
        let torn = |reason: &str| Ok(Scanned::Segment { meta: meta.clone(), torn: Some((offset, reason.to_owned())) });
        if remaining < RECORD_HEADER_LEN as u64 {
            return torn("partial record header");
        }
        let mut h = [0u8; RECORD_HEADER_LEN];
        r.read_exact(&mut h).map_err(io)?;
        let hdr = decode_record_header(&h);
        if hdr.record_len() > remaining {
            return torn("record extends past the end of the file");
        }
        payload.resize(hdr.len as usize, 0);
        r.read_exact(&mut payload).map_err(io)?;
        if !hdr.verify(&payload) {
            return torn("record checksum mismatch");
        }
        // The checksum holds, so these bytes are what was written: a wrong LSN is
        // a bug or tampering, not a torn write.
        if !meta.has_records() && hdr.lsn != first {
            let reason = format!("first record has LSN {} but the file name says {first}", hdr.lsn);
            return Err(ChangeLogError::corrupt(path, offset, reason));
        }
        if hdr.lsn <= meta.last {
            let reason = format!("record LSN {} does not follow {}", hdr.lsn, meta.last);
            return Err(ChangeLogError::corrupt(path, offset, reason));
        }
        meta.push_record(hdr.lsn, hdr.record_len());
        offset += hdr.record_len();
    }
    Ok(Scanned::Segment { meta, torn: None })
}

/// Truncates the last segment at `offset`, where its first bad record starts.
fn cut_torn_tail(path: &Path, offset: u64, reason: &str) -> Result<(), ChangeLogError> {
    let io = |e| ChangeLogError::io(path, e);
    let file = OpenOptions::new().write(true).open(path).map_err(io)?;
    let before = file.metadata().map_err(io)?.len();
    warn!(path = %path.display(), offset, cut_bytes = before - offset, %reason, "cutting torn tail of the change log");
    file.set_len(offset).map_err(io)?;
    file.sync_all().map_err(io)
}

fn remove(dir: &Path, path: &Path) -> Result<(), ChangeLogError> {
    fs::remove_file(path).map_err(|e| ChangeLogError::io(path, e))?;
    sync_dir(dir)
}
