//! The relay's WAL directory: names, lookup, trimming and the identity of what is in it.
//!
//! Place in the data flow: `pg_receivewal` (see [`super::receiver`]) writes segment files
//! here (`<timeline><log><seg>`, the newest as `.partial`, plus `<timeline>.history`
//! files); standbys read them back through `tandem wal-fetch` ([`find`]), and the relay
//! removes segments every standby has ([`trim`]). Nothing here talks to a server.

use std::path::{Path, PathBuf};

use tandem_core::Lsn;

/// Suffix `pg_receivewal` gives the segment it is still writing.
pub const PARTIAL: &str = ".partial";

/// A WAL segment file name, parsed: `TTTTTTTTXXXXXXXXYYYYYYYY`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SegmentName {
    /// Timeline the segment belongs to.
    pub timeline: u32,
    /// Segment number (LSN / segment size).
    pub segno: u64,
}

impl SegmentName {
    /// Parses a 24-hex-digit segment name for segments of `seg_size` bytes.
    pub fn parse(name: &str, seg_size: u64) -> Option<SegmentName> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let timeline = u32::from_str_radix(&name[0..8], 16).ok()?;
        let log = u64::from_str_radix(&name[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
        let per_log = segments_per_log(seg_size);
        if seg >= per_log {
            return None;
        }
        Some(SegmentName { timeline, segno: log * per_log + seg })
    }

    /// The file name PostgreSQL gives this segment.
    pub fn file_name(&self, seg_size: u64) -> String {
        let per_log = segments_per_log(seg_size);
        format!("{:08X}{:08X}{:08X}", self.timeline, self.segno / per_log, self.segno % per_log)
    }

    /// The first position after this segment.
    pub fn end(&self, seg_size: u64) -> Lsn {
        Lsn((self.segno + 1).saturating_mul(seg_size))
    }
}

fn segments_per_log(seg_size: u64) -> u64 {
    0x1_0000_0000 / seg_size.max(1)
}

/// Whether `name` is something a standby may ask the relay for: a segment (24 hex digits)
/// or a timeline history file (`8 hex digits.history`). Anything else (paths, `..`) is refused
/// before the file system is touched.
pub fn is_servable_name(name: &str) -> bool {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    (name.len() == 24 && hex(name)) || name.strip_suffix(".history").is_some_and(|t| t.len() == 8 && hex(t))
}

/// The file that answers a standby's request for `name`: the complete segment, else the
/// segment still being written (its valid records end where PostgreSQL's record checks say
/// so; what follows is zeros or a torn record, which recovery stops at). `None` if the
/// relay does not have it, or the name is not a WAL file name.
pub fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    if !is_servable_name(name) {
        return None;
    }
    let whole = dir.join(name);
    if whole.is_file() {
        return Some(whole);
    }
    let partial = dir.join(format!("{name}{PARTIAL}"));
    (name.len() == 24 && partial.is_file()).then_some(partial)
}

/// One segment file in the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentFile {
    /// Its parsed name.
    pub name: SegmentName,
    /// Still being written.
    pub partial: bool,
    /// Where it is.
    pub path: PathBuf,
}

/// The segment size of the WAL in `dir`, from a full-size segment file there (segments and
/// the preallocated `.partial` are always full size); None when it holds none.
pub fn size_in(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let name = e.file_name();
        let name = name.to_str()?;
        let base = name.strip_suffix(PARTIAL).unwrap_or(name);
        let len = e.metadata().ok()?.len();
        (base.len() == 24 && base.chars().all(|c| c.is_ascii_hexdigit()) && len.is_power_of_two() && len >= 1 << 20)
            .then_some(len)
    })
}

/// The segment files in `dir`, oldest first (by segment number, then timeline).
pub fn list(dir: &Path, seg_size: u64) -> std::io::Result<Vec<SegmentFile>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else { continue };
        let (base, partial) = match file_name.strip_suffix(PARTIAL) {
            Some(base) => (base, true),
            None => (file_name, false),
        };
        if let Some(name) = SegmentName::parse(base, seg_size) {
            out.push(SegmentFile { name, partial, path: entry.path() });
        }
    }
    out.sort_by_key(|s| (s.name.segno, s.name.timeline, s.partial));
    Ok(out)
}

/// Removes complete segments that end at or before `needed_from` (the oldest position a
/// standby may still ask for), keeping at least `keep` of the newest complete segments and
/// never the one being written or a history file. Returns the names removed.
pub fn trim(dir: &Path, seg_size: u64, needed_from: Lsn, keep: u64) -> std::io::Result<Vec<String>> {
    let complete: Vec<SegmentFile> = list(dir, seg_size)?.into_iter().filter(|s| !s.partial).collect();
    let removable = complete.len().saturating_sub(usize::try_from(keep).unwrap_or(usize::MAX));
    let mut removed = Vec::new();
    for seg in complete.into_iter().take(removable) {
        if seg.name.end(seg_size) > needed_from {
            break;
        }
        std::fs::remove_file(&seg.path)?;
        removed.push(seg.name.file_name(seg_size));
    }
    Ok(removed)
}

