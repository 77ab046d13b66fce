//! Client messages of a session: routing each unit of work and forwarding it.
//!
//! A unit starts with the first message after the session was idle (a
//! `Query`, or the first extended-protocol message) and ends when the server
//! has answered everything, `ReadyForQuery` included. The first message decides
//! the route; the rest of the unit, and everything inside a transaction, follow
//! it to the same server connection.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Buf;

use super::pipeline::Expect;
use super::session::{End, Session, MAX_REPLAY_BYTES};
use super::sql_names::map_executed;
use super::state::Statement;
use crate::config::PoolMode;
use crate::protocol::build::{self, sqlstate, Severity};
use crate::protocol::fields::{self, Target, TxStatus};
use crate::protocol::frame::{measure, split_message, FrameError, HEADER_LEN};
use crate::protocol::Frame;
use crate::router::classify::{PinReason, Route, SessionEffect};
use tandem_core::Role;

/// A unit could not start; the client gets this error.
pub(super) struct UnitFailed {
    /// The SQLSTATE of the client's ErrorResponse.
    pub(super) code: &'static str,
    /// Its message.
    pub(super) message: String,
}

impl Session {
    /// Handles every complete message buffered from the client.
    pub(super) async fn process_client(&mut self) -> Result<(), End> {
        let max = self.ctx.cfg.max_message_size;
        self.client_backlog = false;
        loop {
            if self.sout.len() >= super::session::HIGH_WATER || self.cout.len() >= super::session::HIGH_WATER {
                self.client_backlog = true;
                return Ok(());
            }
            if self.copy_streams() {
                self.stream_copy_data()?;
                continue;
            }
            if let Ok(Some(total)) = measure(&self.cin, max) {
                if self.forward_inline(total) {
                    continue;
                }
            }
            let frame = match split_message(&mut self.cin, max) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => {
                    let (code, msg) = match e {
                        FrameError::TooLarge { len, max } => {
                            self.span.in_scope(|| {
                                tracing::warn!(len, max, "client message larger than max_message_size refused")
                            });
                            (
                                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                                format!("message of {len} bytes exceeds max_message_size ({max} bytes)"),
                            )
                        }
                        FrameError::BadLength(l) => {
                            (sqlstate::PROTOCOL_VIOLATION, format!("invalid message length {l}"))
                        }
                    };
                    self.ctx.metrics.error("protocol");
                    self.client_error(Severity::Fatal, code, &msg);
                    return Err(End::Fatal);
                }
            };
            self.handle_client_message(frame).await?;
        }
    }

    /// The common messages that only continue a unit on the primary (Execute, Sync, Flush,
    /// Describe of a portal, CopyData) go from the client's buffer to the server's without
    /// being split off as a frame or going through [`Session::handle_client_message`]: in
    /// an extended-protocol request they are three messages of four, and the general path's
    /// frame and future cost more than the forwarding. `total` is the length of the whole
    /// message at the front of `cin`. Returns false (and does nothing) for anything else,
    /// including every message of a unit on a replica, which is kept for a retry.
    fn forward_inline(&mut self, total: usize) -> bool {
        let Some(a) = self.active.as_ref() else { return false };
        if a.node.role == Role::Replica || self.skip_until_sync {
            return false;
        }
        let Some(msg) = self.cin.get(..total) else { return false };
        let expect = match msg.first() {
            Some(b'E') => Some(Expect::Execute),
            // A Sync with a restore due goes the general way (see `restore_after_sync`).
            Some(b'S') if self.restore_at_sync.is_none() => Some(Expect::Sync),
            Some(b'H' | b'd') => None,
            Some(b'D') if msg.get(HEADER_LEN) == Some(&b'P') && msg.last() == Some(&0) => Some(Expect::Describe),
            _ => return false,
        };
        self.sout.extend_from_slice(msg);
        if let Some(e) = expect {
            self.pipeline.push(e, &mut self.cout);
        }
        self.cin.advance(total);
        true
    }

    pub(super) async fn handle_client_message(&mut self, frame: Frame) -> Result<(), End> {
        let tag = frame.tag();
        if self.skip_until_sync {
            if tag == b'S' {
                self.skip_until_sync = false;
                self.restore_at_sync = None; // the unit failed: nothing was reset
                build::ready_for_query(&mut self.cout, self.tx);
            } else if tag == b'X' {
                return Err(End::ClientGone);
            }
            return Ok(());
        }
        let result = match tag {
            b'Q' => self.on_query(frame).await,
            b'P' => self.on_parse(frame).await,
            b'B' => self.on_bind(frame).await,
            b'D' => self.on_describe(frame).await,
            b'C' => self.on_close(frame).await,
            b'E' => self.forward_in_unit(frame, Expect::Execute).await,
            b'F' => self.forward_in_unit(frame, Expect::FunctionCall).await,
            b'S' => {
                if self.active.is_some() {
                    self.forward(frame, Some(Expect::Sync));
                    self.restore_after_sync();
                } else {
                    build::ready_for_query(&mut self.cout, self.tx);
                }
                Ok(())
            }
            b'H' => {
                if self.active.is_some() {
                    self.forward(frame, None);
                }
                Ok(())
            }
            b'd' | b'c' | b'f' => {
                // COPY data belongs to the server running the COPY; outside a
                // COPY the server would ignore it, so does the proxy.
                if self.active.is_some() {
                    let end = (tag != b'd').then_some(Expect::CopyEnd);
                    self.forward(frame, end);
                }
                Ok(())
            }
            b'X' => return Err(End::ClientGone),
            other => {
                self.ctx.metrics.error("protocol");
                self.client_error(
                    Severity::Fatal,
                    sqlstate::PROTOCOL_VIOLATION,
                    &format!("invalid frontend message type {}", other),
                );
                return Err(End::Fatal);
            }
        };
        match result {
            Ok(()) => Ok(()),
            Err(Failure::Unit(f)) => {
                self.client_error(Severity::Error, f.code, &f.message);
                if tag == b'Q' || tag == b'F' {
                    build::ready_for_query(&mut self.cout, self.tx);
                } else {
                    self.skip_until_sync = true;
                }
                Ok(())
            }
            Err(Failure::Protocol(msg)) => {
                self.ctx.metrics.error("protocol");
                self.client_error(Severity::Fatal, sqlstate::PROTOCOL_VIOLATION, &msg);
                Err(End::Fatal)
            }
            Err(Failure::Ended { code, message }) => {
                self.client_error(Severity::Fatal, code, &message);
                Err(End::Fatal)
            }
        }
    }

    async fn on_query(&mut self, frame: Frame) -> Result<(), Failure> {
        let sql = fields::query_text(frame.body()).map_err(|e| Failure::Protocol(e.to_string()))?;
        let class = self.ctx.classifier.classify_memo(sql, &mut self.memo);
        if self.deallocate_own(&class.effects, sql) {
            return Ok(());
        }
        if self.mode == PoolMode::Transaction
            && class.effects == [SessionEffect::Pin(PinReason::SqlPrepare)]
            && self.prepare_shared(sql).await?
        {
            return Ok(());
        }
        if !class.effects.is_empty() {
            self.free_databases(&class.effects).await;
        }
        self.begin_unit(class.route).await?;
        self.note_effects(&class.effects);
        let mapped = self.mode == PoolMode::Transaction
            && class.effects.contains(&SessionEffect::ExecutePrepared)
            && std::str::from_utf8(sql).is_ok_and(|sql| self.send_mapped_query(sql));
        if !mapped {
            self.forward(frame, Some(Expect::Query { swallow: false }));
        }
        if !class.effects.is_empty() {
            self.restore_startup(&class.effects);
        }
        Ok(())
    }

    async fn on_parse(&mut self, frame: Frame) -> Result<(), Failure> {
        let p = fields::parse(frame.body()).map_err(|e| Failure::Protocol(e.to_string()))?;
        let class = self.ctx.classifier.classify_memo(p.query, &mut self.memo);
        // SQL naming the client's statements (`EXECUTE s1`) is parsed naming the server's.
        let mapped = (self.mode == PoolMode::Transaction && class.effects.contains(&SessionEffect::ExecutePrepared))
            .then(|| std::str::from_utf8(p.query).ok().and_then(|q| map_executed(q, &self.statements)))
            .flatten();
        if p.name.is_empty() {
            self.statements.unnamed_route = Some(class.route);
            // Drivers send DDL with the extended protocol too (pgjdbc sends everything so).
            if !class.effects.is_empty() {
                self.free_databases(&class.effects).await;
            }
            self.begin_unit(class.route).await?;
            self.note_effects(&class.effects);
            self.restore_at_next_sync(&class.effects);
            let Some((text, needs)) = mapped else {
                self.forward(frame, Some(Expect::Parse { hash: None, swallow: false }));
                return Ok(());
            };
            for stmt in &needs {
                self.ensure_prepared(stmt);
            }
            build::parse(&mut self.sout, b"", text.as_bytes(), p.param_types);
            self.pipeline.push(Expect::Parse { hash: None, swallow: false }, &mut self.cout);
            return Ok(());
        }
        if self.pipeline.is_skipping() {
            // The server discards everything up to the client's Sync after an error, so
            // PostgreSQL would not define this name.
            return Ok(());
        }
        if let Some(old) = self.statements.get(p.name).cloned() {
            return self.parse_duplicate(frame.clone(), p.name, &old, p.query, p.param_types).await;
        }
        let mut stmt = if self.mode == PoolMode::Session {
            Statement::named(p.name, p.query, p.param_types, class.route)
        } else if let Some((text, needs)) = mapped {
            Statement { needs, ..Statement::new(text.as_bytes(), p.param_types, class.route) }
        } else {
            Statement::new(p.query, p.param_types, class.route)
        };
        stmt.effects = class.effects;
        let stmt = Arc::new(stmt);
        let id = self.statements.insert(p.name, stmt.clone());
        let done = bytes::Bytes::from_static(&[b'1', 0, 0, 0, 4]);
        if self.mode == PoolMode::Transaction
            && self.active.is_none()
            && self.tx == TxStatus::Idle
            && self.ctx.pools.known.contains(&self.database, stmt.hash)
        {
            // Known to parse: answer without taking a server connection (see pool::known);
            // Bind or Describe prepares it on whichever connection runs it.
            stmt.reparse.store(true, Ordering::Relaxed);
            self.pipeline.push(Expect::Synthetic(done), &mut self.cout);
            return Ok(());
        }
        if let Err(e) = self.begin_unit(stmt.route).await {
            self.statements.undefine(id);
            return Err(e);
        }
        for need in &stmt.needs {
            self.ensure_prepared(need);
        }
        let Some(a) = self.active.as_mut() else { return Ok(()) };
        if !a.conn.prepared.insert(stmt.hash) {
            // The statement exists on this connection, maybe from before a schema change,
            // while a Parse in PostgreSQL sees the current schema (and fails as it would,
            // e.g. 25P02 in an aborted transaction): parse it afresh.
            build::target(&mut self.sout, b'C', b'S', stmt.server_name.as_bytes());
            self.pipeline.push(Expect::HiddenClose, &mut self.cout);
        }
        self.ctx.pools.known.note(&self.database, stmt.hash);
        build::parse(&mut self.sout, stmt.server_name.as_bytes(), &stmt.query, &stmt.param_types);
        self.pipeline.push(Expect::Parse { hash: Some(stmt.hash), swallow: false }, &mut self.cout);
        self.pipeline.push(Expect::Defined(id), &mut self.cout);
        self.remember(frame);
        Ok(())
    }

    /// A `Parse` of a name the client already defined. PostgreSQL refuses it (42P05
    /// duplicate_prepared_statement, after checking the new text's syntax and the transaction
    /// state) and keeps the old statement. The server decides: the new text is parsed under
    /// the old statement's server name, which the connection is made to hold first, so the
    /// server fails it in PostgreSQL's order and skips to the Sync as usual; only the name in
    /// a 42P05 message is changed back to the client's (see `Expect::Redefine`).
    async fn parse_duplicate(
        &mut self,
        frame: Frame,
        name: &[u8],
        old: &Statement,
        query: &[u8],
        param_types: &[u8],
    ) -> Result<(), Failure> {
        self.begin_unit(old.route).await?;
        self.ensure_prepared(old);
        build::parse(&mut self.sout, old.server_name.as_bytes(), query, param_types);
        let mut error = bytes::BytesMut::new();
        let message = format!("prepared statement \"{}\" already exists", String::from_utf8_lossy(name));
        build::error(&mut error, Severity::Error, sqlstate::DUPLICATE_PREPARED_STATEMENT, &message);
        self.pipeline.push(Expect::Redefine(error.freeze()), &mut self.cout);
        self.remember(frame);
        Ok(())
    }

    async fn on_bind(&mut self, frame: Frame) -> Result<(), Failure> {
        let b = fields::bind(frame.body()).map_err(|e| Failure::Protocol(e.to_string()))?;
        if b.statement.is_empty() {
            let route = self.statements.unnamed_route.unwrap_or(Route::Write);
            self.begin_unit(route).await?;
            self.forward(frame, Some(Expect::Bind));
            return Ok(());
        }
        let Some(stmt) = self.statements.get(b.statement).cloned() else {
            // Unknown to the proxy: let the server raise its own 26000 error.
            self.begin_unit(Route::Write).await?;
            self.forward(frame, Some(Expect::Bind));
            return Ok(());
        };
        if !stmt.effects.is_empty() {
            // Checked here: nearly every statement has none, and then no future is set up.
            self.free_databases(&stmt.effects).await;
        }
        self.begin_unit(stmt.route).await?;
        self.ensure_prepared(&stmt);
        // After the injected Parse: a DEALLOCATE ALL statement forgets itself too.
        self.note_effects(&stmt.effects);
        if !stmt.effects.is_empty() {
            self.restore_at_next_sync(&stmt.effects);
        }
        build::bind(&mut self.sout, b.portal, stmt.server_name.as_bytes(), b.rest);
        self.pipeline.push(Expect::Bind, &mut self.cout);
        self.remember(frame);
        Ok(())
    }

    async fn on_describe(&mut self, frame: Frame) -> Result<(), Failure> {
        match fields::target(frame.body(), "Describe").map_err(|e| Failure::Protocol(e.to_string()))? {
            Target::Statement(name) if !name.is_empty() => {
                let Some(stmt) = self.statements.get(name).cloned() else {
                    return self.forward_in_unit(frame, Expect::Describe).await;
                };
                self.begin_unit(stmt.route).await?;
                self.ensure_prepared(&stmt);
                build::target(&mut self.sout, b'D', b'S', stmt.server_name.as_bytes());
                self.pipeline.push(Expect::Describe, &mut self.cout);
                self.remember(frame);
                Ok(())
            }
            Target::Statement(_) => {
                let route = self.statements.unnamed_route.unwrap_or(Route::Write);
                self.begin_unit(route).await?;
                self.forward(frame, Some(Expect::Describe));
                Ok(())
            }
            Target::Portal(_) => self.forward_in_unit(frame, Expect::Describe).await,
        }
    }

    async fn on_close(&mut self, frame: Frame) -> Result<(), Failure> {
        match fields::target(frame.body(), "Close").map_err(|e| Failure::Protocol(e.to_string()))? {
            Target::Statement(name) if !name.is_empty() && self.mode == PoolMode::Session => {
                // The statement has the client's name on the server: close it there, so
                // that SQL no longer finds it and the name is free again, as in PostgreSQL.
                let Some(stmt) = self.statements.get(name).cloned() else {
                    return self.forward_in_unit(frame, Expect::Close).await;
                };
                self.statements.remove(name);
                if self.active.is_none() {
                    self.begin_unit(stmt.route).await?;
                }
                if let Some(a) = self.active.as_mut() {
                    a.conn.prepared.remove(&stmt.hash);
                }
                build::target(&mut self.sout, b'C', b'S', stmt.server_name.as_bytes());
                self.pipeline.push(Expect::Close, &mut self.cout);
                self.remember(frame);
                Ok(())
            }
            Target::Statement(name) if !name.is_empty() => {
                // The server-side statement stays for reuse; the client's name goes.
                self.statements.remove(name);
                let done = bytes::Bytes::from_static(&[b'3', 0, 0, 0, 4]);
                self.pipeline.push(Expect::Synthetic(done), &mut self.cout);
                Ok(())
            }
            _ => self.forward_in_unit(frame, Expect::Close).await,
        }
    }

    /// Forwards a message that continues the current unit (or starts one on the primary).
    async fn forward_in_unit(&mut self, frame: Frame, expect: Expect) -> Result<(), Failure> {
        if self.active.is_none() {
            self.begin_unit(Route::Write).await?;
        }
        self.forward(frame, Some(expect));
        Ok(())
    }

    /// Queues a client message for the active server.
    pub(super) fn forward(&mut self, frame: Frame, expect: Option<Expect>) {
        self.sout.extend_from_slice(frame.bytes());
        if let Some(e) = expect {
            self.pipeline.push(e, &mut self.cout);
        }
        self.remember(frame);
    }

    /// Keeps a frame for a possible retry on another replica (only reads on a
    /// replica are ever retried, so nothing is kept for the primary).
    fn remember(&mut self, frame: Frame) {
        if self.active.as_ref().is_some_and(|a| a.node.role != Role::Replica) {
            return;
        }
        if self.replay_bytes + frame.bytes().len() <= MAX_REPLAY_BYTES {
            self.replay_bytes += frame.bytes().len();
            self.replay.push(frame);
        } else {
            self.replay_bytes = usize::MAX / 2;
            self.replay.clear();
        }
    }

    /// Injects a Parse if the active connection lacks `stmt`.
    pub(super) fn ensure_prepared(&mut self, stmt: &Statement) {
        if self.active.is_none() || self.pipeline.is_skipping() {
            // Skipping: the server ignores the Bind/Describe this would prepare for (and the
            // Parse).
            return;
        }
        for need in &stmt.needs {
            // The statements its SQL EXECUTEs come first (see `sql_names`).
            self.ensure_prepared(need);
        }
        let Some(a) = self.active.as_mut() else { return };
        if let Some(sql) = &stmt.sql_prepare {
            // Made with SQL PREPARE: made again the same way.
            if a.conn.prepared.insert(stmt.hash) {
                build::query(&mut self.sout, sql);
                self.pipeline.push(Expect::Query { swallow: true }, &mut self.cout);
            }
            return;
        }
        let fresh = stmt.reparse.swap(false, Ordering::Relaxed);
        let missing = a.conn.prepared.insert(stmt.hash);
        if fresh && !missing {
            // See `Statement::reparse`.
            build::target(&mut self.sout, b'C', b'S', stmt.server_name.as_bytes());
            self.pipeline.push(Expect::HiddenClose, &mut self.cout);
        }
        if missing && self.mode == PoolMode::Session {
            // Session pooling uses the client's name, which an older statement the client
            // closed on another connection may still hold there (the Close went elsewhere).
            build::target(&mut self.sout, b'C', b'S', stmt.server_name.as_bytes());
            self.pipeline.push(Expect::HiddenClose, &mut self.cout);
        }
        if missing || fresh {
            self.ctx.pools.known.note(&self.database, stmt.hash);
            build::parse(&mut self.sout, stmt.server_name.as_bytes(), &stmt.query, &stmt.param_types);
            self.pipeline.push(Expect::Parse { hash: Some(stmt.hash), swallow: true }, &mut self.cout);
        }
    }
}

/// Why handling a client message failed.
pub(super) enum Failure {
    /// The unit cannot run; the session continues.
    Unit(UnitFailed),
    /// The client broke the protocol; the session ends.
    Protocol(String),
    /// The session cannot go on (its server state is on a node that is no longer primary):
    /// FATAL with this SQLSTATE and message.
    Ended {
        /// SQLSTATE.
        code: &'static str,
        /// Message.
        message: String,
    },
}
