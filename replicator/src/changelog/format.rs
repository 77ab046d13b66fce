//! On-disk format of the change log: segment headers, record framing and
//! segment file names.
//!
//! Place in the data flow: the writer encodes every appended transaction with
//! these functions before it reaches a segment file; recovery and readers
//! decode with them. Pure functions over byte slices, no I/O, so the framing
//! is tested on its own.
//!
//! The framing is hand-written because it is a handful of fixed-width
//! little-endian fields; a serialization crate would add a dependency and hide
//! the exact byte layout that torn-tail recovery depends on.
//!
//! Segment file `{first LSN as 16 hex digits}.seg`:
//!
//! ```text
//! header (24 bytes): magic "TANDEMCL" | version u32 | prev_lsn u64 | crc32c u32 of the 20 bytes before
//! record ...:        len u32 | crc32c u32 of (lsn bytes + payload) | lsn u64 | payload (len bytes)
//! ```
//!
//! `prev_lsn` is the LSN of the last record written before the segment was
//! created: it chains segments together (a missing segment is detected) and
//! tells, after older segments were trimmed, which LSNs the log no longer holds.

use tandem_core::Lsn;

/// Bytes at the start of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"TANDEMCL";
/// Version of the layout described in this module.
pub(crate) const SEGMENT_VERSION: u32 = 1;
/// Length of the segment header; the first record starts here.
pub(crate) const SEGMENT_HEADER_LEN: u64 = 24;
/// Length of the fixed part of a record (len, crc, lsn).
pub(crate) const RECORD_HEADER_LEN: usize = 16;
/// Largest payload a record can frame (its length is a `u32`).
pub(crate) const MAX_PAYLOAD_LEN: usize = u32::MAX as usize;
/// File name suffix of segment files.
const SEGMENT_SUFFIX: &str = ".seg";

/// Why a segment header is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeaderError {
    #[error("not a change log segment (bad magic)")]
    BadMagic,
    #[error("unsupported segment version {0}")]
    UnsupportedVersion(u32),
    #[error("segment header checksum mismatch")]
    BadCrc,
}

/// Encodes the header of a segment created after the record at `prev_lsn`.
pub(crate) fn encode_segment_header(prev_lsn: Lsn) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&prev_lsn.0.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Decodes a segment header, returning its `prev_lsn`.
pub(crate) fn decode_segment_header(h: &[u8; SEGMENT_HEADER_LEN as usize]) -> Result<Lsn, HeaderError> {
    if h[0..8] != SEGMENT_MAGIC {
        return Err(HeaderError::BadMagic);
    }
    let crc = u32::from_le_bytes([h[20], h[21], h[22], h[23]]);
    if crc32c::crc32c(&h[0..20]) != crc {
        return Err(HeaderError::BadCrc);
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if version != SEGMENT_VERSION {
        return Err(HeaderError::UnsupportedVersion(version));
    }
    Ok(Lsn(u64_at(h, 12)))
}

/// The fixed part of a record, as read from a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    /// Payload length in bytes.
    pub(crate) len: u32,
    /// CRC32C over the LSN bytes and the payload.
    pub(crate) crc: u32,
    /// Commit LSN of the transaction the payload encodes.
    pub(crate) lsn: Lsn,
}

impl RecordHeader {
    /// Bytes the whole record (header + payload) occupies in the file.
    pub(crate) fn record_len(&self) -> u64 {
        RECORD_HEADER_LEN as u64 + u64::from(self.len)
    }

    /// Whether `payload` is the payload this header was written for.
    pub(crate) fn verify(&self, payload: &[u8]) -> bool {
        payload.len() == self.len as usize && record_crc(self.lsn, payload) == self.crc
    }
}

/// Checksum stored in a record: CRC32C over the little-endian LSN, then the payload.
pub(crate) fn record_crc(lsn: Lsn, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&lsn.0.to_le_bytes()), payload)
}

/// Encodes the fixed part of a record. The caller checked `payload.len() <= MAX_PAYLOAD_LEN`.
pub(crate) fn encode_record_header(lsn: Lsn, payload: &[u8]) -> [u8; RECORD_HEADER_LEN] {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4..8].copy_from_slice(&record_crc(lsn, payload).to_le_bytes());
    h[8..16].copy_from_slice(&lsn.0.to_le_bytes());
    h
}

/// Decodes the fixed part of a record (no validation: that needs the payload).
pub(crate) fn decode_record_header(h: &[u8; RECORD_HEADER_LEN]) -> RecordHeader {
    RecordHeader {
        len: u32::from_le_bytes([h[0], h[1], h[2], h[3]]),
        crc: u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
        lsn: Lsn(u64_at(h, 8)),
    }
}

/// File name of the segment whose first record has LSN `first`.
pub(crate) fn segment_file_name(first: Lsn) -> String {
    format!("{:016X}{SEGMENT_SUFFIX}", first.0)
}

/// The first LSN encoded in a segment file name, or `None` for other files.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<Lsn> {
    let hex = name.strip_suffix(SEGMENT_SUFFIX)?;
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok().map(Lsn)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_header_round_trips_and_detects_damage() {
        let h = encode_segment_header(Lsn(0x1234_5678_9ABC));
        assert_eq!(decode_segment_header(&h), Ok(Lsn(0x1234_5678_9ABC)));
        let mut bad = h;
        bad[0] ^= 1;
        assert_eq!(decode_segment_header(&bad), Err(HeaderError::BadMagic));
        let mut bad = h;
        bad[13] ^= 1;
        assert_eq!(decode_segment_header(&bad), Err(HeaderError::BadCrc));
        assert_eq!(decode_segment_header(&[0u8; 24]), Err(HeaderError::BadMagic));
    }

    #[test]
    fn record_header_round_trips_and_crc_covers_lsn_and_payload() {
        let h = decode_record_header(&encode_record_header(Lsn(42), b"hello"));
        assert_eq!(h.len, 5);
        assert_eq!(h.lsn, Lsn(42));
        assert_eq!(h.record_len(), 21);
        assert!(h.verify(b"hello"));
        assert!(!h.verify(b"hellp"));
        assert!(!h.verify(b"hell"));
        assert_ne!(record_crc(Lsn(42), b"x"), record_crc(Lsn(43), b"x"));
        // A zero-filled tail (what some filesystems show after a crash) never verifies.
        let zero = decode_record_header(&[0u8; RECORD_HEADER_LEN]);
        assert!(!zero.verify(b""));
    }

    #[test]
    fn file_names_sort_like_lsns() {
        assert_eq!(segment_file_name(Lsn(0x1_0000_00AB)), "00000001000000AB.seg");
        assert_eq!(parse_segment_file_name("00000001000000AB.seg"), Some(Lsn(0x1_0000_00AB)));
        assert_eq!(parse_segment_file_name("00000001000000ab.seg"), Some(Lsn(0x1_0000_00AB)));
        for other in ["LOCK", "1.seg", "00000001000000AB.seg.tmp", "0000000100000+AB.seg", "000000010000000AB.seg"] {
            assert_eq!(parse_segment_file_name(other), None, "{other}");
        }
    }
}
