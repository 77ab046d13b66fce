//! `tandem wal-fetch`: a standby's `restore_command`, reading the relay's WAL.
//!
//! Place in the data flow: the last hop, relay → standby. PostgreSQL runs
//! `tandem wal-fetch --from SOURCE %f %p` whenever a standby needs a WAL file it cannot
//! stream (the primary is gone, or it fell behind what the primary kept). SOURCE is the
//! relay's WAL directory (same host) or its status endpoint `http://HOST:PORT` (another
//! host). PostgreSQL runs it with the data directory as working directory and `%p` =
//! `pg_wal/RECOVERYXLOG`, so the standby's own WAL is `./pg_wal` (`--pgdata` overrides).
//!
//! Complete segments and history files are served as they are. The segment the relay is
//! still writing (its `.partial`) needs a decision first, because a standby whose streaming
//! failed asks `restore_command` BEFORE it looks in its own `pg_wal`, and uses (and keeps,
//! replacing its own file) whatever `restore_command` returns. If the standby's own
//! `pg_wal/NAME` holds more valid WAL than the relay's partial copy (it received more from
//! the primary than the relay before the primary died), serving the relay's copy would make
//! it replay less, and a promotion then would end recovery there and lose acknowledged
//! commits only the standby had. So the relay's partial copy is served only if its valid WAL
//! ends strictly further than the local copy's; otherwise wal-fetch says "not available" and
//! PostgreSQL reads its own `pg_wal`. Where valid WAL ends is PostgreSQL's own verdict:
//! `pg_waldump` on each copy ([`valid_wal`], [`parse_waldump`], [`choose`]); when it cannot
//! tell, a byte comparison decides ([`local_holds_relay`]).
//!
//! Exit codes follow `restore_command`'s contract: 0 = the file is at %p, 1 = not available
//! (also on errors, which go to stderr and so into the server's log). Never above 125:
//! PostgreSQL treats that as fatal.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tandem_core::Lsn;

use super::segments::{self, SegmentName, PARTIAL};

/// How long one HTTP fetch may take (a 16 MiB segment over a slow link included).
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one `pg_waldump` run may take (it reads one segment: milliseconds normally).
const WALDUMP_TIMEOUT: Duration = Duration::from_secs(30);

/// Response header of the relay's `GET /wal/NAME`: `1` when the body is the segment it is
/// still writing (`.partial`), `0` otherwise. A relay too old to send it is treated as
/// sending `1` for segments: comparing a complete copy costs a little time, never WAL.
pub const PARTIAL_HEADER: &str = "x-tandem-wal-partial";

/// Why a fetch failed (as opposed to the file not being there).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The name is not a WAL file name.
    #[error("{0:?} is not a WAL segment or history file name")]
    BadName(String),
    /// Reading or writing a file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The relay's HTTP endpoint could not be used.
    #[error("fetching {url}: {reason}")]
    Http {
        /// What was asked for.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FetchError {
    let what = what.into();
    move |source| FetchError::Io { what, source }
}

/// What [`fetch`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    /// The relay's copy is at `dest` (exit 0).
    Restored,
    /// The relay does not have the file (exit 1).
    NotInRelay,
    /// The relay has only a partial copy holding no more valid WAL than the standby's own
    /// `pg_wal/NAME`, which PostgreSQL reads instead (exit 1). Nothing is left at `dest`.
    LocalHoldsMore,
}

/// [`fetch`]'s answer: what it did, and what the server log should hear about it.
#[derive(Debug)]
pub struct Outcome {
    /// What was done.
    pub fetched: Fetched,
    /// Something an operator should read (pg_waldump missing or not understood); printed
    /// to stderr, which PostgreSQL writes to its log.
    pub warning: Option<String>,
}

impl Outcome {
    fn plain(fetched: Fetched) -> Outcome {
        Outcome { fetched, warning: None }
    }
}

