//! Finding executables: the PostgreSQL server binaries and the `tandem` binary under test.
//!
//! Everything the kit runs starts here, so the lookup rules are kept in one place and every
//! failure says what to install or build.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::anyhow;

/// The directory holding `initdb`, `pg_ctl`, `postgres`, `pg_basebackup`, `psql` ...
///
/// Why: Debian keeps server binaries off `PATH`, other systems put them elsewhere, and CI may
/// want to pin a version. Order: `$PG_BIN`; `pg_config --bindir` if that directory has
/// `initdb`; the newest `/usr/lib/postgresql/*/bin` with `initdb`.
pub fn pg_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").is_file() {
            return Ok(dir);
        }
        return Err(anyhow!("PG_BIN={} has no initdb", dir.display()));
    }
    if let Some(dir) = pg_config_bindir() {
        if dir.join("initdb").is_file() {
            return Ok(dir);
        }
    }
    if let Some(dir) = newest_debian_bin_dir(Path::new("/usr/lib/postgresql")) {
        return Ok(dir);
    }
    Err(anyhow!(
        "no PostgreSQL server binaries found: set PG_BIN, or install them \
         (Debian: apt-get install postgresql)"
    ))
}

/// Path of one PostgreSQL program, preferring the server's bin dir and falling back to `PATH`
/// (client tools such as `psql` may live only in `/usr/bin`).
pub fn pg_tool(name: &str) -> anyhow::Result<PathBuf> {
    if let Ok(dir) = pg_bin_dir() {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("PostgreSQL program {name} not found in the server bin dir or PATH"))
}

/// `pg_config --bindir`, if `pg_config` runs.
fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| PathBuf::from(s))
}

/// The `<root>/<major>/bin` with the highest numeric major version that has `initdb`.
fn newest_debian_bin_dir(root: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(root).ok()?;
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .max_by_key(|(major, _)| *major)
        .map(|(_, bin)| bin)
}

/// Path of the `tandem` binary under test.
///
/// Why: end-to-end tests run the real binary, not library calls. `$TANDEM_BIN` wins; otherwise
/// the binary cargo builds next to the test executable (`target/debug/tandem`, the test being
/// in `target/debug/deps`). The path may not exist yet: [`crate::TandemProcess::spawn`] then
/// says to run `cargo build -p tandem`.
pub fn tandem_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TANDEM_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if matches!(
        dir.file_name().and_then(|n| n.to_str()),
        Some("deps") | Some("examples")
    ) {
        dir.pop();
    }
    dir.join("tandem")
}

/// Fails with build instructions when the `tandem` binary is missing.
pub(crate) fn require_tandem_bin() -> anyhow::Result<PathBuf> {
    let bin = tandem_bin();
    if bin.is_file() {
        return Ok(bin);
    }
    Err(anyhow!(
        "tandem binary not found at {}: run `cargo build -p tandem` first (or set TANDEM_BIN)",
        bin.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_major_wins_numerically() {
        let root = tempfile::tempdir().unwrap();
        for v in ["9", "15", "10", "notaversion"] {
            let bin = root.path().join(v).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            std::fs::write(bin.join("initdb"), "").unwrap();
        }
        // A newer major without initdb (client-only install) is skipped.
        std::fs::create_dir_all(root.path().join("16").join("bin")).unwrap();
        assert_eq!(
            newest_debian_bin_dir(root.path()),
            Some(root.path().join("15").join("bin"))
        );
    }

    #[test]
    fn tandem_bin_sits_next_to_deps() {
        if std::env::var_os("TANDEM_BIN").is_some() {
            return;
        }
        let p = tandem_bin();
        assert_eq!(p.file_name().and_then(|n| n.to_str()), Some("tandem"));
        assert_ne!(
            p.parent()
                .and_then(|d| d.file_name())
                .and_then(|n| n.to_str()),
            Some("deps")
        );
    }
}
