//! In-memory LSN index of the change log: which segments exist, which LSNs
//! each holds and how many of its bytes are durable.
//!
//! Place in the data flow: built by recovery on open, extended by the writer
//! after every fsync, consulted by readers to find where to read and how far,
//! shrunk by trim. Payloads are never kept here, only positions.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::PathBuf;

use tandem_core::Lsn;

use super::error::ChangeLogError;
use super::format::SEGMENT_HEADER_LEN;

/// Distance in bytes between two sparse index entries of a segment: a reader
/// seeking inside a 64 MiB segment scans at most this many bytes of headers.
pub(crate) const SPARSE_STRIDE: u64 = 1 << 20;

/// What the log knows about one segment file.
#[derive(Clone, Debug)]
pub(crate) struct SegMeta {
    /// LSN of the first record (also the file name).
    pub(crate) first: Lsn,
    /// LSN of the last record written before this segment (from its header).
    pub(crate) prev: Lsn,
    /// LSN of the last durable record (`prev` while it has none).
    pub(crate) last: Lsn,
    /// Path of the segment file.
    pub(crate) path: PathBuf,
    /// Bytes of the file that are durable whole records (header included);
    /// readers never read past this.
    pub(crate) durable_len: u64,
    /// Sparse `(lsn, offset)` pairs of record starts, about every `SPARSE_STRIDE` bytes.
    pub(crate) sparse: Vec<(Lsn, u64)>,
}

impl SegMeta {
    /// A segment holding no record yet.
    pub(crate) fn empty(first: Lsn, prev: Lsn, path: PathBuf) -> Self {
        SegMeta { first, prev, last: prev, path, durable_len: SEGMENT_HEADER_LEN, sparse: Vec::new() }
    }

    /// Whether the segment holds at least one record.
    pub(crate) fn has_records(&self) -> bool {
        self.durable_len > SEGMENT_HEADER_LEN
    }

    /// Accounts for a record of `record_len` bytes with LSN `lsn` written at the end.
    pub(crate) fn push_record(&mut self, lsn: Lsn, record_len: u64) {
        let offset = self.durable_len;
        let last_noted = self.sparse.last().map_or(SEGMENT_HEADER_LEN, |&(_, o)| o);
        if offset >= last_noted + SPARSE_STRIDE {
            self.sparse.push((lsn, offset));
        }
        self.durable_len += record_len;
        self.last = lsn;
    }

    /// Offset of a record start at or before the first record with an LSN above `after`.
    pub(crate) fn seek_hint(&self, after: Lsn) -> u64 {
        let i = self.sparse.partition_point(|&(lsn, _)| lsn <= after);
        if i == 0 {
            SEGMENT_HEADER_LEN
        } else {
            self.sparse[i - 1].1
        }
    }
}

/// Where a reader should start reading.
#[derive(Clone, Debug)]
pub(crate) struct Start {
    /// The segment to open.
    pub(crate) first: Lsn,
    /// Its path.
    pub(crate) path: PathBuf,
    /// A record boundary at or before the first wanted record.
    pub(crate) offset: u64,
}

/// The segments of the log, keyed by first LSN.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// Every live segment; the last one is the one being appended to.
    pub(crate) segments: BTreeMap<Lsn, SegMeta>,
    /// Records with LSN <= `base` are not in the log (trimmed, or never were).
    pub(crate) base: Lsn,
}

impl Index {
    /// Where to read records with LSN above `after`; `None` while the log has no segment.
    pub(crate) fn locate(&self, after: Lsn) -> Result<Option<Start>, ChangeLogError> {
        if after < self.base {
            return Err(ChangeLogError::Trimmed { requested: after, base: self.base });
        }
        let seg = match self.segments.range(..=after).next_back() {
            // Records above `after` are in this segment or later ones.
            Some((_, seg)) if seg.last > after || self.is_last(seg.first) => seg,
            Some((&first, _)) => match self.after(first) {
                Some(next) => {
                    return Ok(Some(Start { first: next.first, path: next.path.clone(), offset: SEGMENT_HEADER_LEN }))
                }
                None => return Ok(None),
            },
            None => match self.segments.values().next() {
                Some(seg) => seg,
                None => return Ok(None),
            },
        };
        Ok(Some(Start { first: seg.first, path: seg.path.clone(), offset: seg.seek_hint(after) }))
    }

