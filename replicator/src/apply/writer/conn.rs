//! The writer session's socket: connecting, writing what the [`Pipeline`]
//! encoded, reading until the next [`Event`].
//!
//! Place in the data flow: the last hop from the applier to the replica.
//! Writing and reading share one poll ([`WriterSession::next_event`],
//! [`WriterSession::write_out`]): while a large batch is being written, the
//! answers to earlier ones are read into the input buffer, so neither side
//! can block the other with full socket buffers. Everything waited on lives
//! in the session, so the waits are cancel-safe.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;

use bytes::Buf;
use postgres_protocol::message::backend::DataRowBody;
use tokio_postgres::Config;

use super::protocol::{Event, Pipeline};
use super::WriterError;
use crate::apply::session::WRITER_APPLICATION_NAME;
use crate::source::conn::{Io, ReplicationConnection};

/// Bytes read from the socket at a time, at least.
const READ_CHUNK: usize = 16 * 1024;

/// One writer session: a socket and the protocol state of what is in flight on it.
pub struct WriterSession<T> {
    io: Box<dyn Io>,
    pipe: Pipeline<T>,
    closed: bool,
}

impl<T> WriterSession<T> {
    /// Opens a writer session on `database` of the server `replica` names:
    /// `default_transaction_read_only` off and `session_replication_role =
    /// replica`, as [`crate::apply::session::connect_writer`] (superuser login needed).
    pub async fn connect(replica: &Config, database: &str) -> Result<WriterSession<T>, WriterError> {
        let mut options = replica.get_options().map(str::to_owned).unwrap_or_default();
        if !options.is_empty() {
            options.push(' ');
        }
        options.push_str("-c default_transaction_read_only=off -c session_replication_role=replica");
        let params = [
            ("database", database),
            ("application_name", WRITER_APPLICATION_NAME),
            ("client_encoding", "UTF8"),
            ("options", options.as_str()),
        ];
        let conn = ReplicationConnection::connect_with_params(replica, &params).await?;
        let (io, rest) = conn.into_parts();
        Ok(WriterSession::from_io(io, rest))
    }

    /// A session on a socket whose startup is done; `input` holds what the
    /// server sent after its ReadyForQuery.
    pub fn from_io(io: Box<dyn Io>, input: bytes::BytesMut) -> WriterSession<T> {
        WriterSession { io, pipe: Pipeline::new(input), closed: false }
    }

    /// The protocol state, for encoding requests (nothing is written until
    /// [`Self::write_out`] or [`Self::next_event`]).
    pub fn pipeline(&mut self) -> &mut Pipeline<T> {
        &mut self.pipe
    }

    /// Whether the connection failed or was closed; the session is then useless.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Writes everything encoded so far (reading answers into the input
    /// buffer meanwhile).
    pub async fn write_out(&mut self) -> Result<(), WriterError> {
        while self.pipe.unwritten() > 0 {
            self.io_step().await?;
        }
        Ok(())
    }

    /// The next event, writing what is encoded and reading as needed;
    /// `None` when nothing is outstanding. Cancel-safe.
    pub async fn next_event(&mut self) -> Result<Option<Event<T>>, WriterError> {
        loop {
            if let Some(event) = self.pipe.next_event().inspect_err(|_| self.closed = true)? {
                return Ok(Some(event));
            }
            if self.pipe.outstanding() == 0 {
                return Ok(None);
            }
            if self.pipe.needs_flush() {
                self.pipe.flush();
            }
            self.io_step().await?;
        }
    }

    /// Runs `sql` with text parameters (`None` is NULL) as the unnamed
    /// statement, waits, and returns the rows. Only with nothing in flight.
    pub async fn query(&mut self, sql: &str, params: &[Option<&str>]) -> Result<Vec<DataRowBody>, WriterError> {
        if self.pipe.outstanding() > 0 {
            return Err(WriterError::Busy);
        }
        self.pipe.parse("", sql)?;
        self.pipe.bind_execute("", params.iter().map(|p| p.map(str::as_bytes)), None)?;
        self.pipe.sync();
        self.finish_own().await
    }

    /// Runs `sql` (one or more statements, no parameters) with the simple
    /// query protocol and waits. Only with nothing in flight.
    pub async fn simple_query(&mut self, sql: &str) -> Result<(), WriterError> {
        if self.pipe.outstanding() > 0 {
            return Err(WriterError::Busy);
        }
        self.pipe.query(sql, None)?;
        self.finish_own().await.map(drop)
    }

    /// Collects the answers of a query of the session's own up to its
    /// ReadyForQuery; the first error wins.
    async fn finish_own(&mut self) -> Result<Vec<DataRowBody>, WriterError> {
        let mut rows = Vec::new();
        let mut failed = None;
        while let Some(event) = self.next_event().await? {
            match event {
                Event::Row(row) => rows.push(row),
                Event::Failed { error, .. } => failed = failed.or(Some(error)),
                Event::Done { .. } | Event::Skipped(_) | Event::Ready(_) => {}
            }
        }
        match failed {
            Some(e) => Err(WriterError::Server(Box::new(e))),
            None => Ok(rows),
        }
    }

    /// Writes some of the output and/or reads some input; returns once
    /// either made progress.
    async fn io_step(&mut self) -> Result<(), WriterError> {
        if self.closed {
            return Err(WriterError::Closed);
        }
        let io = &mut self.io;
        let (out, input) = self.pipe.buffers();
        let result = poll_fn(|cx| {
            let mut progress = false;
            while !out.is_empty() {
                match Pin::new(&mut **io).poll_write(cx, out) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(WriterError::Closed)),
                    Poll::Ready(Ok(n)) => {
                        out.advance(n);
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Err(WriterError::Io { context: "writing to the replica", source: e }))
                    }
                    Poll::Pending => break,
                }
            }
            input.reserve(READ_CHUNK);
            match tokio_util::io::poll_read_buf(Pin::new(&mut **io), cx, input) {
                Poll::Ready(Ok(0)) => Poll::Ready(Err(WriterError::Closed)),
                Poll::Ready(Ok(_)) => Poll::Ready(Ok(())),
                Poll::Ready(Err(e)) => {
                    Poll::Ready(Err(WriterError::Io { context: "reading from the replica", source: e }))
                }
                Poll::Pending if progress => Poll::Ready(Ok(())),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        if result.is_err() {
            self.closed = true;
        }
        result
    }
}

/// The text of column `i` of a row (`None` for NULL or a missing column).
pub fn text_column(row: &DataRowBody, i: usize) -> Result<Option<String>, WriterError> {
    use fallible_iterator::FallibleIterator;
    let bad = |e: std::io::Error| WriterError::Protocol(format!("malformed DataRow: {e}"));
    let Some(range) = row.ranges().nth(i).map_err(bad)?.flatten() else {
        return Ok(None);
    };
    let bytes = row.buffer().get(range).ok_or_else(|| WriterError::Protocol("DataRow value out of bounds".into()))?;
    String::from_utf8(bytes.to_vec())
        .map(Some)
        .map_err(|_| WriterError::Protocol("non-UTF-8 value in a result row".into()))
}