/// The system identifier in a segment's first page (its long page header), if the file is
/// long enough and starts with a WAL page. The relay checks it against the primary's so that
/// two systems' WAL never share its directory.
pub fn system_identifier(path: &Path) -> std::io::Result<Option<u64>> {
    use std::io::Read;
    let mut head = [0u8; 40];
    let mut f = std::fs::File::open(path)?;
    let mut read = 0;
    while read < head.len() {
        match f.read(&mut head[read..])? {
            0 => return Ok(None),
            n => read += n,
        }
    }
    // XLogLongPageHeaderData: magic u16, info u16, tli u32, pageaddr u64, rem_len u32 (+4
    // padding), then xlp_sysid u64 at byte 24. XLP_LONG_HEADER is bit 0x0002 of info.
    let info = u16::from_le_bytes([head[2], head[3]]);
    if info & 0x0002 == 0 {
        return Ok(None);
    }
    let mut sysid = [0u8; 8];
    sysid.copy_from_slice(&head[24..32]);
    Ok(Some(u64::from_le_bytes(sysid)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 * 1024 * 1024;

    #[test]
    fn names_round_trip() {
        let n = SegmentName::parse("000000020000000100000003", SEG).unwrap();
        assert_eq!(n, SegmentName { timeline: 2, segno: 256 + 3 });
        assert_eq!(n.file_name(SEG), "000000020000000100000003");
        assert_eq!(n.end(SEG), Lsn((256 + 4) * SEG));
        assert!(SegmentName::parse("0000000200000001000001FF", SEG).is_none(), "only 256 per log at 16 MiB");
        assert!(SegmentName::parse("00000002000000010000000G", SEG).is_none());
        // 1 GiB segments: 4 per log.
        let big = 1024 * 1024 * 1024;
        assert_eq!(SegmentName::parse("000000010000000200000003", big).unwrap().segno, 11);
    }

    #[test]
    fn only_wal_names_are_served() {
        assert!(is_servable_name("000000010000000000000003"));
        assert!(is_servable_name("00000002.history"));
        for bad in ["../etc/passwd", "00000002.history.x", "x.history", "", "000000010000000000000003.partial"] {
            assert!(!is_servable_name(bad), "{bad}");
        }
    }

    #[test]
    fn find_prefers_the_complete_segment_and_falls_back_to_partial() {
        let dir = tempfile::tempdir().unwrap();
        let a = "000000010000000000000003";
        std::fs::write(dir.path().join(format!("{a}.partial")), b"p").unwrap();
        assert_eq!(find(dir.path(), a).unwrap(), dir.path().join(format!("{a}.partial")));
        std::fs::write(dir.path().join(a), b"c").unwrap();
        assert_eq!(find(dir.path(), a).unwrap(), dir.path().join(a));
        assert!(find(dir.path(), "000000010000000000000004").is_none());
        assert!(find(dir.path(), "../x").is_none());
    }

    #[test]
    fn trim_keeps_what_standbys_need_and_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        for seg in 1..=6u64 {
            let name = SegmentName { timeline: 1, segno: seg }.file_name(SEG);
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        std::fs::write(dir.path().join("000000010000000000000007.partial"), b"x").unwrap();
        std::fs::write(dir.path().join("00000001.history"), b"x").unwrap();
        // A standby needs from the middle of segment 3: segments 1 and 2 go.
        let removed = trim(dir.path(), SEG, Lsn(3 * SEG + 100), 2).unwrap();
        assert_eq!(removed, vec!["000000010000000000000001", "000000010000000000000002"]);
        // Everyone has everything, but 2 complete segments are kept.
        let removed = trim(dir.path(), SEG, Lsn(100 * SEG), 2).unwrap();
        assert_eq!(removed, vec!["000000010000000000000003", "000000010000000000000004"]);
        let left: Vec<String> = list(dir.path(), SEG).unwrap().iter().map(|s| s.name.file_name(SEG)).collect();
        assert_eq!(left, vec!["000000010000000000000005", "000000010000000000000006", "000000010000000000000007"]);
        assert!(dir.path().join("00000001.history").exists());
    }

    #[test]
    fn reads_the_system_identifier_of_a_long_header() {
        let dir = tempfile::tempdir().unwrap();
        let mut page = vec![0u8; 64];
        page[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        page[2..4].copy_from_slice(&0x0002u16.to_le_bytes());
        page[24..32].copy_from_slice(&7_123_456_789u64.to_le_bytes());
        let path = dir.path().join("seg");
        std::fs::write(&path, &page).unwrap();
        assert_eq!(system_identifier(&path).unwrap(), Some(7_123_456_789));
        std::fs::write(&path, &page[..10]).unwrap();
        assert_eq!(system_identifier(&path).unwrap(), None);
    }
}
