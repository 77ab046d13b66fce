//! Local PostgreSQL servers, driven through the installed programs.
//!
//! `tandem demo`, the replicator's initial copy (pg_dump) and the test kit all
//! need the same three things: find the PostgreSQL programs (`$PG_BIN`,
//! `pg_config --bindir`, or the newest `/usr/lib/postgresql/*/bin`), run the
//! server programs as the `postgres` OS user when Tandem runs as root
//! (PostgreSQL refuses to run as root), and start or stop a server in a data
//! directory. That is this crate; it knows nothing about Tandem itself.

mod bin;
mod server;
mod user;

pub use bin::{bin_dir, tool};
pub use server::{process_alive, LocalServer, ServerSettings};
pub use user::{chown_for_server, server_command, server_user, LIBPQ_ENV};

/// Something about the local PostgreSQL installation or a server went wrong.
#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    /// No server programs were found.
    #[error("no PostgreSQL server programs found: set PG_BIN, or install them (Debian: apt-get install postgresql)")]
    NoBinaries,
    /// `$PG_BIN` points somewhere without initdb.
    #[error("PG_BIN={0} has no initdb")]
    BadPgBin(String),
    /// A program is missing.
    #[error("PostgreSQL program {0} not found in the server bin dir or PATH")]
    NoTool(String),
    /// Running as root without a `postgres` OS user.
    #[error(
        "running as root but there is no `postgres` OS user to run PostgreSQL as (install the postgresql package)"
    )]
    NoServerUser,
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A program exited unsuccessfully.
    #[error("{program} failed ({status}): {output}")]
    Failed {
        /// The program.
        program: String,
        /// Its exit status.
        status: String,
        /// The end of what it printed.
        output: String,
    },
}

impl LocalPgError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalPgError {
        let what = what.into();
        move |source| LocalPgError::Io { what, source }
    }
}
