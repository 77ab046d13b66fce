//! The writer session's protocol state, free of sockets.
//!
//! Place in the data flow: between the applier, which asks for statements to
//! be sent, and the socket ([`super::conn`]). A [`Pipeline`] encodes messages
//! into its output buffer and remembers, in order, which answer each one
//! expects; bytes read from the socket go into its input buffer and come back
//! as [`Event`]s: one per executed statement, plus the rows it returned and
//! one per ReadyForQuery. Each statement carries a caller's tag `T` that comes
//! back with its event.
//!
//! Protocol rules this follows (PostgreSQL docs, "Extended Query"):
//! - after an ErrorResponse the server ignores every message up to the next
//!   Sync: the first statement of that stretch is reported [`Event::Failed`],
//!   the others [`Event::Skipped`], and ReadyForQuery comes after the Sync;
//! - the server flushes its answers at Sync, Flush, or when its own output
//!   buffer fills: an answer whose request has neither behind it may never
//!   come, hence [`Pipeline::needs_flush`] / [`Pipeline::flush`];
//! - NoticeResponse, ParameterStatus and NotificationResponse may come at any
//!   time and answer nothing.
//!
//! Nothing here panics on what the server sends: a message that does not fit
//! what was sent is a [`WriterError::Protocol`].

use std::collections::VecDeque;

use bytes::{BufMut, BytesMut};
use postgres_protocol::message::backend::{CommandCompleteBody, DataRowBody, Message};
use postgres_protocol::message::frontend::{self, BindError};
use postgres_protocol::IsNull;

use super::WriterError;
use crate::source::wire::server_error;
use crate::source::ServerError;

/// What the server said about one request, in the order the requests were sent.
#[derive(Debug)]
pub enum Event<T> {
    /// A statement ran to completion.
    Done {
        /// The statement's tag (`None` for the session's own queries).
        tag: Option<T>,
        /// Rows affected or returned, from the command tag (0 when it has no count).
        rows: u64,
        /// The command tag was `ROLLBACK`: what a COMMIT answers in a failed transaction.
        rolled_back: bool,
    },
    /// A row the running statement returned, in text format.
    Row(DataRowBody),
    /// The server reported an error for statement `tag` (`None`: for no
    /// statement in particular, e.g. a failed Close or an error at Sync).
    Failed {
        /// The statement whose Parse, Bind or Execute failed.
        tag: Option<T>,
        /// The server's error.
        error: ServerError,
    },
    /// A statement the server did not run: an earlier request before the
    /// same Sync failed.
    Skipped(Option<T>),
    /// A Sync (or simple query) was answered; the session's transaction state.
    Ready(TxnStatus),
}

/// The transaction state a ReadyForQuery reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnStatus {
    /// Not in a transaction block.
    Idle,
    /// In a transaction block.
    InTransaction,
    /// In a failed transaction block: everything but ROLLBACK fails until it ends.
    Failed,
}

/// An answer still to come, one per request that gets one.
enum Expect<T> {
    ParseComplete,
    BindComplete,
    CloseComplete,
    /// Execute: DataRows, then CommandComplete or EmptyQueryResponse.
    Execute(Option<T>),
    /// A simple Query: any results, then the ReadyForQuery of the following [`Expect::Ready`].
    Simple(Option<T>),
    /// ReadyForQuery, answering a Sync or a simple Query.
    Ready,
    /// No request: answered as soon as everything before it is (keeps the
    /// caller's bookkeeping in order with the requests around it).
    Marker(T),
}

impl<T> Expect<T> {
    fn name(&self) -> &'static str {
        match self {
            Expect::ParseComplete => "ParseComplete",
            Expect::BindComplete => "BindComplete",
            Expect::CloseComplete => "CloseComplete",
            Expect::Execute(_) => "the result of Execute",
            Expect::Simple(_) => "the result of a simple query",
            Expect::Ready => "ReadyForQuery",
            Expect::Marker(_) => "nothing",
        }
    }
}

/// After an ErrorResponse in an extended-protocol stretch: skipping to its Sync.
enum Skip {
    No,
    /// The error, not yet attached to a statement.
    Pending(ServerError),
    /// Reported already; later statements are skipped.
    Reported,
}

/// Requests encoded and answers expected on one writer session (see module docs).
pub struct Pipeline<T> {
    out: BytesMut,
    input: BytesMut,
    expected: VecDeque<Expect<T>>,
    /// A message read and not yet consumed: the ReadyForQuery that ends a
    /// simple query is looked at twice (for the query, then for the Ready).
    peeked: Option<Message>,
    skip: Skip,
    simple_error: Option<ServerError>,
    simple_rows: u64,
    /// Expectations pushed and answered so far, and how many of the pushed
    /// ones have a Sync or Flush behind them (their answers will be flushed).
    pushed: u64,
    popped: u64,
    covered: u64,
    /// Extended-protocol messages were sent since the last Sync.
    group_open: bool,
}

