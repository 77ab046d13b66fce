//! Physical mode (the default): standbys are byte-identical copies streaming WAL from the
//! primary, and the replicator is a durable WAL relay beside them.
//!
//! Data flow: primary → `pg_receivewal` ([`receiver`]) → the relay's WAL directory
//! ([`segments`]) → standbys' `restore_command` (`tandem wal-fetch`, [`fetch`], from the
//! directory or over HTTP from [`status`]'s endpoint). [`relay`] wires it together:
//! [`identity`] checks which system the WAL comes from, [`quorum`] keeps the primary's
//! `synchronous_standby_names`, [`status`] polls every member's positions and trims what
//! every standby has. [`standby`] makes a new standby (`tandem replica add`), [`rejoin`]
//! turns a fenced old primary into one after a failover (`tandem rejoin`), both finishing
//! with [`autoconf`]. [`register`] reports the relay to the witness group; [`follow`]
//! streams from the group's primary and takes the failover's fence ([`waldump`] reads where
//! the relay's WAL ends). [`agent`] (`tandem agent`) stops and starts one node's server for
//! the witness leader (a switchover).

pub mod agent;
pub mod autoconf;
pub mod fetch;
pub mod follow;
pub mod identity;
pub mod quorum;
pub mod receiver;
pub mod register;
pub mod rejoin;
pub mod relay;
pub mod segments;
pub mod standby;
pub mod status;
mod status_sql;
pub mod waldump;

use std::path::PathBuf;

pub use relay::run;

/// Why the relay (or one of its tools) stopped.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Talking to the primary over the replication protocol failed.
    #[error(transparent)]
    Source(crate::source::SourceError),
    /// An SQL statement failed.
    #[error("{context}: {source}")]
    Sql {
        /// What was being done.
        context: String,
        /// The driver error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A server answered something unexpected.
    #[error("{0}")]
    Protocol(String),
    /// The primary is not set up for the relay; says what to change.
    #[error("primary not ready for the WAL relay: {0}")]
    NotReady(String),
    /// The primary is another PostgreSQL system than the one whose WAL the relay holds.
    #[error(
        "the primary is system {found}, but the relay's data directory {} holds WAL of system {expected}: \
         refusing to mix two systems' WAL (point --primary at the right server, or use a new --data-dir)",
        data_dir.display()
    )]
    OtherSystem {
        /// The identifier recorded in the data directory.
        expected: u64,
        /// The identifier the primary reported.
        found: u64,
        /// The relay's data directory.
        data_dir: PathBuf,
    },
    /// Running a local PostgreSQL program failed.
    #[error(transparent)]
    LocalPg(tandem_localpg::LocalPgError),
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The status endpoint cannot listen on its address.
    #[error("status endpoint on {addr}: {source}")]
    Status {
        /// The `--status-listen` address.
        addr: std::net::SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
}

impl RelayError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RelayError {
        let what = what.into();
        move |source| RelayError::Io { what, source }
    }

    pub(crate) fn sql(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> RelayError {
        let context = context.into();
        move |source| RelayError::Sql { context, source }
    }

    /// Errors retrying will not fix: the relay stops instead of restarting its receiver.
    pub fn is_fatal(&self) -> bool {
        matches!(self, RelayError::OtherSystem { .. } | RelayError::Config(_) | RelayError::NotReady(_))
    }
}
