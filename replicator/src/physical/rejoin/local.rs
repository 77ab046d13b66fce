//! The rejoining node's data directory, through PostgreSQL's own programs.
//!
//! Place in the rejoin flow: every step that touches the old primary's files. Reading its
//! control file (`pg_controldata`: system identifier, timeline, last checkpoint), its
//! timeline history, stopping it (`pg_ctl stop -m fast`), `pg_rewind` from the new primary,
//! moving the directory aside before a re-clone, and keeping the node's own configuration
//! files (which pg_rewind and pg_basebackup overwrite with the new primary's) in a sibling
//! directory until they are back in place. The node agent ([`crate::physical::agent`]) reads
//! the control data here too. All blocking: callers use `spawn_blocking`.

use std::path::{Path, PathBuf};

use tandem_core::Lsn;

use super::RejoinError;
use crate::physical::RelayError;

/// The configuration files that belong to the node, not to the data it holds: pg_rewind
/// and pg_basebackup copy the new primary's over them (its port, its `cluster_name`...).
pub const OWN_FILES: &[&str] = &["postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf"];

/// What `pg_controldata` says about a data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Control {
    /// `Database system identifier`.
    pub system_id: u64,
    /// `Database cluster state` (`shut down`, `in production`, ...).
    pub state: String,
    /// `Latest checkpoint location`.
    pub checkpoint: Lsn,
    /// `Latest checkpoint's TimeLineID`.
    pub checkpoint_tli: u32,
    /// `Latest checkpoint's REDO location`.
    pub redo: Lsn,
}

/// Reads `pg_controldata`'s output (run with `LC_ALL=C`, so the labels are English).
pub fn parse_control(text: &str) -> Result<Control, RejoinError> {
    let field = |label: &str| -> Result<&str, RejoinError> {
        text.lines()
            .find_map(|l| l.strip_prefix(label).and_then(|rest| rest.strip_prefix(':')))
            .map(str::trim)
            .ok_or_else(|| RejoinError::Parse(format!("pg_controldata prints no {label:?}")))
    };
    let bad = |label: &str| RejoinError::Parse(format!("pg_controldata's {label:?}"));
    Ok(Control {
        system_id: field("Database system identifier")?.parse().map_err(|_| bad("Database system identifier"))?,
        state: field("Database cluster state")?.to_owned(),
        checkpoint: field("Latest checkpoint location")?.parse().map_err(|_| bad("Latest checkpoint location"))?,
        checkpoint_tli: field("Latest checkpoint's TimeLineID")?
            .parse()
            .map_err(|_| bad("Latest checkpoint's TimeLineID"))?,
        redo: field("Latest checkpoint's REDO location")?
            .parse()
            .map_err(|_| bad("Latest checkpoint's REDO location"))?,
    })
}

fn parent(dir: &Path) -> &Path {
    dir.parent().unwrap_or(Path::new("/"))
}

fn run(program: &str, dir: &Path, args: &[&std::ffi::OsStr]) -> Result<std::process::Output, RejoinError> {
    let path = tandem_localpg::tool(program).map_err(RelayError::LocalPg)?;
    let mut cmd = tandem_localpg::server_command(&path, parent(dir)).map_err(RelayError::LocalPg)?;
    cmd.args(args).env("LC_ALL", "C");
    Ok(cmd.output().map_err(RelayError::io(format!("run {program}")))?)
}

/// `pg_controldata DIR`.
pub fn control(dir: &Path) -> Result<Control, RejoinError> {
    let out = run("pg_controldata", dir, &[dir.as_os_str()])?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(RejoinError::Refused(format!(
            "{} is not a PostgreSQL data directory (pg_controldata: {})",
            dir.display(),
            err.trim()
        )));
    }
    parse_control(&String::from_utf8_lossy(&out.stdout))
}

