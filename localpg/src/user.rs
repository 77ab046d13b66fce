//! Running server programs as the right OS user.
//!
//! PostgreSQL refuses to run as root. When Tandem runs as root (containers,
//! CI), server programs run as the `postgres` OS user and the directories
//! they own are chowned to it; otherwise everything runs as the current user.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use nix::unistd::{Gid, Uid, User};

use crate::LocalPgError;

/// libpq environment variables that would redirect a server program.
pub const LIBPQ_ENV: &[&str] = &[
    "PGDATA",
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGSSLMODE",
    "PGTARGETSESSIONATTRS",
];

/// The uid/gid server programs must run as: `Some` when we are root.
pub fn server_user() -> Result<Option<(Uid, Gid)>, LocalPgError> {
    static USER: OnceLock<Option<Option<(Uid, Gid)>>> = OnceLock::new();
    USER.get_or_init(|| {
        if !Uid::effective().is_root() {
            return Some(None);
        }
        match User::from_name("postgres") {
            Ok(Some(u)) => Some(Some((u.uid, u.gid))),
            _ => None,
        }
    })
    .ok_or(LocalPgError::NoServerUser)
}

/// Gives `path` to the server user (no-op when not root).
pub fn chown_for_server(path: &Path) -> Result<(), LocalPgError> {
    if let Some((uid, gid)) = server_user()? {
        nix::unistd::chown(path, Some(uid), Some(gid)).map_err(|e| LocalPgError::Io {
            what: format!("chown {} to postgres", path.display()),
            source: e.into(),
        })?;
    }
    Ok(())
}

/// A command for a server program: run as the server user, in `cwd`, with no
/// stdin and no libpq environment.
pub fn server_command(program: &Path, cwd: &Path) -> Result<Command, LocalPgError> {
    let mut cmd = Command::new(program);
    cmd.current_dir(cwd).stdin(Stdio::null());
    for var in LIBPQ_ENV {
        cmd.env_remove(var);
    }
    if let Some((uid, gid)) = server_user()? {
        cmd.uid(uid.as_raw()).gid(gid.as_raw());
    }
    Ok(cmd)
}