impl<T> Default for Pipeline<T> {
    fn default() -> Self {
        Pipeline::new(BytesMut::new())
    }
}

impl<T> Pipeline<T> {
    /// A pipeline whose input already holds `input` (bytes the server sent
    /// right after startup).
    pub fn new(input: BytesMut) -> Pipeline<T> {
        Pipeline {
            out: BytesMut::with_capacity(64 * 1024),
            input,
            expected: VecDeque::new(),
            peeked: None,
            skip: Skip::No,
            simple_error: None,
            simple_rows: 0,
            pushed: 0,
            popped: 0,
            covered: 0,
            group_open: false,
        }
    }

    // --- requests ---------------------------------------------------------------------------

    /// Parse: prepares `sql` as the named statement `name` (parameter types
    /// left to the server, as with untyped text parameters).
    pub fn parse(&mut self, name: &str, sql: &str) -> Result<(), WriterError> {
        let mark = self.out.len();
        if let Err(e) = frontend::parse(name, sql, std::iter::empty(), &mut self.out) {
            self.out.truncate(mark);
            return Err(WriterError::Protocol(format!("cannot encode Parse of `{sql}`: {e}")));
        }
        self.group_open = true;
        self.expect(Expect::ParseComplete);
        Ok(())
    }

    /// Bind + Execute of the prepared statement `statement` with parameters
    /// in text format (`None` is NULL), into the unnamed portal, all rows.
    pub fn bind_execute<'a, I>(&mut self, statement: &str, params: I, tag: Option<T>) -> Result<(), WriterError>
    where
        I: IntoIterator<Item = Option<&'a [u8]>>,
    {
        let mark = self.out.len();
        let text = |p: Option<&[u8]>, buf: &mut BytesMut| -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
            match p {
                None => Ok(IsNull::Yes),
                Some(v) => {
                    buf.put_slice(v);
                    Ok(IsNull::No)
                }
            }
        };
        // No format codes: every parameter and result column is text.
        let bound = frontend::bind("", statement, [], params, text, [], &mut self.out);
        if let Err(e) = bound {
            self.out.truncate(mark);
            let why = match e {
                BindError::Conversion(e) => e.to_string(),
                BindError::Serialization(e) => e.to_string(),
            };
            return Err(WriterError::Protocol(format!("cannot encode Bind of {statement}: {why}")));
        }
        if let Err(e) = frontend::execute("", 0, &mut self.out) {
            self.out.truncate(mark);
            return Err(WriterError::Protocol(format!("cannot encode Execute: {e}")));
        }
        self.group_open = true;
        self.expect(Expect::BindComplete);
        self.expect(Expect::Execute(tag));
        Ok(())
    }

    /// Close of the named statement `name`.
    pub fn close_statement(&mut self, name: &str) -> Result<(), WriterError> {
        let mark = self.out.len();
        if let Err(e) = frontend::close(b'S', name, &mut self.out) {
            self.out.truncate(mark);
            return Err(WriterError::Protocol(format!("cannot encode Close: {e}")));
        }
        self.group_open = true;
        self.expect(Expect::CloseComplete);
        Ok(())
    }

    /// Sync: ends the stretch an error would skip; answered by ReadyForQuery.
    pub fn sync(&mut self) {
        frontend::sync(&mut self.out);
        self.group_open = false;
        self.expect(Expect::Ready);
        self.covered = self.pushed;
    }

    /// Flush: asks the server to send every answer it holds.
    pub fn flush(&mut self) {
        frontend::flush(&mut self.out);
        self.covered = self.pushed;
    }

    /// A simple Query (may hold several statements; no parameters). A Sync
    /// goes first if extended-protocol messages are open, since after an
    /// error the server would otherwise drop the query unanswered.
    pub fn query(&mut self, sql: &str, tag: Option<T>) -> Result<(), WriterError> {
        if self.group_open {
            self.sync();
        }
        let mark = self.out.len();
        if let Err(e) = frontend::query(sql, &mut self.out) {
            self.out.truncate(mark);
            return Err(WriterError::Protocol(format!("cannot encode Query: {e}")));
        }
        self.expect(Expect::Simple(tag));
        self.expect(Expect::Ready);
        self.covered = self.pushed;
        Ok(())
    }

    /// Queues `tag` to come back as `Done` once everything before it is answered.
    pub fn marker(&mut self, tag: T) {
        self.expect(Expect::Marker(tag));
    }

    fn expect(&mut self, e: Expect<T>) {
        self.expected.push_back(e);
        self.pushed += 1;
    }

    // --- state ------------------------------------------------------------------------------

    /// Answers still to come (requests and markers).
    pub fn outstanding(&self) -> usize {
        self.expected.len()
    }

    /// Whether extended-protocol messages were sent since the last Sync.
    pub fn group_open(&self) -> bool {
        self.group_open
    }

    /// Whether the oldest answer still to come has no Sync or Flush behind
    /// it, so that waiting for it needs a [`Self::flush`] first.
    pub fn needs_flush(&self) -> bool {
        match self.expected.front() {
            None | Some(Expect::Marker(_)) => false,
            Some(_) => self.popped >= self.covered,
        }
    }

    /// Bytes to write to the server, and the buffer for bytes read from it.
    pub fn buffers(&mut self) -> (&mut BytesMut, &mut BytesMut) {
        (&mut self.out, &mut self.input)
    }

    /// Bytes not yet written.
    pub fn unwritten(&self) -> usize {
        self.out.len()
    }

    // --- answers ----------------------------------------------------------------------------

    fn pop(&mut self) -> Option<Expect<T>> {
        let e = self.expected.pop_front();
        if e.is_some() {
            self.popped += 1;
        }
        e
    }

    /// The next event from what has been read, or `None` if more bytes are
    /// needed (or nothing is expected).
    pub fn next_event(&mut self) -> Result<Option<Event<T>>, WriterError> {
        loop {
            if let Some(event) = self.answer_without_message() {
                return Ok(Some(event));
            }
            let msg = match self.peeked.take() {
                Some(m) => m,
                None => match Message::parse(&mut self.input) {
                    Ok(Some(m)) => m,
                    Ok(None) => return Ok(None),
                    Err(e) => return Err(WriterError::Protocol(format!("malformed message from the replica: {e}"))),
                },
            };
            if let Some(event) = self.consume(msg)? {
                return Ok(Some(event));
            }
        }
    }

    /// Markers at the front, and statements skipped after an error.
    fn answer_without_message(&mut self) -> Option<Event<T>> {
        if let Some(Expect::Marker(_)) = self.expected.front() {
            if let Some(Expect::Marker(tag)) = self.pop() {
                return Some(Event::Done { tag: Some(tag), rows: 0, rolled_back: false });
            }
        }
        if matches!(self.skip, Skip::No) {
            return None;
        }
        loop {
            match self.expected.front() {
                Some(Expect::ParseComplete | Expect::BindComplete | Expect::CloseComplete) => {
                    self.pop();
                }
                Some(Expect::Execute(_)) => {
                    let Some(Expect::Execute(tag)) = self.pop() else { return None };
                    return Some(match std::mem::replace(&mut self.skip, Skip::Reported) {
                        Skip::Pending(error) => Event::Failed { tag, error },
                        Skip::No | Skip::Reported => Event::Skipped(tag),
                    });
                }
                // The stretch ends at its Sync (a simple query or marker
                // always comes after one): report an error not tied to a
                // statement, then wait for the ReadyForQuery.
                _ => {
                    return match std::mem::replace(&mut self.skip, Skip::Reported) {
                        Skip::Pending(error) => Some(Event::Failed { tag: None, error }),
                        Skip::No | Skip::Reported => None,
                    };
                }
            }
        }
    }

    /// Matches one message against the oldest expected answer.
    fn consume(&mut self, msg: Message) -> Result<Option<Event<T>>, WriterError> {
        match msg {
            Message::NoticeResponse(body) => {
                let notice = server_error(body.fields());
                tracing::debug!(%notice, "replica notice");
                return Ok(None);
            }
            Message::ParameterStatus(_) | Message::NotificationResponse(_) => return Ok(None),
            _ => {}
        }
        let Some(front) = self.expected.front() else {
            return Err(match msg {
                // E.g. FATAL when the server shuts down.
                Message::ErrorResponse(body) => WriterError::Server(Box::new(server_error(body.fields()))),
                other => WriterError::Protocol(format!("unexpected {} with nothing outstanding", message_name(&other))),
            });
        };
        match (front, msg) {
            (Expect::ParseComplete, Message::ParseComplete)
            | (Expect::BindComplete, Message::BindComplete)
            | (Expect::CloseComplete, Message::CloseComplete) => {
                self.pop();
                Ok(None)
            }
            (Expect::Execute(_) | Expect::Simple(_), Message::DataRow(row)) => Ok(Some(Event::Row(row))),
            (Expect::Execute(_), Message::CommandComplete(body)) => {
                let (rows, rolled_back) = command_outcome(&body)?;
                let tag = match self.pop() {
                    Some(Expect::Execute(tag)) => tag,
                    _ => None,
                };
                Ok(Some(Event::Done { tag, rows, rolled_back }))
            }
            (Expect::Execute(_), Message::EmptyQueryResponse) => {
                let tag = match self.pop() {
                    Some(Expect::Execute(tag)) => tag,
                    _ => None,
                };
                Ok(Some(Event::Done { tag, rows: 0, rolled_back: false }))
            }
            (Expect::Simple(_), Message::RowDescription(_) | Message::EmptyQueryResponse) => Ok(None),
            (Expect::Simple(_), Message::CommandComplete(body)) => {
                self.simple_rows += command_outcome(&body)?.0;
                Ok(None)
            }
            (Expect::Simple(_), Message::ErrorResponse(body)) => {
                self.simple_error = Some(server_error(body.fields()));
                Ok(None)
            }
            (Expect::Simple(_), msg @ Message::ReadyForQuery(_)) => {
                // The query is done; the same message then answers its Ready.
                self.peeked = Some(msg);
                let tag = match self.pop() {
                    Some(Expect::Simple(tag)) => tag,
                    _ => None,
                };
                let rows = std::mem::take(&mut self.simple_rows);
                Ok(Some(match self.simple_error.take() {
                    Some(error) => Event::Failed { tag, error },
                    None => Event::Done { tag, rows, rolled_back: false },
                }))
            }
            (Expect::Ready, Message::ReadyForQuery(body)) => {
                self.pop();
                self.skip = Skip::No;
                let status = match body.status() {
                    b'I' => TxnStatus::Idle,
                    b'T' => TxnStatus::InTransaction,
                    b'E' => TxnStatus::Failed,
                    other => {
                        return Err(WriterError::Protocol(format!("unknown transaction status {:?}", other as char)))
                    }
                };
                Ok(Some(Event::Ready(status)))
            }
            // An error raised by the Sync itself (committing an implicit transaction).
            (Expect::Ready, Message::ErrorResponse(body)) => {
                Ok(Some(Event::Failed { tag: None, error: server_error(body.fields()) }))
            }
            (
                Expect::ParseComplete | Expect::BindComplete | Expect::CloseComplete | Expect::Execute(_),
                Message::ErrorResponse(body),
            ) => {
                self.skip = Skip::Pending(server_error(body.fields()));
                Ok(None)
            }
            (front, other) => Err(WriterError::Protocol(format!(
                "unexpected {} from the replica while waiting for {}",
                message_name(&other),
                front.name()
            ))),
        }
    }
}