/// Copies WAL file `name` from `source` to `dest` for the standby whose data directory is
/// `data_dir` (whose own WAL is `data_dir/pg_wal`), unless the relay has only a partial copy
/// that holds no more valid WAL than the standby's own file (see the module header).
pub async fn fetch(source: &str, name: &str, dest: &Path, data_dir: &Path) -> Result<Outcome, FetchError> {
    if !segments::is_servable_name(name) {
        return Err(FetchError::BadName(name.to_owned()));
    }
    let local = data_dir.join("pg_wal").join(name);
    // A complete segment holds everything any copy of it can, a history file is not WAL, and
    // with no copy of its own the standby has nothing to lose.
    let needs_compare = |partial: bool| partial && name.len() == 24 && local.is_file();
    if let Some(authority) = source.strip_prefix("http://") {
        let Some(partial) = fetch_http(authority.trim_end_matches('/'), name, dest).await? else {
            return Ok(Outcome::plain(Fetched::NotInRelay));
        };
        if !needs_compare(partial) {
            return Ok(Outcome::plain(Fetched::Restored));
        }
        let verdict = compare(name, dest, &local, data_dir).await?;
        if verdict.choice == Choice::Local {
            match std::fs::remove_file(dest) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(FetchError::Io { what: format!("remove {}", dest.display()), source }),
            }
            return Ok(Outcome { fetched: Fetched::LocalHoldsMore, warning: verdict.warning });
        }
        return Ok(Outcome { fetched: Fetched::Restored, warning: verdict.warning });
    }
    // A directory: the relay's file is judged where it is, and copied only when served (a
    // standby whose primary died asks every 100 ms). It only grows meanwhile.
    let dir = Path::new(source);
    let Some(path) = segments::find(dir, name) else { return Ok(Outcome::plain(Fetched::NotInRelay)) };
    let mut warning = None;
    if needs_compare(is_partial(&path)) {
        let verdict = compare(name, &path, &local, data_dir).await?;
        if verdict.choice == Choice::Local {
            return Ok(Outcome { fetched: Fetched::LocalHoldsMore, warning: verdict.warning });
        }
        warning = verdict.warning;
    }
    let fetched = if copy_file(dir, name, &path, dest)? { Fetched::Restored } else { Fetched::NotInRelay };
    Ok(Outcome { fetched, warning })
}

fn is_partial(path: &Path) -> bool {
    path.to_str().is_some_and(|s| s.ends_with(PARTIAL))
}

/// Copies the relay's file `path` for `name` to `dest`; `false` if it is gone.
fn copy_file(dir: &Path, name: &str, path: &Path, dest: &Path) -> Result<bool, FetchError> {
    match std::fs::copy(path, dest) {
        Ok(_) => Ok(true),
        // Trimmed, or renamed (.partial → complete, which holds more) since the look-up.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match segments::find(dir, name) {
            Some(path) => {
                std::fs::copy(&path, dest).map(|_| true).map_err(io_error(format!("copy {}", path.display())))
            }
            None => Ok(false),
        },
        Err(source) => Err(FetchError::Io { what: format!("copy {} to {}", path.display(), dest.display()), source }),
    }
}

/// One GET of `/wal/NAME` from the relay's status endpoint. `Some(partial)` when copied.
async fn fetch_http(authority: &str, name: &str, dest: &Path) -> Result<Option<bool>, FetchError> {
    let url = format!("http://{authority}/wal/{name}");
    let http = |reason: String| FetchError::Http { url: url.clone(), reason };
    let client = reqwest::Client::builder().timeout(HTTP_TIMEOUT).build().map_err(|e| http(e.to_string()))?;
    let response = client.get(&url).send().await.map_err(|e| http(e.to_string()))?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    // Absent (an older relay): assume partial, so the copy is compared (see PARTIAL_HEADER).
    let partial = response.headers().get(PARTIAL_HEADER).is_none_or(|v| v.as_bytes() != b"0");
    let body = response.bytes().await.map_err(|e| http(e.to_string()))?;
    if !status.is_success() {
        return Err(http(format!("HTTP {status}: {}", String::from_utf8_lossy(&body).trim())));
    }
    std::fs::write(dest, &body).map_err(io_error(format!("write {}", dest.display())))?;
    Ok(Some(partial))
}

