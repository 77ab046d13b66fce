//! Errors of the source side (replication connection, checks on the primary, streaming).

use crate::decoder::DecodeError;

/// An `ErrorResponse` from the primary, with the fields people need to act on it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerError {
    /// Severity (`ERROR`, `FATAL`, ...).
    pub severity: String,
    /// SQLSTATE code.
    pub code: String,
    /// Primary message.
    pub message: String,
    /// Detail, if any.
    pub detail: Option<String>,
    /// Hint, if any.
    pub hint: Option<String>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " (detail: {d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

/// Why the source could not connect, check, create or stream.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The server sent something the protocol does not allow here.
    #[error("replication protocol error: {0}")]
    Protocol(String),
    /// The server answered with an error.
    #[error("primary reported {0}")]
    Server(ServerError),
    /// Authentication could not proceed.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The DSN cannot be used for a replication connection.
    #[error("cannot use connection settings: {0}")]
    Config(String),
    /// The primary is not set up for logical replication; says what to change.
    #[error("primary not ready for Tandem: {0}")]
    NotReady(String),
    /// An SQL statement over an ordinary connection failed.
    #[error("{context}: {source}")]
    Sql {
        /// What was being done.
        context: String,
        /// The driver error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The pgoutput stream could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The change log refused a transaction.
    #[error("cannot store a transaction in the change log: {0}")]
    Sink(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The server ended the replication stream or closed the connection.
    #[error("replication stream closed by the primary")]
    Closed,
}

impl SourceError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SourceError {
        let context = context.into();
        move |source| SourceError::Io { context, source }
    }

    /// Wraps a tokio-postgres error with what was being done.
    pub fn sql(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> SourceError {
        let context = context.into();
        move |source| SourceError::Sql { context, source }
    }

    /// The SQLSTATE code if the server reported the error.
    pub fn code(&self) -> Option<&str> {
        match self {
            SourceError::Server(e) => Some(&e.code),
            SourceError::Sql { source, .. } => source.code().map(|c| c.code()),
            _ => None,
        }
    }
}
