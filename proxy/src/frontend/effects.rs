//! Session effects of client statements: what a SET, RESET, DISCARD, DEALLOCATE or pin
//! changes in the session the proxy keeps for the client, noted when the statement is
//! sent (and committed with its transaction, see `server_side`).

use super::pipeline::Expect;
use super::session::Session;
use crate::config::PoolMode;
use crate::protocol::build;
use crate::protocol::fields::TxStatus;
use crate::router::classify::{PinReason, SessionEffect};

impl Session {
    /// After a client's RESET (or RESET ALL, DISCARD ALL, SET ... TO DEFAULT) of a setting
    /// it gave at login, the server holds its own connection's startup value, while
    /// PostgreSQL returns to the client's: a hidden query right behind puts the client's
    /// back. In a transaction it is rolled back with the RESET; if the client's query fails
    /// outside one, the connection's settings are unknown until the next unit replays them.
    pub(super) fn restore_startup(&mut self, effects: &[SessionEffect]) {
        if let Some(sql) = self.params.restore_sql(effects) {
            self.send_restore(&sql);
        }
    }

    /// Queues the hidden restore query `sql`; until it is answered the connection's
    /// settings count as unknown.
    fn send_restore(&mut self, sql: &str) {
        let Some(a) = self.active.as_mut() else { return };
        a.conn.params_signature = super::state::UNKNOWN_SIGNATURE;
        build::query(&mut self.sout, sql);
        self.pipeline.push(Expect::Restore, &mut self.cout);
    }

    /// The extended-protocol form of [`Session::restore_startup`]: the statement runs at
    /// its Execute, so the restore follows the client's next Sync.
    pub(super) fn restore_at_next_sync(&mut self, effects: &[SessionEffect]) {
        if effects.is_empty() {
            return;
        }
        if let Some(sql) = self.params.restore_sql(effects) {
            self.restore_at_sync = Some(sql);
        }
    }

    /// Sends the restore noted by [`Session::restore_at_next_sync`], right after a Sync.
    pub(super) fn restore_after_sync(&mut self) {
        if let Some(sql) = self.restore_at_sync.take() {
            self.send_restore(&sql);
        }
    }

    /// Before a statement that needs a database to itself (DROP DATABASE, CREATE DATABASE
    /// ... TEMPLATE, ...): the proxy's own idle connections to it would make PostgreSQL
    /// refuse it (55006), so they are closed first.
    pub(super) async fn free_databases(&self, effects: &[SessionEffect]) {
        for effect in effects {
            if let SessionEffect::ExclusiveDatabase { name } = effect {
                self.ctx.pools.close_idle(name).await;
            }
        }
    }

    /// SQL `DEALLOCATE name` of a statement the client prepared with the extended protocol.
    /// It exists on the servers only under its Tandem name, so a server would answer 26000
    /// where PostgreSQL drops it. When it is the whole query and nothing is outstanding, the
    /// proxy forgets the client's name and answers as PostgreSQL does (the server-side
    /// statement stays for reuse, as after a Close). In a failed transaction the server
    /// answers (25P02, as PostgreSQL would). Returns whether it answered.
    pub(super) fn deallocate_own(&mut self, effects: &[SessionEffect], sql: &[u8]) -> bool {
        if self.mode == PoolMode::Session {
            // The server holds the statement under the client's name: it answers itself.
            return false;
        }
        let [SessionEffect::Deallocate { name: Some(name) }] = effects else { return false };
        let text = sql.trim_ascii();
        let text = text.strip_suffix(b";").unwrap_or(text);
        if text.contains(&b';')
            || !self.pipeline.is_idle()
            || self.tx == TxStatus::Failed
            || self.statements.get(name.as_bytes()).is_none()
        {
            return false;
        }
        self.statements.remove(name.as_bytes());
        let mut reply = bytes::BytesMut::new();
        build::command_complete(&mut reply, "DEALLOCATE");
        build::ready_for_query(&mut reply, self.tx);
        self.pipeline.push(Expect::Synthetic(reply.freeze()), &mut self.cout);
        true
    }

    /// Records session effects of a statement about to run.
    pub(super) fn note_effects(&mut self, effects: &[SessionEffect]) {
        for e in effects {
            match e {
                SessionEffect::Pin(reason) => {
                    let _span = self.span.enter();
                    if !self.pinned {
                        tracing::debug!(?reason, "client pinned to its server connection");
                    }
                    self.pinned = true;
                    if *reason == PinReason::Other {
                        tracing::debug!("statement with session-wide side effects");
                    }
                }
                SessionEffect::Deallocate { name: Some(name) } if self.mode == PoolMode::Session => {
                    // The server drops the client's statement (DEALLOCATE is not
                    // transactional); a later Parse of the name defines it afresh.
                    if let Some(stmt) = self.statements.get(name.as_bytes()).cloned() {
                        self.statements.remove(name.as_bytes());
                        if let Some(a) = self.active.as_mut() {
                            a.conn.prepared.remove(&stmt.hash);
                        }
                    }
                }
                SessionEffect::Deallocate { name: None } | SessionEffect::DiscardAll => {
                    self.forget_all_statements();
                    self.pending.push(e.clone());
                }
                other => self.pending.push(other.clone()),
            }
        }
    }

    /// The client runs DEALLOCATE ALL or DISCARD ALL: every prepared statement of the server
    /// session goes, whoever defined it, and so do the client's names. Done when the
    /// statement is sent, so that whatever the client sends after it is prepared afresh; if
    /// it then fails, the connection's statements are unknown (`ServerConn::statements_unsure`).
    pub(super) fn forget_all_statements(&mut self) {
        self.statements.clear();
        if let Some(a) = self.active.as_mut() {
            a.conn.prepared.clear();
            a.conn.statements_unsure = true;
        }
    }
}