/// How much valid WAL one copy of a segment holds, as `pg_waldump` (PostgreSQL's own WAL
/// reader, the code recovery uses) reads it. Ordered by how much: see [`ValidWal::rank`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValidWal {
    /// Not even a usable first page: all zeros (a preallocated file nothing was written to),
    /// a torn first page, or shorter than a page.
    Nothing,
    /// Pages, but no record that starts in this copy and checks out. It may still hold
    /// (part of) the end of a record begun in the previous segment: pg_waldump skips that
    /// continuation without judging it (it cannot, the record's start is not in the file).
    NoRecord,
    /// Valid records up to and including the one starting at this position; the next one is
    /// missing (zeros), torn, or left over from a recycled file.
    LastRecordAt(Lsn),
    /// Valid records up to the end of the segment (the last one may go on in the next).
    ToSegmentEnd,
}

impl ValidWal {
    /// Orders copies of the same segment by how much valid WAL they hold. Two copies of one
    /// segment are prefixes of one stream, so a later last record means more WAL.
    pub fn rank(self) -> (u8, u64) {
        match self {
            ValidWal::Nothing => (0, 0),
            ValidWal::NoRecord => (1, 0),
            ValidWal::LastRecordAt(lsn) => (2, lsn.0),
            ValidWal::ToSegmentEnd => (3, 0),
        }
    }
}

/// Reads what `pg_waldump --quiet --path DIR NAME` (PostgreSQL 15) said about one segment:
/// whether it exited successfully, and its stderr. `None`: not understood.
///
/// What it prints at the end of a copy, and what that means here:
/// - nothing, exit 0: it read up to the segment's end (its end position, when given only
///   one segment) without an invalid record: the last record ends there or continues in the
///   next segment → [`ValidWal::ToSegmentEnd`].
/// - `error in WAL record at A: REASON`: A is the start of the last record it read
///   successfully (the reader's `ReadRecPtr`); REASON says why the next one is not valid:
///   `invalid record length at X: wanted 24, got 0` (zeros after the last record),
///   `invalid magic number 0000 in log segment S, offset N` (a zero page where the next
///   page should start), `unexpected pageaddr X in log segment S, offset N` (a page of a
///   recycled file), `incorrect resource manager data checksum in record at X` (a record
///   cut short, its tail zeros or old data), `record with incorrect prev-link ...`,
///   `there is no contrecord flag at X` ... Whatever the reason, valid WAL ends after the
///   record at A → [`ValidWal::LastRecordAt`] A.
/// - `could not find a valid record after SEGSTART`: no record starting in the file checks
///   out. The first record of a segment is often the end of one begun in the previous
///   segment; pg_waldump skips it (silently: "first record is after ..." is printed only
///   when reading starts inside a segment) and fails when that continuation is incomplete,
///   or complete but followed by nothing valid, or the whole file is an old recycled
///   segment → [`ValidWal::NoRecord`].
/// - `WAL segment size must be a power of two ... header specifies 0 bytes` (a zero first
///   page) or `could not read file "S": read N of M` (shorter than a page) →
///   [`ValidWal::Nothing`].
/// - anything else (the file could not be opened, a signal, another version's wording) →
///   `None`.
///
/// `could not find file` would mean a record continued into the next segment and
/// pg_waldump went looking for it; given one segment it stops at that segment's end instead
/// (exit 0), so it is not expected, and not understood if it comes.
pub fn parse_waldump(success: bool, stderr: &str) -> Option<ValidWal> {
    if success {
        return Some(ValidWal::ToSegmentEnd);
    }
    for line in stderr.lines() {
        if let Some(rest) = line.split_once("error in WAL record at ").map(|(_, r)| r) {
            let lsn = rest.split(':').next()?.trim().parse().ok()?;
            return Some(ValidWal::LastRecordAt(lsn));
        }
        if line.contains("could not find a valid record after ") {
            return Some(ValidWal::NoRecord);
        }
        let short_file = line.contains("could not read file \"") && line.contains(": read ");
        if line.contains("WAL segment size must be a power of two") || short_file {
            return Some(ValidWal::Nothing);
        }
    }
    None
}

