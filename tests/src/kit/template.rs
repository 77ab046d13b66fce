//! The initdb template every [`crate::PgServer`] is copied from, and the configuration
//! files written into each copy (`append_settings`, `write_hba`).
//!
//! initdb takes seconds; copying its result takes milliseconds. So initdb runs at most once
//! per test process (a process-wide `OnceLock`) into a template directory that servers copy
//! with `cp -a`. The finished template is also kept in the system temp dir under a name that
//! pins the kit's template format, the PostgreSQL bin dir and the user, so later test
//! processes (other test binaries, the next `cargo test`) skip initdb as well. It is
//! published by an atomic rename, so a half-written template is never used.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, Context};

use super::bin::pg_bin_dir;
use super::run::{chown_for_server, pg_command, run_to_file};

/// Bump when the initdb arguments change, so stale cached templates are not reused. The
/// template is plain initdb output: settings are applied per server (see
/// [`COMMON_SETTINGS`]), so changing them needs no bump.
const TEMPLATE_FORMAT: u32 = 2;

/// Settings every test server shares, appended to each new server's `postgresql.conf`.
/// Per-server settings (port, sockets, WAL level, test extras) are appended after these, and
/// PostgreSQL lets the last occurrence win.
pub(crate) const COMMON_SETTINGS: &[(&str, &str)] = &[
    ("listen_addresses", "127.0.0.1"),
    ("fsync", "off"),
    ("shared_buffers", "32MB"),
    ("max_connections", "200"),
    ("logging_collector", "off"),
    ("log_line_prefix", "%m [%p] %q%a "),
    // Standbys restarted in failure tests should find the WAL they missed.
    ("wal_keep_size", "128MB"),
    // pg_rewind (an old primary rejoining as a standby) needs hint-bit changes WAL-logged.
    ("wal_log_hints", "on"),
];

/// Path of a ready template data directory, creating it on first use in this process.
pub(crate) fn template_dir() -> anyhow::Result<PathBuf> {
    static TEMPLATE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| build_or_reuse().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!("preparing the initdb template failed: {e}"))
}

fn build_or_reuse() -> anyhow::Result<PathBuf> {
    let bin = pg_bin_dir()?;
    let final_dir = std::env::temp_dir().join(cache_name(&bin));
    if final_dir.join("PG_VERSION").is_file() {
        tracing::debug!(dir = %final_dir.display(), "reusing cached initdb template");
        return Ok(final_dir);
    }
    let staging = tempfile::Builder::new()
        .prefix("tandem-pg-template-staging-")
        .tempdir()
        .context("creating template staging dir")?;
    chown_for_server(staging.path())?;
    let data = staging.path().join("data");
    tracing::info!(bin = %bin.display(), "running initdb for the test template");
    let mut cmd = pg_command(&bin.join("initdb"), staging.path(), true)?;
    cmd.arg("-D").arg(&data).args(["--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C", "-U", "postgres"]);
    run_to_file(cmd, &staging.path().join("initdb.out"), Duration::from_secs(180), "initdb")?;
    if final_dir.exists() {
        // Templates are published by rename, so one without PG_VERSION is debris (e.g. a
        // /tmp cleaner ran); clear it so the rename below can succeed.
        let _ = std::fs::remove_dir_all(&final_dir);
    }
    match std::fs::rename(&data, &final_dir) {
        Ok(()) => Ok(final_dir),
        // Another test process published its template first; use that one (ours is
        // removed with the staging dir).
        Err(_) if final_dir.join("PG_VERSION").is_file() => Ok(final_dir),
        Err(e) => Err(e).with_context(|| format!("publishing template to {}", final_dir.display())),
    }
}

/// Cache directory name: kit template format, effective uid, and the bin dir spelled out
/// (so a different PostgreSQL version gets its own template).
fn cache_name(bin: &Path) -> String {
    let bin: String = bin.to_string_lossy().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!(
        "tandem-pg-template-v{TEMPLATE_FORMAT}-u{}-{}",
        nix::unistd::Uid::effective().as_raw(),
        bin.trim_matches('_')
    )
}

/// Appends `key = 'value'` lines to a `postgresql.conf`. Every value is quoted (PostgreSQL
/// accepts quoted values for every setting type) with embedded quotes doubled.
pub(crate) fn append_settings<'a>(
    conf: &Path,
    settings: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> anyhow::Result<()> {
    let mut text = String::from("\n# --- tandem test kit ---\n");
    for (key, value) in settings {
        text.push_str(&format!("{key} = '{}'\n", value.replace('\'', "''")));
    }
    let mut f =
        std::fs::OpenOptions::new().append(true).open(conf).with_context(|| format!("opening {}", conf.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("writing {}", conf.display()))
}

/// Writes `pg_hba.conf`: the test's lines first, then trust for everything on loopback
/// (normal and replication connections) and on the server's own Unix socket.
pub(crate) fn write_hba(path: &Path, extra: &[String]) -> anyhow::Result<()> {
    let mut text = String::from("# written by the tandem test kit\n");
    for line in extra {
        text.push_str(line);
        text.push('\n');
    }
    text.push_str(
        "host all all 127.0.0.1/32 trust\n\
         host replication all 127.0.0.1/32 trust\n\
         local all all trust\n\
         local replication all trust\n",
    );
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("postgresql.conf");
        std::fs::write(&conf, "# base\n").unwrap();
        append_settings(&conf, [("a", "1"), ("b", "it's")]).unwrap();
        let text = std::fs::read_to_string(&conf).unwrap();
        assert!(text.starts_with("# base\n"));
        assert!(text.contains("a = '1'\n"));
        assert!(text.contains("b = 'it''s'\n"));
    }

    #[test]
    fn hba_puts_extra_lines_first() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pg_hba.conf");
        write_hba(&p, &["host all alice 127.0.0.1/32 scram-sha-256".into()]).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let alice = text.find("alice").unwrap();
        let trust = text.find("host all all 127.0.0.1/32 trust").unwrap();
        assert!(alice < trust);
        assert!(text.contains("host replication all 127.0.0.1/32 trust"));
    }

    #[test]
    fn cache_name_is_path_safe() {
        let name = cache_name(Path::new("/usr/lib/postgresql/15/bin"));
        assert!(name.ends_with("usr_lib_postgresql_15_bin"), "{name}");
        assert!(!name.contains('/'));
    }
}
