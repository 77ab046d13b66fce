//! Matching server responses to the client requests that caused them.
//!
//! The extended query protocol lets a client pipeline many messages before a
//! `Sync`; the server answers each in order and, after an error, skips
//! everything up to the next `Sync`. Transaction pooling needs to answer some
//! requests itself (a `ParseComplete` for a statement that already exists on
//! the server connection, a `CloseComplete` for a statement it keeps for
//! reuse) and to hide the responses to requests it injected (a `Parse` that
//! prepares a client's statement on a new server connection, the replay of
//! `SET`s). [`Pipeline`] is the queue of expected responses that makes those
//! answers land in the right place of the stream. It is pure state, with no
//! sockets, so it is tested on its own.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// A request sent to the server (or answered by the proxy) awaiting its response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// `Parse`; `hash` names a Tandem-managed statement, `swallow` hides the
    /// `ParseComplete` (the proxy injected this Parse).
    Parse {
        /// Statement hash, for Tandem-named statements.
        hash: Option<u64>,
        /// Whether the client must not see the ParseComplete.
        swallow: bool,
    },
    /// `Bind` → `BindComplete`.
    Bind,
    /// `Describe` → (`ParameterDescription`) + `RowDescription`/`NoData`.
    Describe,
    /// `Execute` → rows + `CommandComplete`/`EmptyQueryResponse`/`PortalSuspended`.
    Execute,
    /// `Close` → `CloseComplete`.
    Close,
    /// A `Close` the proxy injected (to parse a shared statement afresh): its
    /// `CloseComplete` is hidden.
    HiddenClose,
    /// `Sync` → `ReadyForQuery`.
    Sync,
    /// A `Sync` the proxy injected after Parses it injected ahead of a simple Query: its
    /// `ReadyForQuery` is hidden, and so is the error of such a Parse (the server then
    /// skips to this Sync and runs the Query, which reports the missing statement).
    HiddenSync,
    /// Simple `Query` → everything up to `ReadyForQuery`; `swallow` hides it all.
    Query {
        /// Whether the client must not see any of it (injected SET replay).
        swallow: bool,
    },
    /// A simple `Query` the proxy injected to give the server session the client's startup
    /// values again after a client's RESET: hidden up to its `ReadyForQuery`, except its
    /// ParameterStatus messages (the client saw the RESET's report of the server's values).
    Restore,
    /// `FunctionCall` → `FunctionCallResponse` + `ReadyForQuery`.
    FunctionCall,
    /// A response the proxy gives itself once everything before it is answered.
    Synthetic(Bytes),
    /// The client's `CopyDone`/`CopyFail`: no response of its own, but it marks where the
    /// server leaves COPY IN mode (Syncs before it are ignored by the server).
    CopyEnd,
    /// Follows a client's named `Parse` (sent or answered by the proxy): no response of its
    /// own. If an error makes the server skip past it, the statement was never created and
    /// the client's definition with this id is reported in [`Notes::undefined`], so that
    /// the name gives 26000 afterwards as it does in PostgreSQL.
    Defined(u64),
    /// A client's `Parse` of a name it already defined, sent to the server under the existing
    /// statement's server name, so that the server refuses it exactly as PostgreSQL refuses
    /// the client's (a syntax error or 25P02 first, else 42P05 duplicate_prepared_statement)
    /// and skips to the next Sync. The server's 42P05 names the Tandem statement; these bytes
    /// (the same error naming the client's statement) replace it, see [`Notes::duplicate`].
    Redefine(Bytes),
}

/// An [`Expect`] as the queue keeps it: small and `Copy`, with the bytes of `Synthetic` and
/// `Redefine` kept in order in [`Pipeline::payloads`]. Every request of every unit passes
/// through the queue; a 40-byte enum with owned bytes in it cost a move and a drop check each
/// time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Parse { hash: Option<u64>, swallow: bool },
    Bind,
    Describe,
    Execute,
    Close,
    HiddenClose,
    Sync,
    HiddenSync,
    Query { swallow: bool },
    Restore,
    FunctionCall,
    Synthetic,
    CopyEnd,
    Defined(u64),
    Redefine,
}

