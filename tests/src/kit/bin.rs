//! Finding executables: the PostgreSQL server binaries and the `tandem` binary under test.
//!
//! Everything the kit runs starts here, so the lookup rules are kept in one place and every
//! failure says what to install or build.

use std::path::{Path, PathBuf};

use anyhow::anyhow;

/// The directory holding `initdb`, `pg_ctl`, `postgres`, `pg_basebackup`, `psql` ...
///
/// Why: Debian keeps server binaries off `PATH`, other systems put them elsewhere, and CI may
/// want to pin a version. Order: `$PG_BIN`; `pg_config --bindir` if that directory has
/// `initdb`; the newest `/usr/lib/postgresql/*/bin` with `initdb`.
pub fn pg_bin_dir() -> anyhow::Result<PathBuf> {
    Ok(tandem_localpg::bin_dir()?)
}

/// A PostgreSQL program: from the server bin dir if it is there, else from `PATH`
/// (psql and pgbench often live only on `PATH`).
pub fn pg_tool(name: &str) -> anyhow::Result<PathBuf> {
    Ok(tandem_localpg::tool(name)?)
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
    if matches!(dir.file_name().and_then(|n| n.to_str()), Some("deps") | Some("examples")) {
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
    Err(anyhow!("tandem binary not found at {}: run `cargo build -p tandem` first (or set TANDEM_BIN)", bin.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tandem_bin_sits_next_to_deps() {
        if std::env::var_os("TANDEM_BIN").is_some() {
            return;
        }
        let p = tandem_bin();
        assert_eq!(p.file_name().and_then(|n| n.to_str()), Some("tandem"));
        assert_ne!(p.parent().and_then(|d| d.file_name()).and_then(|n| n.to_str()), Some("deps"));
    }
}
