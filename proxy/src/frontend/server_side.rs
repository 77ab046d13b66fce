//! Server messages of a session: relaying answers, tracking transaction state,
//! committing session effects and giving connections back.

use bytes::Buf;

use super::session::{discard, End, Session, MAX_SERVER_MESSAGE};
use crate::config::PoolMode;
use crate::context::ClientState;
use crate::protocol::build::{self, sqlstate, Severity};
use crate::protocol::fields::{self, TxStatus};
use crate::protocol::frame::{measure, message_len, HEADER_LEN};
use crate::router::classify::SessionEffect;
use tandem_core::Role;

/// What a session pinned to its server connection (session mode, LISTEN, temporary
/// objects, ...) is told when a switchover stops the primary under it.
const SWITCHOVER_ENDS_PINNED: &str = "terminating connection: the primary is switching over to another node, \
     and this session's server state (session pooling, LISTEN, temporary objects, WITH HOLD cursors, SQL \
     PREPARE) stays on the old one; reconnect to continue on the new primary";

impl Session {
    /// Handles every complete message buffered from the active server.
    pub(super) async fn process_server(&mut self) -> Result<(), End> {
        if self.ctx.lease.required() && self.answer_unvouched() {
            return self.end_unvouched();
        }
        let Some(a) = self.active.as_mut() else { return Ok(()) };
        // Messages are looked at in place (no per-message reference counting); the buffer
        // goes back to the connection at the end. Paths that return early have lost the
        // connection, and its buffer with it.
        let mut rbuf = std::mem::take(&mut a.conn.rbuf);
        // Start of the next message in `rbuf`.
        let mut pos = 0;
        // Messages passed on unchanged whose bytes are not yet in `cout`: they are
        // contiguous in `rbuf`, so one copy takes them all (a result's DataRows, and for
        // most requests everything the server answered). Anything else written to `cout`
        // first flushes this, so the client sees the server's order.
        let mut run = 0..0;
        loop {
            let total = match measure(rbuf.get(pos..).unwrap_or_default(), MAX_SERVER_MESSAGE) {
                Ok(Some(total)) => total,
                Ok(None) => break,
                Err(e) => {
                    flush(&mut self.cout, &rbuf, &mut run);
                    if let Some(a) = &self.active {
                        let _span = self.span.enter();
                        tracing::error!(node = %a.node.id, error = %e, "server sent an invalid message");
                    }
                    return self.server_lost().await;
                }
            };
            let msg = &rbuf[pos..pos + total];
            let (tag, body) = (msg[0], &msg[HEADER_LEN..]);
            if tag == b'D' && self.pipeline.passes_data_rows() {
                // A row changes nothing the proxy tracks (see `Pipeline::passes_data_rows`).
                extend(&mut self.cout, &rbuf, &mut run, pos, total);
                self.forwarded = true;
                pos += total;
                continue;
            }
            if tag == b'E' && is_fatal(body) && self.can_retry_elsewhere() {
                // The backend is going away (terminated, or its postmaster died)
                // before answering a read: run the read elsewhere rather than
                // passing its FATAL on.
                flush(&mut self.cout, &rbuf, &mut run);
                return self.server_lost().await;
            }
            let Some(a) = self.active.as_mut() else { return Ok(()) };
            if tag == b'E' && self.pipeline.is_idle() && self.tx == TxStatus::Idle && !self.pinned {
                // Nothing outstanding and the client is not tied to this server (a FATAL
                // right after the last answer, e.g. its postmaster died): the client must
                // not get it (drivers take an error nobody asked for as a broken
                // connection). The connection is not reused.
                self.span
                    .in_scope(|| tracing::debug!(node = %a.node.id, "server sent an error with nothing outstanding"));
                a.conn.broken = true;
                pos += total;
                continue;
            }
            if tag == b'E' && self.pinned && self.pipeline.is_idle() && self.ctx.gate.is_paused() && is_fatal(body) {
                // A pinned session's server shut down while the proxy is paused for a
                // switchover: say so (same SQLSTATE as the server's own shutdown message),
                // since its server state does not move to the new primary.
                flush(&mut self.cout, &rbuf, &mut run);
                build::error(&mut self.cout, Severity::Fatal, sqlstate::ADMIN_SHUTDOWN, SWITCHOVER_ENDS_PINNED);
                self.forwarded = true;
                self.server_fatal = true;
                pos += total;
                continue;
            }
            let outcome = self.pipeline.on_server_message(tag, &mut self.due);
            let mut duplicate = None;
            if outcome.notes {
                let notes = self.pipeline.take_notes();
                for h in &notes.unprepared {
                    a.conn.prepared.remove(h);
                    self.ctx.pools.known.forget(&self.database, *h);
                }
                for id in &notes.undefined {
                    self.statements.undefine(*id);
                }
                duplicate = notes.duplicate;
            }
            if outcome.forward {
                let mut replacement = None;
                match tag {
                    b'C' => {
                        if let Ok(t) = fields::command_tag(body) {
                            self.rolled_back = t == b"ROLLBACK";
                            if t == b"DEALLOCATE ALL" || t == b"DISCARD ALL" {
                                a.conn.statements_unsure = false;
                            }
                        }
                    }
                    b'E' => {
                        self.unit_error = true;
                        self.server_fatal |= is_fatal(body);
                        let fields = fields::error_fields(body).unwrap_or_default();
                        replacement = duplicate.filter(|_| fields.code == b"42P05");
                        if fields.code == b"0A000"
                            && fields.message.starts_with(b"cached plan must not change result type")
                        {
                            a.conn.statements_stale = true;
                        }
                    }
                    b'A' => {
                        replacement =
                            notification_for_client(msg, &a.conn.cancel_key, self.cancel.pid, &self.ctx.cancels)
                    }
                    _ => {}
                }
                match replacement {
                    Some(bytes) => {
                        flush(&mut self.cout, &rbuf, &mut run);
                        self.cout.extend_from_slice(&bytes);
                    }
                    None => extend(&mut self.cout, &rbuf, &mut run, pos, total),
                }
                self.forwarded = true;
            }
            if outcome.client_rfq && a.conn.statements_unsure && self.pipeline.is_empty() {
                // A DEALLOCATE ALL / DISCARD ALL did not complete: which statements the
                // server session holds is unknown, so the connection is not reused.
                a.conn.statements_unsure = false;
                a.conn.broken = true;
            }
            if !self.due.is_empty() {
                flush(&mut self.cout, &rbuf, &mut run);
                self.cout.extend_from_slice(&self.due);
                self.due.clear();
            }
            if outcome.client_rfq {
                let status = match fields::ready_for_query(body) {
                    Ok(s) => s,
                    Err(e) => {
                        flush(&mut self.cout, &rbuf, &mut run);
                        self.client_error(Severity::Fatal, sqlstate::PROTOCOL_VIOLATION, &e.to_string());
                        return Err(End::Fatal);
                    }
                };
                self.on_ready_for_query(status);
                self.trim_replay();
            }
            pos += total;
        }
        flush(&mut self.cout, &rbuf, &mut run);
        rbuf.advance(pos);
        // Room for the rest of a message that is only partly here.
        let _ = message_len(&mut rbuf, MAX_SERVER_MESSAGE);
        if let Some(a) = self.active.as_mut() {
            a.conn.rbuf = rbuf;
        }
        if self.pipeline.is_idle() && self.active.is_some() {
            self.on_idle();
        }
        Ok(())
    }