impl Slot {
    /// The slot for `e`, and the bytes it leaves in [`Pipeline::payloads`].
    fn of(e: Expect) -> (Slot, Option<Bytes>) {
        let slot = match e {
            Expect::Parse { hash, swallow } => Slot::Parse { hash, swallow },
            Expect::Bind => Slot::Bind,
            Expect::Describe => Slot::Describe,
            Expect::Execute => Slot::Execute,
            Expect::Close => Slot::Close,
            Expect::HiddenClose => Slot::HiddenClose,
            Expect::Sync => Slot::Sync,
            Expect::HiddenSync => Slot::HiddenSync,
            Expect::Query { swallow } => Slot::Query { swallow },
            Expect::Restore => Slot::Restore,
            Expect::FunctionCall => Slot::FunctionCall,
            Expect::Synthetic(bytes) => return (Slot::Synthetic, Some(bytes)),
            Expect::CopyEnd => Slot::CopyEnd,
            Expect::Defined(id) => Slot::Defined(id),
            Expect::Redefine(bytes) => return (Slot::Redefine, Some(bytes)),
        };
        (slot, None)
    }

    /// An extended-protocol request, which leaves the server inside a
    /// message sequence until the next Sync.
    fn is_extended(self) -> bool {
        matches!(
            self,
            Slot::Parse { .. }
                | Slot::Redefine
                | Slot::Bind
                | Slot::Describe
                | Slot::Execute
                | Slot::Close
                | Slot::HiddenClose
        )
    }

    /// Whether its bytes are in [`Pipeline::payloads`].
    fn has_payload(self) -> bool {
        matches!(self, Slot::Synthetic | Slot::Redefine)
    }
}

/// Where the server is in a COPY FROM STDIN, as far as its answers tell.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Copy {
    /// Not copying in.
    #[default]
    No,
    /// The server sent CopyInResponse; `ended` once the client's CopyDone/CopyFail is queued.
    In {
        /// The client has finished sending data.
        ended: bool,
    },
}

/// What to do with one server message. Small and `Copy`: it is made for every message
/// that is not a plain DataRow; the rare notes come separately ([`Pipeline::take_notes`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Pass the message on to the client.
    pub forward: bool,
    /// The message was a ReadyForQuery answering a client's Sync/Query/FunctionCall.
    pub client_rfq: bool,
    /// The message was an ErrorResponse the client sees.
    pub client_error: bool,
    /// [`Pipeline::take_notes`] has something to report; take it before acting on the message.
    pub notes: bool,
}

/// What the server's answers revealed beyond the message at hand (after errors only).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Notes {
    /// Tandem statements that were not created after all (the server skipped
    /// or failed their Parse); remove them from the connection's set.
    pub unprepared: Vec<u64>,
    /// Client statement definitions (ids of [`Expect::Defined`]) the server did not make:
    /// their Parse failed or was skipped after an earlier error.
    pub undefined: Vec<u64>,
    /// This ErrorResponse answers an [`Expect::Redefine`]: if it is the server's 42P05,
    /// send these bytes instead.
    pub duplicate: Option<Bytes>,
}

/// The queue of responses expected from one server connection.
///
/// Three server behaviours need more than a queue: after extended-protocol
/// messages the server stays inside a message sequence (an implicit
/// transaction) until a Sync, even when every response has arrived; after an
/// error in the extended protocol it discards every message up to the next
/// Sync, including ones the client sends later; and in COPY IN mode it ignores
/// Sync. Until the sequence is closed the connection is not idle: handing it to
/// another client would mix their messages into this sequence.
#[derive(Debug, Default)]
pub struct Pipeline {
    queue: VecDeque<Slot>,
    /// The bytes of the queue's `Synthetic` and `Redefine` slots, in queue order.
    payloads: VecDeque<Bytes>,
    copy: Copy,
    /// Extended-protocol messages went to the server and no ReadyForQuery has
    /// closed them yet.
    open: bool,
    /// An extended-protocol error arrived and the server now ignores every
    /// message up to the next Sync, including ones the client sends later.
    skipping: bool,
    /// Reported with the next server message (see [`Outcome::notes`]): statements and
    /// definitions whose Parse failed, or was pushed while `skipping` (the server never
    /// creates them), and the replacement for a redefinition's error.
    notes: Notes,
}