/// The newest timeline the node was on: its last checkpoint's, or a newer one it has a
/// history file for (a promotion whose first checkpoint never happened).
pub fn newest_timeline(dir: &Path, control: &Control) -> u32 {
    let from_files = std::fs::read_dir(dir.join("pg_wal"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let hex = name.strip_suffix(".history")?;
            (hex.len() == 8).then(|| u32::from_str_radix(hex, 16).ok()).flatten()
        })
        .max()
        .unwrap_or(0);
    from_files.max(control.checkpoint_tli)
}

/// The node's history file for timeline `tli` (empty for timeline 1, which has none).
pub fn history(dir: &Path, tli: u32) -> Result<String, RejoinError> {
    if tli <= 1 {
        return Ok(String::new());
    }
    let path = dir.join("pg_wal").join(format!("{tli:08X}.history"));
    Ok(std::fs::read_to_string(&path).map_err(RelayError::io(format!("read {}", path.display())))?)
}

/// Stops the server in `dir` if one runs there (`pg_ctl stop -m fast`); `Ok(true)` when it
/// had to. A stale `postmaster.pid` (a crashed server) is not a running server: it is
/// removed, so that pg_rewind's crash recovery and the next start are not refused.
pub fn stop(dir: &Path) -> Result<bool, RejoinError> {
    let server = tandem_localpg::LocalServer::at(dir, 0);
    server.clear_dead_postmaster().map_err(RelayError::LocalPg)?;
    if !server.is_running().map_err(RelayError::LocalPg)? {
        return Ok(false);
    }
    server.stop().map_err(RelayError::LocalPg)?;
    Ok(true)
}

/// The port the node's configuration gives it (`postgres -C port`, which reads the files
/// the way the server does, includes and `postgresql.auto.conf` too).
pub fn configured_port(dir: &Path) -> Result<u16, RejoinError> {
    let out = run("postgres", dir, &["-D".as_ref(), dir.as_os_str(), "-C".as_ref(), "port".as_ref()])?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().parse().map_err(|_| {
        RejoinError::Parse(format!(
            "postgres -C port in {}: {}{}",
            dir.display(),
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    })
}

/// Runs `pg_rewind` of `dir` from the server at `source` (a libpq conninfo). `Err` carries
/// what it printed: the reason a re-clone is needed. When the target was not shut down
/// cleanly, pg_rewind (PostgreSQL 13 and later) first runs its crash recovery in
/// single-user mode itself.
pub fn rewind(dir: &Path, source: &str) -> Result<String, String> {
    let args: [&std::ffi::OsStr; 3] = ["--target-pgdata".as_ref(), dir.as_os_str(), "--source-server".as_ref()];
    let mut all: Vec<&std::ffi::OsStr> = args.to_vec();
    all.push(source.as_ref());
    let out = run("pg_rewind", dir, &all).map_err(|e| e.to_string())?;
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    if out.status.success() {
        Ok(text)
    } else {
        Err(text.trim().to_owned())
    }
}

/// Renames `dir` to `dir.old-<UTC time>` and returns the new path.
pub fn move_aside(dir: &Path, now: std::time::SystemTime) -> Result<PathBuf, RejoinError> {
    let stamp = utc_stamp(now);
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".old-{stamp}"));
    let aside = dir.with_file_name(name);
    std::fs::rename(dir, &aside).map_err(RelayError::io(format!("move {} to {}", dir.display(), aside.display())))?;
    Ok(aside)
}

/// `YYYYMMDDTHHMMSSZ` for a time (UTC, from the Unix clock; no time-zone data needed).
pub fn utc_stamp(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Where the node's own configuration files wait while its data is replaced.
pub fn saved_dir(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".rejoin-conf");
    dir.with_file_name(name)
}