/// Which copy PostgreSQL should replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// Serve the relay's copy (exit 0).
    Relay,
    /// Exit 1: PostgreSQL reads its own `pg_wal` copy.
    Local,
}

/// Chooses between the relay's partial copy and the standby's own copy of a segment by
/// pg_waldump's verdicts: the relay's only if it holds strictly more valid WAL (on a tie
/// the standby keeps its own: the same WAL, and its file is never replaced). `None` when
/// the verdicts cannot decide: one is missing, or neither copy has a valid record of its own
/// (both [`ValidWal::NoRecord`]: how much of the continued record each holds, pg_waldump
/// cannot say). Then [`local_holds_relay`] decides.
pub fn choose(relay: Option<ValidWal>, local: Option<ValidWal>) -> Option<Choice> {
    match (relay?, local?) {
        (ValidWal::NoRecord, ValidWal::NoRecord) => None,
        (relay, local) if relay.rank() > local.rank() => Some(Choice::Relay),
        _ => Some(Choice::Local),
    }
}

/// The rule used when pg_waldump cannot decide: whether the standby's copy `local` holds
/// every byte the relay's copy `relay` holds, up to the relay's last non-zero byte (the
/// relay's file is preallocated with zeros, so that is where its writing stopped, give or
/// take trailing zero bytes).
///
/// Why this rule and not a fixed default. Both copies are written front to back from one
/// stream, so each is a prefix of it followed by zeros (the relay's, a new standby file) or
/// old data (a recycled standby file). Either copy may be the only holder of acknowledged
/// commits: the relay's when the standby was down, the standby's when the relay was. A fixed
/// "prefer local" loses the first case, a fixed "serve the relay" the second. This rule
/// keeps the longer prefix in both: if the standby's copy starts with everything the relay
/// wrote it is at least as long (keep it), otherwise the standby stopped earlier (serve
/// the relay's). It can only be wrong where pg_waldump would not be: when the relay's
/// written data end in zero bytes the standby's recycled tail does not have, or when a relay
/// crash left a zero hole before later data; both need an exact cut that a byte count cannot
/// see, which is why pg_waldump decides whenever it can.
pub fn local_holds_relay(relay: &[u8], local: &[u8]) -> bool {
    let written = relay.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    local.get(..written).is_some_and(|l| l == &relay[..written])
}

/// The decision about one partial segment, with what the server log should hear.
#[derive(Debug)]
struct Verdict {
    choice: Choice,
    warning: Option<String>,
}

/// Compares the relay's copy `relay` (its file, or what was downloaded) with the standby's
/// `local` copy.
async fn compare(name: &str, relay: &Path, local: &Path, data_dir: &Path) -> Result<Verdict, FetchError> {
    let (relay_wal, local_wal) = match waldump_program(data_dir).await {
        Ok(program) => tokio::join!(valid_wal(&program, name, relay), valid_wal(&program, name, local)),
        Err(e) => (Err(e.clone()), Err(e)),
    };
    if let Some(choice) = choose(relay_wal.as_ref().ok().copied(), local_wal.as_ref().ok().copied()) {
        return Ok(Verdict { choice, warning: None });
    }
    let relay_bytes = std::fs::read(relay).map_err(io_error(format!("read {}", relay.display())))?;
    // A local copy that cannot be read cannot be replayed either.
    let holds = std::fs::read(local).is_ok_and(|local_bytes| local_holds_relay(&relay_bytes, &local_bytes));
    let choice = if holds { Choice::Local } else { Choice::Relay };
    // Both copies without a record of their own is an expected case, not worth a warning.
    let warning = match (relay_wal, local_wal) {
        (Ok(_), Ok(_)) => None,
        (relay_wal, local_wal) => {
            let said = |r: Result<ValidWal, String>| r.map_or_else(|e| e, |v| format!("{v:?}"));
            let (relay_said, local_said) = (said(relay_wal), said(local_wal));
            let why = if relay_said == local_said {
                relay_said
            } else {
                format!("the relay's partial copy: {relay_said}; pg_wal's: {local_said}")
            };
            Some(format!(
                "{name}: pg_waldump cannot compare the copies ({why}); by bytes, {}",
                match choice {
                    Choice::Local => "pg_wal's copy holds everything the relay's does: keeping it",
                    Choice::Relay => "the relay's copy holds WAL pg_wal's does not: serving it",
                }
            ))
        }
    };
    Ok(Verdict { choice, warning })
}