impl Pipeline {
    /// Nothing is outstanding: every request has been answered and the server
    /// is at a message-sequence boundary (its last answer was a ReadyForQuery).
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && !self.open && !self.skipping
    }

    /// No response is outstanding, though an extended sequence may still be
    /// open (see [`Pipeline::is_idle`]).
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The server is discarding messages up to the next Sync after an error: whatever the
    /// client sends before its Sync gets no answer and has no effect.
    pub fn is_skipping(&self) -> bool {
        self.skipping
    }

    /// Whether a DataRow may go to the client without [`Pipeline::on_server_message`]: it
    /// answers nothing by itself, so only a swallowed query (whose rows the client must not
    /// see) or notes still to report in an [`Outcome`] need that call.
    pub fn passes_data_rows(&self) -> bool {
        !matches!(self.queue.front(), Some(Slot::Query { swallow: true } | Slot::Restore)) && !self.has_notes()
    }

    /// Requests outstanding.
    pub fn outstanding(&self) -> usize {
        self.queue.len()
    }

    /// Forgets everything (the server connection is gone).
    pub fn clear(&mut self) {
        self.queue.clear();
        self.payloads.clear();
        self.copy = Copy::No;
        self.open = false;
        self.skipping = false;
        self.notes = Notes::default();
    }

    /// Records a request. A `Synthetic` response with nothing ahead of it is
    /// written to `out` at once. While the server skips to the next Sync after
    /// an error, requests other than Sync get no answer and are not recorded
    /// (a synthetic answer is dropped, as the server would drop the request).
    pub fn push(&mut self, e: Expect, out: &mut BytesMut) {
        if self.skipping {
            match e {
                Expect::Sync | Expect::HiddenSync => self.skipping = false,
                Expect::Parse { hash: Some(h), .. } => return self.notes.unprepared.push(h),
                Expect::Defined(id) => return self.notes.undefined.push(id),
                _ => return,
            }
        }
        let (slot, payload) = Slot::of(e);
        if slot.is_extended() {
            self.open = true;
        }
        match slot {
            Slot::Sync if self.copy == (Copy::In { ended: false }) => return,
            Slot::CopyEnd => {
                if self.copy == (Copy::In { ended: false }) {
                    self.copy = Copy::In { ended: true };
                }
                if self.queue.is_empty() {
                    return;
                }
            }
            Slot::Synthetic if self.queue.is_empty() => {
                if let Some(bytes) = payload {
                    out.extend_from_slice(&bytes);
                }
                return;
            }
            // Everything before it is answered: the definition stands.
            Slot::Defined(_) if self.queue.is_empty() => return,
            _ => {}
        }
        self.queue.push_back(slot);
        if let Some(bytes) = payload {
            self.payloads.push_back(bytes);
        }
    }

    /// The server entered COPY IN mode: Syncs the client sent before its CopyDone/CopyFail
    /// will be ignored by the server, so they expect nothing.
    fn copy_in_started(&mut self) {
        let end = self.queue.iter().position(|e| *e == Slot::CopyEnd);
        self.copy = Copy::In { ended: end.is_some() };
        let mut i = 0;
        let mut kept = VecDeque::with_capacity(self.queue.len());
        while let Some(e) = self.queue.pop_front() {
            let before_end = end.is_none_or(|end| i < end);
            if !(before_end && e == Slot::Sync) {
                kept.push_back(e);
            }
            i += 1;
        }
        self.queue = kept;
    }

    /// Handles one server message with type `tag`; synthetic responses that
    /// become due are appended to `out` after the caller forwards the message.
    pub fn on_server_message(&mut self, tag: u8, due: &mut BytesMut) -> Outcome {
        let mut out = self.message_outcome(tag, due);
        out.notes = self.has_notes();
        out
    }

    /// Whether [`Pipeline::take_notes`] has anything.
    fn has_notes(&self) -> bool {
        !self.notes.unprepared.is_empty() || !self.notes.undefined.is_empty() || self.notes.duplicate.is_some()
    }

    /// What the answers so far revealed (see [`Outcome::notes`]); empties the record.
    pub fn take_notes(&mut self) -> Notes {
        std::mem::take(&mut self.notes)
    }

    fn message_outcome(&mut self, tag: u8, due: &mut BytesMut) -> Outcome {
        let mut out = Outcome { forward: true, ..Outcome::default() };
        if let Some(hidden @ (Slot::Query { swallow: true } | Slot::Restore | Slot::HiddenSync)) = self.queue.front() {
            out.forward = tag == b'S' && *hidden == Slot::Restore;
            if tag == b'Z' {
                self.pop(due);
                // A Query or Sync ends an extended sequence on the server.
                self.open = self.queue.iter().any(|s| s.is_extended());
            }
            return out;
        }
        if tag == b'E' && self.injected_before_hidden_sync() {
            // See `Expect::HiddenSync`: the server skips to it.
            while self.queue.front() != Some(&Slot::HiddenSync) {
                if let Some(Slot::Parse { hash: Some(h), .. }) = self.pop_slot() {
                    self.notes.unprepared.push(h);
                }
            }
            out.forward = false;
            return out;
        }
        match tag {
            b'1' => match self.queue.front() {
                Some(Slot::Parse { swallow, .. }) => {
                    out.forward = !swallow;
                    self.pop(due);
                }
                Some(Slot::Redefine) => self.pop(due),
                _ => {}
            },
            b'2' => self.pop_if(|e| matches!(e, Slot::Bind), due),
            b'3' => {
                out.forward = self.queue.front() != Some(&Slot::HiddenClose);
                self.pop_if(|e| matches!(e, Slot::Close | Slot::HiddenClose), due)
            }
            b'T' | b'n' => self.pop_if(|e| matches!(e, Slot::Describe), due),
            b'G' => self.copy_in_started(),
            b'C' | b'I' | b's' => {
                if tag == b'C' {
                    self.copy = Copy::No;
                }
                self.pop_if(|e| matches!(e, Slot::Execute), due)
            }
            b'E' => {
                out.client_error = true;
                self.copy = Copy::No;
                match self.queue.front() {
                    Some(Slot::Query { .. }) | Some(Slot::FunctionCall) => {}
                    _ => {
                        // The server now skips everything up to the next Sync,
                        // simple Query and FunctionCall included (PostgreSQL's
                        // ignore_till_sync: they get no answer at all). An error
                        // with nothing outstanding (a FATAL before the server
                        // closes) does not start skipping.
                        let in_flight = !self.queue.is_empty();
                        if let Some(Slot::Redefine) = self.queue.front() {
                            self.notes.duplicate = self.payloads.front().cloned();
                        }
                        while let Some(front) = self.queue.front() {
                            if matches!(front, Slot::Sync) {
                                break;
                            }
                            match self.pop_slot() {
                                Some(Slot::Parse { hash: Some(h), .. }) => self.notes.unprepared.push(h),
                                Some(Slot::Defined(id)) => self.notes.undefined.push(id),
                                _ => {}
                            }
                        }
                        // No Sync sent yet: what the client sends next is skipped too.
                        self.skipping = in_flight && self.queue.is_empty();
                    }
                }
            }
            b'Z' => {
                if matches!(self.queue.front(), Some(Slot::Sync | Slot::Query { .. } | Slot::FunctionCall)) {
                    out.client_rfq = true;
                    // A Sync, or a simple Query/FunctionCall (which ends an
                    // unsynced extended sequence too), is a transaction
                    // boundary on the server, unless extended messages were
                    // sent after it.
                    self.pop(due);
                    self.open = self.queue.iter().any(|s| s.is_extended());
                }
            }
            _ => {}
        }
        out
    }

    /// Whether the queue starts with requests the proxy injected (hidden Parses and Closes)
    /// up to a [`Slot::HiddenSync`].
    fn injected_before_hidden_sync(&self) -> bool {
        let Some(end) = self.queue.iter().position(|s| *s == Slot::HiddenSync) else { return false };
        end > 0
            && self.queue.iter().take(end).all(|s| matches!(s, Slot::Parse { swallow: true, .. } | Slot::HiddenClose))
    }

    fn pop_if(&mut self, pred: impl Fn(&Slot) -> bool, due: &mut BytesMut) {
        if self.queue.front().is_some_and(pred) {
            self.pop(due);
        }
    }

    fn pop(&mut self, due: &mut BytesMut) {
        self.pop_slot();
        self.emit_due(due);
    }

    /// Takes the front slot and its bytes, if any.
    fn pop_slot(&mut self) -> Option<Slot> {
        let slot = self.queue.pop_front()?;
        if slot.has_payload() {
            self.payloads.pop_front();
        }
        Some(slot)
    }

    fn emit_due(&mut self, due: &mut BytesMut) {
        while let Some(slot @ (Slot::Synthetic | Slot::CopyEnd | Slot::Defined(_))) = self.queue.front().copied() {
            self.queue.pop_front();
            if slot == Slot::Synthetic {
                if let Some(bytes) = self.payloads.pop_front() {
                    due.extend_from_slice(&bytes);
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