/// Rows from a command tag (`INSERT 0 5`, `UPDATE 3`, `SELECT 1`; 0 if it
/// has no count), and whether it is `ROLLBACK`.
fn command_outcome(body: &CommandCompleteBody) -> Result<(u64, bool), WriterError> {
    let tag = body.tag().map_err(|e| WriterError::Protocol(format!("malformed command tag: {e}")))?;
    let rows = tag.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0);
    Ok((rows, tag == "ROLLBACK"))
}

fn message_name(msg: &Message) -> &'static str {
    match msg {
        Message::BackendKeyData(_) => "BackendKeyData",
        Message::BindComplete => "BindComplete",
        Message::CloseComplete => "CloseComplete",
        Message::CommandComplete(_) => "CommandComplete",
        Message::CopyData(_) => "CopyData",
        Message::CopyDone => "CopyDone",
        Message::CopyInResponse(_) => "CopyInResponse",
        Message::CopyOutResponse(_) => "CopyOutResponse",
        Message::DataRow(_) => "DataRow",
        Message::EmptyQueryResponse => "EmptyQueryResponse",
        Message::ErrorResponse(_) => "ErrorResponse",
        Message::NoData => "NoData",
        Message::NoticeResponse(_) => "NoticeResponse",
        Message::NotificationResponse(_) => "NotificationResponse",
        Message::ParameterDescription(_) => "ParameterDescription",
        Message::ParameterStatus(_) => "ParameterStatus",
        Message::ParseComplete => "ParseComplete",
        Message::PortalSuspended => "PortalSuspended",
        Message::ReadyForQuery(_) => "ReadyForQuery",
        Message::RowDescription(_) => "RowDescription",
        _ => "an unexpected message type",
    }
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
