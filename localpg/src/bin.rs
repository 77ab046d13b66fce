//! Where the PostgreSQL programs are.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::LocalPgError;

/// The directory with the server programs (initdb, pg_ctl, postgres, pg_dump ...):
/// `$PG_BIN`, else `pg_config --bindir` if it has initdb, else the newest
/// `/usr/lib/postgresql/*/bin`.
pub fn bin_dir() -> Result<PathBuf, LocalPgError> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").is_file() {
            return Ok(dir);
        }
        return Err(LocalPgError::BadPgBin(dir.display().to_string()));
    }
    if let Some(dir) = pg_config_bindir() {
        if dir.join("initdb").is_file() {
            return Ok(dir);
        }
    }
    newest_debian_bin_dir(Path::new("/usr/lib/postgresql")).ok_or(LocalPgError::NoBinaries)
}

/// A PostgreSQL program: from [`bin_dir`] if it is there, else from `PATH`.
pub fn tool(name: &str) -> Result<PathBuf, LocalPgError> {
    if let Ok(dir) = bin_dir() {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| LocalPgError::NoTool(name.to_owned()))
}

fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config").arg("--bindir").stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| PathBuf::from(s))
}

/// The bin dir of the highest major version under `root` (Debian's layout).
fn newest_debian_bin_dir(root: &Path) -> Option<PathBuf> {
    std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .max_by_key(|(major, _)| *major)
        .map(|(_, bin)| bin)
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
        std::fs::create_dir_all(root.path().join("16").join("bin")).unwrap();
        assert_eq!(newest_debian_bin_dir(root.path()), Some(root.path().join("15").join("bin")));
    }
}