    /// A client request is fully answered (its ReadyForQuery went out): if the server is
    /// lost later in the same unit (a client that pipelines its next request before this
    /// answer, as tokio-postgres does), only what the client sent after that request's
    /// Sync / Query / FunctionCall is re-sent elsewhere, and nothing of it was answered yet.
    /// With a witness group: the primary answered after this proxy's write lease ran out, or
    /// after the group moved the primary away from it. Such an answer is never relayed: the
    /// node may no longer be the primary, so what it says it committed may not last.
    pub(super) fn answer_unvouched(&self) -> bool {
        let Some(a) = &self.active else { return false };
        // Only answers to a unit (notifications and parameter changes between units are not
        // results).
        !self.pipeline.is_idle()
            && a.node.role == Role::Primary
            && (!self.ctx.lease.is_valid() || a.node.addr != self.ctx.router.topology().primary.addr)
    }

    /// Ready when a unit in flight on the primary outlives the write lease: its answer could
    /// never be relayed, so the client is told at once (a frozen or cut-off primary may never
    /// answer at all) instead of hanging.
    pub(super) fn poll_lease_expiry(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        use std::future::Future;
        let in_flight = !self.pipeline.is_idle() && self.active.as_ref().is_some_and(|a| a.node.role == Role::Primary);
        if !in_flight {
            self.lease_timer = None;
            return std::task::Poll::Pending;
        }
        loop {
            let left = self.ctx.lease.remaining().unwrap_or_default();
            if left.is_zero() {
                self.lease_timer = None;
                return std::task::Poll::Ready(());
            }
            let timer = self.lease_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(left)));
            if timer.as_mut().poll(cx).is_pending() {
                return std::task::Poll::Pending;
            }
            // Fired: the lease may have been renewed meanwhile; re-arm for what is left.
            timer.as_mut().reset(tokio::time::Instant::now() + self.ctx.lease.remaining().unwrap_or_default());
        }
    }

    /// Ends the session: its unit's outcome on the old primary is unknown.
    pub(super) fn end_unvouched(&mut self) -> Result<(), End> {
        if let Some(a) = self.active.take() {
            self.span.in_scope(
                || tracing::warn!(node = %a.node.id, "write lease ran out before the primary's answer: not relayed"),
            );
            self.ctx.metrics.error("no_write_lease");
            discard(a);
        }
        self.client_error(
            Severity::Fatal,
            sqlstate::CONNECTION_FAILURE,
            "this proxy's write lease from the witness group ran out before the primary's answer \
             (the primary may be failing over): the outcome of the last statement is unknown",
        );
        Err(End::Fatal)
    }

    fn trim_replay(&mut self) {
        if let Some(end) = self.replay.iter().position(|f| matches!(f.tag(), b'S' | b'Q' | b'F')) {
            self.replay.drain(..=end);
            self.replay_bytes = self.replay.iter().map(|f| f.bytes().len()).sum();
            self.forwarded = false;
        }
    }

    /// A client request finished with `status`: commit or drop session effects.
    fn on_ready_for_query(&mut self, status: TxStatus) {
        self.tx = status;
        match status {
            TxStatus::Idle => {
                let committed = !self.unit_error && !self.aborted && !self.rolled_back;
                if let Some((name, stmt)) = self.pending_define.take().filter(|_| committed) {
                    if let Some(a) = self.active.as_mut() {
                        a.conn.prepared.insert(stmt.hash);
                    }
                    self.statements.insert(&name, stmt);
                }
                let effects = std::mem::take(&mut self.pending);
                if committed {
                    let reset = effects.iter().any(|e| {
                        matches!(e, SessionEffect::ResetAll | SessionEffect::DiscardAll | SessionEffect::Reset { .. })
                    });
                    for e in effects {
                        self.apply_effect(e);
                    }
                    if let Some(a) = self.active.as_mut().filter(|_| reset) {
                        // The server reset to its connection's startup settings, not the
                        // client's (a simple Query's RESET is followed by a hidden restore,
                        // see `Session::restore_startup`; an extended one's is not): replay
                        // before the next unit.
                        a.conn.params_signature = 0;
                    }
                }
                self.unit_error = false;
                self.aborted = false;
                self.rolled_back = false;
            }
            TxStatus::Failed => {
                self.aborted = true;
                self.unit_error = false;
            }
            TxStatus::InTransaction => self.unit_error = false,
        }
    }

    fn apply_effect(&mut self, effect: SessionEffect) {
        let Some(a) = self.active.as_mut() else { return };
        match effect {
            SessionEffect::Set { name, statement } => self.params.set(&name, &statement),
            SessionEffect::Reset { name } => self.params.reset(&name),
            SessionEffect::ResetAll => self.params.reset_all(),
            // Prepared statements were forgotten when it was sent (see `note_effects`).
            SessionEffect::DiscardAll => self.params.discard_all(),
            SessionEffect::Deallocate { .. }
            | SessionEffect::Pin(_)
            | SessionEffect::DiscardPlans
            | SessionEffect::DiscardTemp
            | SessionEffect::DiscardSequences
            | SessionEffect::ExecutePrepared
            | SessionEffect::ExclusiveDatabase { .. } => {}
        }
        // The connection that ran the statement now holds exactly the client's settings.
        a.conn.params_signature = self.params.signature();
    }

    /// Everything the client asked for is answered.
    fn on_idle(&mut self) {
        let Some(a) = self.active.as_mut() else { return };
        a.inflight = None;
        if let Some(started) = self.unit_started.take() {
            self.ctx.metrics.latency.observe(self.info.worker, started.elapsed());
            self.info.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if self.unit_wrote && self.tx == TxStatus::Idle {
            self.floor.wrote();
            self.unit_wrote = false;
        }
        self.replay.clear();
        self.replay_bytes = 0;
        self.forwarded = false;
        if self.tx != TxStatus::Idle {
            return;
        }
        self.busy = None;
        self.info.set_state(ClientState::Idle);
        // A CopyData still streaming to this server (its COPY failed early) must end there.
        if self.mode == PoolMode::Transaction && !self.pinned && self.copy_through == 0 {
            if let Some(a) = self.active.take() {
                self.last_server = Some(a.conn.cancel_key.pid);
                a.pool.release(a.conn);
            }
            self.cancel.set_target(None);
            self.info.detach_node();
        }
    }
}

