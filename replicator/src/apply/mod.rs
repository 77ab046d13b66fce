//! Applying the change stream to replicas.
//!
//! Place in the data flow: change log → **apply** → replica databases. One
//! apply task per (replica, database) reads the change log from its replica's
//! progress on and applies each transaction exactly once ([`applier`]):
//! [`batch`] encodes batches (planned by [`coalesce`] with [`facts`] about
//! the replica's tables), [`writer`] pipelines them to the replica on the
//! raw protocol, [`replies`] checks the answers; [`session`] opens the
//! tokio-postgres sessions used elsewhere (copy, sequences) and owns the
//! progress table, [`sql`] and [`text`] turn changes into statements,
//! [`statements`] caches them by shape, [`sequences`] keeps sequence values
//! in step, [`task`] is the long-running loop.

pub mod applier;
pub mod batch;
pub mod coalesce;
pub mod facts;
pub mod replies;
pub mod sequences;
pub mod session;
pub mod side;
pub mod split;
pub mod sql;
pub mod statements;
pub mod task;
pub mod text;
pub mod writer;

pub use applier::{Applied, Applier};
pub use side::Replicas;
pub use task::{run_apply_task, ApplyTask};

use crate::change::ChangeDecodeError;
use crate::changelog::ChangeLogError;
use writer::WriterError;

/// Why applying to a replica failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The writer session could not be opened.
    #[error("cannot connect to the replica: {0}")]
    Connect(#[source] WriterError),
    /// The database has no progress row: it was never initially copied.
    #[error(
        "replica database {database:?} has no Tandem progress for source {source_name:?}; \
         it needs an initial copy first"
    )]
    NotInitialized {
        /// The database.
        database: String,
        /// The progress key looked for.
        source_name: String,
    },
    /// A statement on the replica failed, or the session to it.
    #[error("{context}: {source}")]
    Sql {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: WriterError,
    },
    /// Replaying captured DDL failed.
    #[error("replaying DDL `{query}`: {source}")]
    Ddl {
        /// The captured query string.
        query: String,
        /// The error.
        #[source]
        source: WriterError,
    },
    /// A change cannot be expressed as a statement (e.g. no replica identity).
    #[error(transparent)]
    Plan(#[from] sql::PlanError),
    /// A change-log record is not a valid transaction.
    #[error("corrupt change-log record: {0}")]
    Decode(#[from] ChangeDecodeError),
    /// Reading the change log failed.
    #[error("reading the change log: {0}")]
    ChangeLog(#[from] ChangeLogError),
}

impl ApplyError {
    pub(crate) fn sql(context: impl Into<String>, source: WriterError) -> ApplyError {
        ApplyError::Sql { context: context.into(), source }
    }

    /// Whether retrying later can help (connection and server errors) as
    /// opposed to errors in the data itself.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ApplyError::Connect(_) | ApplyError::Sql { .. } | ApplyError::Ddl { .. } | ApplyError::ChangeLog(_)
        )
    }
}