    /// The segment following the one starting at `first`.
    pub(crate) fn after(&self, first: Lsn) -> Option<&SegMeta> {
        self.segments.range((Bound::Excluded(first), Bound::Unbounded)).next().map(|(_, s)| s)
    }

    fn is_last(&self, first: Lsn) -> bool {
        self.segments.keys().next_back() == Some(&first)
    }

    /// Removes the oldest segments whose records are all <= `upto`, never the
    /// last one (it is being written). Returns the paths to delete.
    pub(crate) fn trim(&mut self, upto: Lsn) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        while self.segments.len() > 1 {
            let Some(entry) = self.segments.first_entry() else { break };
            if entry.get().last > upto {
                break;
            }
            let seg = entry.remove();
            self.base = self.base.max(seg.last);
            removed.push(seg.path);
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(first: u64, lsns: &[u64], rec_len: u64) -> SegMeta {
        let mut m = SegMeta::empty(Lsn(first), Lsn(first - 1), PathBuf::from(format!("{first}")));
        for &l in lsns {
            m.push_record(Lsn(l), rec_len);
        }
        m
    }

    fn index(segs: Vec<SegMeta>) -> Index {
        Index { segments: segs.into_iter().map(|s| (s.first, s)).collect(), base: Lsn::ZERO }
    }

    #[test]
    fn sparse_entries_every_stride_and_seek_hint_uses_them() {
        let big = SPARSE_STRIDE / 2;
        let m = seg(10, &[10, 20, 30, 40, 50, 60], big);
        // Records start at 24, 24+big, 24+2big ...; an entry once each stride is crossed.
        assert_eq!(m.sparse, vec![(Lsn(30), 24 + 2 * big), (Lsn(50), 24 + 4 * big)]);
        assert_eq!(m.seek_hint(Lsn(5)), SEGMENT_HEADER_LEN);
        assert_eq!(m.seek_hint(Lsn(29)), SEGMENT_HEADER_LEN);
        assert_eq!(m.seek_hint(Lsn(30)), 24 + 2 * big);
        assert_eq!(m.seek_hint(Lsn(55)), 24 + 4 * big);
    }

    #[test]
    fn locate_picks_the_segment_holding_the_next_record() {
        let idx = index(vec![seg(10, &[10, 20], 30), seg(30, &[30, 40], 30)]);
        let at = |after| idx.locate(Lsn(after)).unwrap().map(|s| s.first.0);
        assert_eq!(at(0), Some(10));
        assert_eq!(at(15), Some(10));
        assert_eq!(at(20), Some(30)); // segment 10 is exhausted
        assert_eq!(at(35), Some(30));
        assert_eq!(at(99), Some(30)); // past the end: wait in the last segment
        assert!(index(vec![]).locate(Lsn(5)).unwrap().is_none());
    }

    #[test]
    fn trim_removes_a_prefix_but_never_the_last_segment() {
        let mut idx = index(vec![seg(10, &[10, 20], 30), seg(30, &[30, 40], 30), seg(50, &[50], 30)]);
        assert!(idx.trim(Lsn(19)).is_empty());
        assert_eq!(idx.trim(Lsn(45)).len(), 2);
        assert_eq!(idx.base, Lsn(40));
        assert!(idx.trim(Lsn(1000)).is_empty());
        assert!(matches!(idx.locate(Lsn(39)), Err(ChangeLogError::Trimmed { .. })));
        assert_eq!(idx.locate(Lsn(40)).unwrap().map(|s| s.first), Some(Lsn(50)));
    }
}