/// A NotificationResponse names the sending backend; clients compare that with the pid
/// they were given in BackendKeyData (to skip their own notifications, or to tell who sent
/// one). When the sender is this session's backend (`own`, given to the client as
/// `own_client_pid`), or one a session of this proxy uses right now (always so in session
/// mode), the message gets that client's pid; `None` leaves it as it is.
fn notification_for_client(
    msg: &[u8],
    own: &crate::pool::CancelKey,
    own_client_pid: i32,
    cancels: &crate::cancel::CancelRegistry,
) -> Option<bytes::Bytes> {
    let sender = i32::from_be_bytes(msg.get(HEADER_LEN..HEADER_LEN + 4)?.try_into().ok()?);
    let client = if sender == own.pid { own_client_pid } else { cancels.client_pid_of(&own.addr, sender)? };
    with_sender(msg, client)
}

/// `msg`, a NotificationResponse, with its sender pid replaced by `pid`.
fn with_sender(msg: &[u8], pid: i32) -> Option<bytes::Bytes> {
    let mut out = msg.to_vec();
    out.get_mut(HEADER_LEN..HEADER_LEN + 4)?.copy_from_slice(&pid.to_be_bytes());
    Some(bytes::Bytes::from(out))
}

/// Adds the message at `pos` (`total` bytes) to the run of unchanged messages, flushing the
/// run first if a message the client does not get lies between.
fn extend(cout: &mut bytes::BytesMut, rbuf: &[u8], run: &mut std::ops::Range<usize>, pos: usize, total: usize) {
    if run.end != pos {
        flush(cout, rbuf, run);
        *run = pos..pos;
    }
    run.end = pos + total;
}

/// Copies the pending run of unchanged messages to the client's buffer.
fn flush(cout: &mut bytes::BytesMut, rbuf: &[u8], run: &mut std::ops::Range<usize>) {
    if let Some(bytes) = rbuf.get(run.clone()).filter(|b| !b.is_empty()) {
        cout.extend_from_slice(bytes);
    }
    *run = 0..0;
}

/// Whether an ErrorResponse body has severity FATAL or PANIC (the server
/// closes the connection after it).
fn is_fatal(body: &[u8]) -> bool {
    let mut rest = body;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        if code == b'V' || code == b'S' {
            let value = &tail[..end];
            return value == b"FATAL" || value == b"PANIC";
        }
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(pid: i32) -> Vec<u8> {
        let body = [&pid.to_be_bytes()[..], b"chan\0payload\0"].concat();
        [&[b'A'][..], &((body.len() + 4) as u32).to_be_bytes(), &body].concat()
    }

    #[test]
    fn notification_sender_is_replaced() {
        let rewritten = with_sender(&notification(4242), 7_000_000).map(|b| b.to_vec());
        assert_eq!(rewritten, Some(notification(7_000_000)));
        assert_eq!(with_sender(b"A\0\0\0\x04", 1), None, "truncated");
    }
}
