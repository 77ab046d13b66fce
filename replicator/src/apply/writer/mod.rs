//! The applier's writer session on the raw PostgreSQL protocol.
//!
//! Place in the data flow: applier → **writer session** → replica. Every
//! batch (BEGIN, guard, row statements, progress update, COMMIT) goes out as
//! extended-protocol Parse (new shapes only) / Bind / Execute messages
//! followed by ONE Sync, built into one write buffer and written with as few
//! `write()` calls as possible; answers are read in order and matched against
//! what was sent ([`protocol`]). The next batch is written while the previous
//! one's answers are still coming.
//!
//! Hand-written because tokio-postgres ends every statement with its own
//! Sync, so the replica's backend flushes (one `send()`) and the client task
//! wakes per statement: a third of the replica's apply CPU and a quarter of
//! Tandem's went there. No maintained crate pipelines a batch of statements
//! behind one Sync. Messages are encoded and decoded by `postgres-protocol`;
//! startup and authentication are the replication connection's (see
//! [`crate::source::conn`]), which already speaks the raw protocol.
//!
//! - [`protocol`]: socket-free state: encoding, expected answers, error skipping;
//! - [`conn`]: the socket, connecting, and waiting for answers.

pub mod conn;
pub mod protocol;

pub use conn::WriterSession;
pub use protocol::{Event, Pipeline, TxnStatus};

use crate::source::{ServerError, SourceError};

/// Why the writer session failed.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// Opening the session (socket, startup, authentication) failed.
    #[error("{0}")]
    Connect(String),
    /// Reading or writing the socket failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The replica closed the connection.
    #[error("the replica closed the connection")]
    Closed,
    /// The replica sent something the protocol does not allow here.
    #[error("protocol error on the replica session: {0}")]
    Protocol(String),
    /// The replica answered with an error.
    #[error("replica reported {0}")]
    Server(Box<ServerError>),
    /// A query was asked for while pipelined requests were still unanswered.
    #[error("the replica session still has requests in flight")]
    Busy,
}

impl WriterError {
    /// The SQLSTATE code if the server reported the error.
    pub fn code(&self) -> Option<&str> {
        match self {
            WriterError::Server(e) => Some(&e.code),
            _ => None,
        }
    }
}

impl From<SourceError> for WriterError {
    fn from(e: SourceError) -> WriterError {
        match e {
            // The connection code names the primary in its messages; keep the server's own words.
            SourceError::Server(e) => WriterError::Server(Box::new(e)),
            SourceError::Closed => WriterError::Closed,
            other => WriterError::Connect(other.to_string()),
        }
    }
}