/// Copies the node's [`OWN_FILES`] to [`saved_dir`], unless an interrupted rejoin left them
/// there already (then those are the node's own, and what `dir` holds may be the new
/// primary's): `Ok(true)` in that case.
pub fn save_own_files(dir: &Path) -> Result<bool, RejoinError> {
    let saved = saved_dir(dir);
    let done = saved.join(".complete");
    if done.exists() {
        return Ok(true);
    }
    std::fs::create_dir_all(&saved).map_err(RelayError::io(format!("create {}", saved.display())))?;
    for name in OWN_FILES {
        let (from, to) = (dir.join(name), saved.join(name));
        match std::fs::copy(&from, &to) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let _ = std::fs::remove_file(&to);
            }
            Err(e) => return Err(RelayError::Io { what: format!("copy {}", from.display()), source: e }.into()),
        }
    }
    std::fs::write(&done, b"").map_err(RelayError::io(format!("write {}", done.display())))?;
    Ok(false)
}

/// Puts the saved [`OWN_FILES`] back into `dir` (a file the node did not have is removed:
/// it came from the new primary). Keeps the saved copies; [`forget_own_files`] drops them.
pub fn restore_own_files(dir: &Path) -> Result<(), RejoinError> {
    let saved = saved_dir(dir);
    for name in OWN_FILES {
        let (from, to) = (saved.join(name), dir.join(name));
        if from.exists() {
            std::fs::copy(&from, &to).map_err(RelayError::io(format!("restore {}", to.display())))?;
            tandem_localpg::chown_for_server(&to).map_err(RelayError::LocalPg)?;
        } else if to.exists() {
            std::fs::remove_file(&to).map_err(RelayError::io(format!("remove {}", to.display())))?;
        }
    }
    Ok(())
}

/// Removes the saved copies once the node's files are back for good.
pub fn forget_own_files(dir: &Path) -> Result<(), RejoinError> {
    let saved = saved_dir(dir);
    Ok(std::fs::remove_dir_all(&saved).map_err(RelayError::io(format!("remove {}", saved.display())))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_data_is_read() {
        let text = "pg_control version number:            1300\n\
                    Database system identifier:           7716572724067505651\n\
                    Database cluster state:               shut down\n\
                    Latest checkpoint location:           0/3018228\n\
                    Latest checkpoint's REDO location:    0/30181F0\n\
                    Latest checkpoint's TimeLineID:       1\n\
                    Latest checkpoint's PrevTimeLineID:   1\n";
        let c = parse_control(text).unwrap();
        assert_eq!(c.system_id, 7716572724067505651);
        assert_eq!(c.state, "shut down");
        assert_eq!(c.checkpoint, "0/3018228".parse().unwrap());
        assert_eq!(c.checkpoint_tli, 1);
        assert_eq!(c.redo, "0/30181F0".parse().unwrap());
        assert!(parse_control("nothing").is_err());
    }

    #[test]
    fn stamps_are_utc_civil_time() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_654_599);
        assert_eq!(utc_stamp(t), "20261207T144319Z");
        assert_eq!(utc_stamp(std::time::UNIX_EPOCH), "19700101T000000Z");
        let leap = std::time::UNIX_EPOCH + std::time::Duration::from_secs(951_782_400);
        assert_eq!(utc_stamp(leap), "20000229T000000Z");
    }

    #[test]
    fn own_files_survive_being_overwritten_and_an_interrupted_run() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("postgresql.conf"), "port = 5432\n").unwrap();
        std::fs::write(dir.join("postgresql.auto.conf"), "# mine\n").unwrap();
        assert!(!save_own_files(&dir).unwrap());
        // pg_rewind copies the source's files in, pg_ident.conf included.
        std::fs::write(dir.join("postgresql.conf"), "port = 6000\n").unwrap();
        std::fs::write(dir.join("pg_ident.conf"), "theirs\n").unwrap();
        // A second run (after an interruption) keeps the first run's copies.
        assert!(save_own_files(&dir).unwrap());
        restore_own_files(&dir).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("postgresql.conf")).unwrap(), "port = 5432\n");
        assert!(!dir.join("pg_ident.conf").exists());
        forget_own_files(&dir).unwrap();
        assert!(!saved_dir(&dir).exists());
    }
}
