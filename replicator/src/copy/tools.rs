//! PostgreSQL client programs used by the initial copy (`pg_dump`, `pg_dumpall`).
//!
//! Place in the data flow: the first step of bringing a replica in, before any
//! streamed change. The schema and the roles come from PostgreSQL's own dump
//! tools (they know every object kind of every version better than we could),
//! so this module finds them on disk, turns a [`tokio_postgres::Config`] into
//! the libpq connection string they take, and runs them, capturing their output.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio_postgres::config::Host;
use tokio_postgres::Config;

use super::CopyError;

/// Where the PostgreSQL client binaries (`pg_dump`, `pg_dumpall`) live.
///
/// Looked up once per copy: `$PG_BIN`, then `pg_config --bindir`, then the
/// newest `/usr/lib/postgresql/<major>/bin` (a newer `pg_dump` can dump an
/// older server, never the reverse).
#[derive(Clone, Debug)]
pub struct PgTools {
    /// Directory holding `pg_dump` and `pg_dumpall`.
    pub bindir: PathBuf,
}

impl PgTools {
    /// Finds the binaries (via `tandem_localpg::tool`: `$PG_BIN`,
    /// `pg_config --bindir`, the newest `/usr/lib/postgresql/*/bin`, `PATH`).
    pub async fn locate() -> Result<PgTools, CopyError> {
        let found = tokio::task::spawn_blocking(|| tandem_localpg::tool("pg_dump"))
            .await
            .map_err(|e| CopyError::ToolsNotFound(e.to_string()))?;
        match found {
            Ok(pg_dump) => {
                let bindir = pg_dump.parent().map(Path::to_path_buf).unwrap_or_default();
                if has_dump_tools(&bindir) {
                    Ok(PgTools { bindir })
                } else {
                    Err(CopyError::ToolsNotFound(format!("{} has pg_dump but no pg_dumpall", bindir.display())))
                }
            }
            Err(e) => Err(CopyError::ToolsNotFound(e.to_string())),
        }
    }

    /// Runs `program` (a file in [`Self::bindir`]) with `args`, connecting to
    /// the server described by `cfg`; returns its standard output.
    ///
    /// The password, if any, travels in `PGPASSWORD` so it never shows in `ps`.
    pub async fn run(&self, program: &str, cfg: &Config, args: &[String]) -> Result<String, CopyError> {
        let path = self.bindir.join(program);
        let mut cmd = tokio::process::Command::new(&path);
        cmd.args(args)
            .arg(format!("--dbname={}", conninfo(cfg)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .env_remove("PGOPTIONS");
        if let Some(pw) = cfg.get_password() {
            cmd.env("PGPASSWORD", String::from_utf8_lossy(pw).as_ref());
        }
        tracing::debug!(program, ?args, "running PostgreSQL tool");
        let out = cmd
            .output()
            .await
            .map_err(|source| CopyError::ToolSpawn { program: path.display().to_string(), source })?;
        if !out.status.success() {
            return Err(CopyError::ToolFailed {
                program: program.to_owned(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        String::from_utf8(out.stdout).map_err(|_| CopyError::ToolOutput(program.to_owned()))
    }
}

fn has_dump_tools(dir: &Path) -> bool {
    dir.join("pg_dump").is_file() && dir.join("pg_dumpall").is_file()
}

/// libpq keyword/value connection string for `cfg` (host, port, user, dbname,
/// sslmode; never the password).
pub fn conninfo(cfg: &Config) -> String {
    let mut parts = Vec::new();
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    if !hosts.is_empty() {
        parts.push(format!("host={}", quote_conninfo(&hosts.join(","))));
    }
    let ports: Vec<String> = cfg.get_ports().iter().map(u16::to_string).collect();
    if !ports.is_empty() {
        parts.push(format!("port={}", quote_conninfo(&ports.join(","))));
    }
    if let Some(user) = cfg.get_user() {
        parts.push(format!("user={}", quote_conninfo(user)));
    }
    if let Some(db) = cfg.get_dbname() {
        parts.push(format!("dbname={}", quote_conninfo(db)));
    }
    let sslmode = match cfg.get_ssl_mode() {
        tokio_postgres::config::SslMode::Disable => "disable",
        tokio_postgres::config::SslMode::Require => "require",
        _ => "prefer",
    };
    parts.push(format!("sslmode={sslmode}"));
    parts.push("application_name=tandem-copy".to_owned());
    parts.join(" ")
}

/// Quotes a conninfo value: single quotes, with `\` and `'` escaped by `\`.
fn quote_conninfo(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\\' || c == '\'' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// Removes the psql meta-commands recent dump tools put around a script
/// (`\restrict KEY` / `\unrestrict KEY`, added in 15.14 / 16.10 / 17.6), so
/// the rest can be run as plain SQL over the simple query protocol.
pub fn strip_meta_commands(script: &str) -> String {
    script
        .lines()
        .filter(|line| !line.starts_with("\\restrict ") && !line.starts_with("\\unrestrict "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_quotes_values_and_omits_password() {
        let cfg: Config = "postgres://al'ice:secret@127.0.0.1:5999/my db".parse().unwrap();
        let s = conninfo(&cfg);
        assert!(s.contains("host='127.0.0.1'"), "{s}");
        assert!(s.contains("port='5999'"), "{s}");
        assert!(s.contains("user='al\\'ice'"), "{s}");
        assert!(s.contains("dbname='my db'"), "{s}");
        assert!(!s.contains("secret"), "{s}");
    }

    #[test]
    fn strips_restrict_lines() {
        let script = "\\restrict abc\nCREATE TABLE t();\n\\unrestrict abc\n";
        assert_eq!(strip_meta_commands(script), "CREATE TABLE t();");
    }
}
