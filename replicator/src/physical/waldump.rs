//! Reading WAL with PostgreSQL's own `pg_waldump`: where the relay's WAL ends, and (for
//! `wal-fetch`) how much valid WAL a copy of a segment holds.
//!
//! Place in the data flow: a fenced relay ([`super::follow`]) → **here** → the failover's
//! catch-up target. `pg_receivewal` does not say what it last flushed once the primary is
//! gone, and its newest segment is a preallocated `.partial` (valid records, then zeros), so
//! the end is read the way recovery reads it: `pg_waldump` prints every valid record of the
//! segment and stops at the first invalid one. Written by hand around the tool (not a WAL
//! parser of our own) because no crate reads PostgreSQL WAL.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use tandem_core::Lsn;

use super::segments;

/// Bound on one `pg_waldump` run over one segment.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The start of the last valid record in the relay's newest WAL (looking back one segment
/// when the newest holds none). A standby whose replay position is past it has replayed
/// everything the relay holds (replay positions are record ends).
pub async fn last_record_start(wal_dir: &Path, seg_size: u64) -> Result<Option<Lsn>, String> {
    let program = tandem_localpg::tool("pg_waldump").map_err(|e| e.to_string())?;
    let files = segments::list(wal_dir, seg_size).map_err(|e| format!("list {}: {e}", wal_dir.display()))?;
    for file in files.iter().rev().take(2) {
        let name = file.name.file_name(seg_size);
        if let Some(lsn) = last_record_in(&program, &name, &file.path).await? {
            return Ok(Some(lsn));
        }
    }
    Ok(None)
}

/// The start of the last valid record `pg_waldump` prints for `file`, a copy of segment
/// `name`.
async fn last_record_in(program: &Path, name: &str, file: &Path) -> Result<Option<Lsn>, String> {
    let out = run_on_copy(program, name, file, false).await?;
    Ok(last_lsn(&String::from_utf8_lossy(&out.stdout)))
}

/// Runs `pg_waldump` on `file`, a copy of segment `name`, alone in a temporary directory
/// under its segment name (pg_waldump finds segments by name; the relay's newest is named
/// `.partial`). `quiet`: only the verdict on stderr (`--quiet`), else every record on stdout.
/// Messages are untranslated (they are parsed).
pub async fn run_on_copy(program: &Path, name: &str, file: &Path, quiet: bool) -> Result<Output, String> {
    let target = std::path::absolute(file).map_err(|e| format!("resolve {}: {e}", file.display()))?;
    let dir = tempfile::Builder::new()
        .prefix("tandem-waldump-")
        .tempdir()
        .map_err(|e| format!("create a temporary directory: {e}"))?;
    std::os::unix::fs::symlink(&target, dir.path().join(name))
        .map_err(|e| format!("link {} into {}: {e}", target.display(), dir.path().display()))?;
    let mut cmd = tokio::process::Command::new(program);
    if quiet {
        cmd.arg("--quiet");
    }
    cmd.arg("--path")
        .arg(dir.path())
        .arg(name)
        .env("LC_ALL", "C")
        .env_remove("LANGUAGE")
        .env_remove("PGDATA")
        .stdin(Stdio::null())
        .stdout(if quiet { Stdio::null() } else { Stdio::piped() })
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    tokio::time::timeout(TIMEOUT, cmd.output())
        .await
        .map_err(|_| format!("pg_waldump on {} ran over {TIMEOUT:?}", file.display()))?
        .map_err(|e| format!("run {}: {e}", program.display()))
}

/// The `lsn:` of the last record line in pg_waldump's output.
fn last_lsn(stdout: &str) -> Option<Lsn> {
    stdout.lines().rev().find_map(|line| {
        let rest = line.split_once(", lsn: ")?.1;
        rest.split(',').next()?.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_last_record_line() {
        let out = "rmgr: Heap        len (rec/tot):     54/    54, tx:        735, lsn: 0/03000148, prev 0/03000110, desc: INSERT off 2\n\
                   rmgr: Transaction len (rec/tot):     34/    34, tx:        735, lsn: 0/03000180, prev 0/03000148, desc: COMMIT 2026-12-07\n";
        assert_eq!(last_lsn(out), Some("0/3000180".parse().unwrap()));
        assert_eq!(last_lsn(""), None);
    }
}