/// `pg_waldump` of the server's own major version: the one [`tandem_localpg::tool`] finds,
/// checked against the data directory's `PG_VERSION` when that can be read (another
/// version's reader rejects every page as having the wrong magic number).
async fn waldump_program(data_dir: &Path) -> Result<PathBuf, String> {
    let program = tandem_localpg::tool("pg_waldump").map_err(|e| e.to_string())?;
    let Ok(wanted) = std::fs::read_to_string(data_dir.join("PG_VERSION")) else { return Ok(program) };
    let out = tokio::process::Command::new(&program).arg("--version").stdin(Stdio::null()).kill_on_drop(true).output();
    let out = tokio::time::timeout(WALDUMP_TIMEOUT, out)
        .await
        .map_err(|_| format!("{} --version did not answer", program.display()))?
        .map_err(|e| format!("run {}: {e}", program.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match major_version(&text) {
        Some(major) if major == wanted.trim() => Ok(program),
        _ => Err(format!("{} is {:?}, the server is version {}", program.display(), text.trim(), wanted.trim())),
    }
}

/// The major version in `pg_waldump --version`'s output (`pg_waldump (PostgreSQL) 15.18
/// (Debian 15.18-0+deb12u1)` → `15`).
pub fn major_version(version_output: &str) -> Option<&str> {
    let rest = version_output.split_once("(PostgreSQL) ")?.1;
    let major = rest.split(|c: char| !c.is_ascii_digit()).next()?;
    (!major.is_empty()).then_some(major)
}

/// Runs `pg_waldump` on `file`, a copy of segment `name`: alone in a temporary directory,
/// under its segment name (pg_waldump reads segments by name), and reads its verdict.
/// `Err` says why there is none.
pub async fn valid_wal(program: &Path, name: &str, file: &Path) -> Result<ValidWal, String> {
    let out = super::waldump::run_on_copy(program, name, file, true).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = || format!("pg_waldump on {} ({}): {:?}", file.display(), out.status, stderr.trim());
    let verdict = parse_waldump(out.status.success(), &stderr).ok_or_else(said)?;
    // A last record outside the segment would mean the output was misread.
    if let ValidWal::LastRecordAt(lsn) = verdict {
        if let Some((start, end)) = segment_bounds(name, file) {
            if lsn < start || lsn >= end {
                return Err(format!("{} (outside segment {name})", said()));
            }
        }
    }
    Ok(verdict)
}

/// Where segment `name` starts and ends, its size taken from the copy's length (segments
/// are always full size), if that is a valid segment size.
fn segment_bounds(name: &str, file: &Path) -> Option<(Lsn, Lsn)> {
    let size = std::fs::metadata(file).ok()?.len();
    if !size.is_power_of_two() || !(1 << 20..=1 << 30).contains(&size) {
        return None;
    }
    let seg = SegmentName::parse(name, size)?;
    Some((Lsn(seg.segno * size), seg.end(size)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "000000010000000000000003";

    #[tokio::test]
    async fn copies_from_a_directory_and_says_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let pgdata = dir.path().join("pgdata");
        std::fs::create_dir_all(pgdata.join("pg_wal")).unwrap();
        std::fs::write(dir.path().join(format!("{NAME}.partial")), b"wal").unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        let src = dir.path().to_str().unwrap();
        // No local copy: the partial is served as it is.
        assert_eq!(fetch(src, NAME, &dest, &pgdata).await.unwrap().fetched, Fetched::Restored);
        assert_eq!(std::fs::read(&dest).unwrap(), b"wal");
        assert_eq!(fetch(src, "00000002.history", &dest, &pgdata).await.unwrap().fetched, Fetched::NotInRelay);
        assert!(matches!(fetch(src, "../../etc/passwd", &dest, &pgdata).await, Err(FetchError::BadName(_))));
    }

    #[tokio::test]
    async fn a_complete_segment_is_served_whatever_pg_wal_holds() {
        let dir = tempfile::tempdir().unwrap();
        let pgdata = dir.path().join("pgdata");
        std::fs::create_dir_all(pgdata.join("pg_wal")).unwrap();
        std::fs::write(pgdata.join("pg_wal").join(NAME), b"longer local copy").unwrap();
        std::fs::write(dir.path().join(NAME), b"complete").unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        let out = fetch(dir.path().to_str().unwrap(), NAME, &dest, &pgdata).await.unwrap();
        assert_eq!(out.fetched, Fetched::Restored);
        assert_eq!(std::fs::read(&dest).unwrap(), b"complete");
    }

    #[tokio::test]
    async fn a_partial_copy_with_nothing_written_is_declined_when_pg_wal_has_one() {
        let dir = tempfile::tempdir().unwrap();
        let pgdata = dir.path().join("pgdata");
        std::fs::create_dir_all(pgdata.join("pg_wal")).unwrap();
        std::fs::write(pgdata.join("pg_wal").join(NAME), b"own").unwrap();
        // Zeros: no WAL page for pg_waldump, nothing written for the byte rule.
        std::fs::write(dir.path().join(format!("{NAME}.partial")), [0u8; 64]).unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        let out = fetch(dir.path().to_str().unwrap(), NAME, &dest, &pgdata).await.unwrap();
        assert_eq!(out.fetched, Fetched::LocalHoldsMore);
        assert!(!dest.exists());
    }

    /// Lines pg_waldump 15.18 printed (`pg_waldump -q --path DIR NAME`) for copies of a real
    /// segment 0/2000000 cut in the ways a relay or standby copy ends.
    #[test]
    fn reads_what_pg_waldump_15_prints() {
        let cases: &[(&str, Option<ValidWal>)] = &[
            // Zeros after the last record (the relay's preallocated tail).
            (
                "pg_waldump: error: error in WAL record at 0/256B2F8: invalid record length at 0/256B320: wanted 24, got 0",
                Some(ValidWal::LastRecordAt(Lsn(0x256B2F8))),
            ),
            // Zeros from a page boundary on.
            (
                "pg_waldump: error: error in WAL record at 0/21FFD18: invalid magic number 0000 in log segment \
                 000000010000000000000002, offset 2097152",
                Some(ValidWal::LastRecordAt(Lsn(0x21FFD18))),
            ),
            // A recycled file's old page after the last written one.
            (
                "pg_waldump: error: error in WAL record at 0/21FFD18: unexpected pageaddr 0/1200000 in log segment \
                 000000010000000000000002, offset 2097152",
                Some(ValidWal::LastRecordAt(Lsn(0x21FFD18))),
            ),
            // A record cut short mid-page (zeros or old data after the cut), or a flipped byte.
            (
                "pg_waldump: error: error in WAL record at 0/21000E8: incorrect resource manager data checksum in \
                 record at 0/2100320",
                Some(ValidWal::LastRecordAt(Lsn(0x21000E8))),
            ),
            // Only (part of) the record continued from the previous segment, or a whole
            // recycled segment under this name.
            ("pg_waldump: error: could not find a valid record after 0/2000000", Some(ValidWal::NoRecord)),
            // An all-zero file (preallocated, nothing written).
            (
                "pg_waldump: error: WAL segment size must be a power of two between 1 MB and 1 GB, but the WAL file \
                 \"000000010000000000000002\" header specifies 0 bytes",
                Some(ValidWal::Nothing),
            ),
            // Shorter than a page.
            (
                "pg_waldump: error: could not read file \"000000010000000000000002\": read 4000 of 8192",
                Some(ValidWal::Nothing),
            ),
            // Not about the WAL at all.
            ("pg_waldump: error: could not open file \"000000010000000000000002\": Permission denied", None),
            ("pg_waldump: error: could not locate WAL file \"000000010000000000000002\"", None),
            ("pg_waldump: error: error in WAL record at garbage: x", None),
            ("", None),
        ];
        for (stderr, want) in cases {
            assert_eq!(parse_waldump(false, stderr), *want, "{stderr}");
        }
        // Exit 0 and nothing printed: valid to the segment's end (the last record of a
        // segment continued into the next one, as 0/1FFFDD0 did there).
        assert_eq!(parse_waldump(true, ""), Some(ValidWal::ToSegmentEnd));
    }

    #[test]
    fn the_relay_copy_wins_only_with_strictly_more_valid_wal() {
        use ValidWal::*;
        let at = |x: u64| LastRecordAt(Lsn(x));
        let relay = |r, l| choose(Some(r), Some(l));
        // The dangerous case: the standby received more than the relay.
        assert_eq!(relay(at(0x2100000), at(0x2200000)), Some(Choice::Local));
        assert_eq!(relay(at(0x2100000), ToSegmentEnd), Some(Choice::Local));
        assert_eq!(relay(NoRecord, at(0x2000028)), Some(Choice::Local));
        assert_eq!(relay(Nothing, NoRecord), Some(Choice::Local));
        // Catch-up: the standby was down, the relay went on.
        assert_eq!(relay(at(0x2200000), at(0x2100000)), Some(Choice::Relay));
        assert_eq!(relay(ToSegmentEnd, at(0x2100000)), Some(Choice::Relay));
        assert_eq!(relay(at(0x2000028), NoRecord), Some(Choice::Relay));
        assert_eq!(relay(NoRecord, Nothing), Some(Choice::Relay));
        // Ties keep the standby's own file.
        for same in [at(0x2100000), ToSegmentEnd, Nothing] {
            assert_eq!(relay(same, same), Some(Choice::Local));
        }
        // pg_waldump cannot say: the bytes decide.
        assert_eq!(relay(NoRecord, NoRecord), None);
        assert_eq!(choose(None, Some(ToSegmentEnd)), None);
        assert_eq!(choose(Some(Nothing), None), None);
    }

    #[test]
    fn by_bytes_the_longer_prefix_wins() {
        let stream: Vec<u8> = (1..=200u8).collect();
        let copy = |written: usize, tail: u8| {
            let mut v = stream[..written].to_vec();
            v.resize(stream.len(), tail);
            v
        };
        // The standby went on after the relay stopped (new or recycled file).
        assert!(local_holds_relay(&copy(100, 0), &copy(150, 0)));
        assert!(local_holds_relay(&copy(100, 0), &copy(150, 0xAB)));
        assert!(local_holds_relay(&copy(100, 0), &copy(100, 0)));
        // The relay went on after the standby stopped.
        assert!(!local_holds_relay(&copy(150, 0), &copy(100, 0)));
        assert!(!local_holds_relay(&copy(150, 0), &copy(100, 0xAB)));
        // A relay copy with nothing written offers nothing.
        assert!(local_holds_relay(&[0; 200], &copy(10, 0xAB)));
        // A short local file does not hold a longer relay copy.
        assert!(!local_holds_relay(&copy(150, 0), &stream[..120]));
    }

    #[test]
    fn reads_the_major_version() {
        assert_eq!(major_version("pg_waldump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"), Some("15"));
        assert_eq!(major_version("pg_waldump (PostgreSQL) 17devel"), Some("17"));
        assert_eq!(major_version("pg_waldump 15"), None);
    }
}
