//! Turning transactions into the messages of a batch.
//!
//! Place in the data flow: change log → applier → **batch encoding** →
//! writer session. [`Applier::push`] encodes a transaction's changes into the
//! open batch (BEGIN and guard before the first statement, Parse only for
//! shapes not prepared yet, Bind/Execute per row), [`Applier::seal`] ends it
//! with the progress update, COMMIT and the batch's one Sync and writes it
//! out. Nothing here waits for the replica unless the window of answers in
//! flight is full, a new batch needs its statements first, or DDL (a barrier)
//! comes along. See the applier's module docs for the exactly-once argument.

use std::sync::Arc;

use super::applier::{Applier, MAX_IN_FLIGHT};
use super::replies::{BatchEnd, Tag};
use super::sql;
use super::statements::Prepared;
use super::writer::{conn::text_column, WriterError, WriterSession};
use super::ApplyError;
use crate::change::{self, Change, Transaction};
use crate::copy::TANDEM_SCHEMA;
use crate::ddl::{self, DdlMessage, DDL_PREFIX};

/// Bytes encoded before they are written even though the batch is still open.
const WRITE_AT: usize = 256 * 1024;

/// The session's fixed statements: (name, SQL).
const BEGIN: (&str, &str) = ("tandem_begin", "BEGIN");
/// Locks the progress row and fails (22012) unless it holds `$2`.
const GUARD: (&str, &str) = (
    "tandem_guard",
    "WITH held AS (SELECT 1 FROM tandem.applied WHERE source = $1 AND lsn = $2::pg_lsn FOR UPDATE) \
     SELECT 1 / count(*)::int FROM held",
);
/// Moves the progress row to the end of the batch (the guard holds its lock).
const PROGRESS: (&str, &str) =
    ("tandem_progress", "UPDATE tandem.applied SET lsn = $2::pg_lsn, applied_at = now() WHERE source = $1");
const COMMIT: (&str, &str) = ("tandem_commit", "COMMIT");
/// Makes one COMMIT durable when the session commits asynchronously.
const SYNC_COMMIT_ON: (&str, &str) = ("tandem_sync_on", "SET LOCAL synchronous_commit = on");

impl Applier {
    /// Adds one transaction to the open batch without waiting, unless
    /// [`MAX_IN_FLIGHT`] answers are outstanding. Transactions at or below
    /// what was already pushed are ignored. After a conflict with another
    /// writer, [`Self::take_restart`] says where to read on from.
    pub async fn push(&mut self, txn: &Transaction) -> Result<(), ApplyError> {
        if txn.commit_lsn <= self.pushed || self.restart.is_some() {
            return Ok(());
        }
        match self.push_changes(txn).await {
            Ok(()) => {
                if self.restart.is_some() {
                    return Ok(());
                }
                self.pushed = txn.commit_lsn;
                let open = self.open.get_or_insert(BatchEnd {
                    last: txn.commit_lsn,
                    txns: 0,
                    statements: 0,
                    in_txn: false,
                    durable: true,
                });
                open.last = txn.commit_lsn;
                open.txns += 1;
                Ok(())
            }
            Err(e) => {
                self.abandon().await;
                Err(e)
            }
        }
    }

    /// Ends the open batch: sends the progress update, COMMIT and Sync (or
    /// queues the marker of a batch that had nothing to apply) and writes
    /// everything out; does not wait for answers. `durable`: commit with
    /// synchronous_commit on even when async commit is allowed, so that the
    /// `applied` watch can move.
    pub async fn seal(&mut self, durable: bool) -> Result<(), ApplyError> {
        let Some(mut end) = self.open.take() else {
            return Ok(());
        };
        end.durable = durable || !self.async_commit;
        self.sealed += 1;
        if !end.in_txn {
            self.session.pipeline().marker(Tag::End(end));
            return Ok(());
        }
        let last = end.last.to_string();
        let pipe = self.session.pipeline();
        let encoded = pipe
            .bind_execute(PROGRESS.0, [Some(self.source.as_bytes()), Some(last.as_bytes())], Some(Tag::Progress))
            .and_then(|()| match end.durable && self.async_commit {
                true => pipe.bind_execute(SYNC_COMMIT_ON.0, [], Some(Tag::Setting)),
                false => Ok(()),
            })
            .and_then(|()| pipe.bind_execute(COMMIT.0, [], Some(Tag::End(end))));
        pipe.sync();
        self.chain = end.last;
        if let Err(e) = encoded {
            self.abandon().await;
            return Err(ApplyError::sql("encoding the end of a batch", e));
        }
        self.write_out().await
    }

    /// Writes everything encoded to the replica.
    async fn write_out(&mut self) -> Result<(), ApplyError> {
        if let Err(e) = self.session.write_out().await {
            self.abandon().await;
            return Err(ApplyError::sql("writing to the replica", e));
        }
        Ok(())
    }

    /// Encodes the statements of one transaction into the open batch.
    async fn push_changes(&mut self, txn: &Transaction) -> Result<(), ApplyError> {
        if !txn.database.is_empty() && txn.database != self.database {
            return Ok(());
        }
        let ours = |rel: &change::Relation| rel.schema == TANDEM_SCHEMA;
        for change in &txn.changes {
            if self.restart.is_some() {
                return Ok(());
            }
            match change {
                Change::Insert { rel, .. } | Change::Update { rel, .. } | Change::Delete { rel, .. } if !ours(rel) => {
                    self.send_row(change, rel)?;
                    self.sent().await?;
                }
                Change::Truncate { rels, cascade, restart_identity } => {
                    let rels: Vec<_> = rels.iter().filter(|r| !ours(r)).cloned().collect();
                    if !rels.is_empty() {
                        let sql = sql::truncate(&rels, *cascade, *restart_identity);
                        self.begin_if_needed()?;
                        let pipe = self.session.pipeline();
                        pipe.parse("", &sql).map_err(|e| ApplyError::sql("encoding TRUNCATE", e))?;
                        pipe.bind_execute("", [], Some(Tag::Truncate(sql)))
                            .map_err(|e| ApplyError::sql("encoding TRUNCATE", e))?;
                        self.sent().await?;
                    }
                }
                Change::Message { prefix, content } if prefix == DDL_PREFIX => match DdlMessage::parse(content) {
                    Ok(msg) => self.ddl(&msg).await?,
                    Err(e) => tracing::warn!(error = %e, "ignoring malformed DDL message"),
                },
                _ => {}
            }
        }
        Ok(())
    }

    /// Encodes one row change: Parse first if its shape is new, then Bind/Execute.
    fn send_row(&mut self, change: &Change, rel: &Arc<change::Relation>) -> Result<(), ApplyError> {
        self.key.clear();
        self.params.clear();
        let Some(kind) = sql::shape(change, &mut self.key, &mut self.params)? else {
            return Ok(());
        };
        self.begin_if_needed()?;
        let encode = |e| ApplyError::sql("encoding a row change", e);
        if let Some(prepared) = self.statements.get(rel, &self.key) {
            let tag = Tag::Row { kind, sql: prepared.sql.clone() };
            let params = self.params.iter().map(|p| p.as_bytes());
            return self.session.pipeline().bind_execute(&prepared.name, params, Some(tag)).map_err(encode);
        }
        // A new shape: prepare it in the same stream, right before its first use.
        let Some(text) = sql::render(change)? else {
            return Ok(());
        };
        self.close_evicted()?;
        self.next_statement += 1;
        let name: Box<str> = format!("tandem_{}", self.next_statement).into();
        let sql: Arc<str> = Arc::from(text.sql);
        let pipe = self.session.pipeline();
        pipe.parse(&name, &sql).map_err(encode)?;
        let params = self.params.iter().map(|p| p.as_bytes());
        pipe.bind_execute(&name, params, Some(Tag::Row { kind, sql: sql.clone() })).map_err(encode)?;
        self.statements.insert(rel, self.key.clone(), Prepared { name, sql, kind });
        self.close_evicted()
    }

    /// Closes the statements the cache forgot.
    fn close_evicted(&mut self) -> Result<(), ApplyError> {
        for name in self.statements.take_evicted() {
            self.session.pipeline().close_statement(&name).map_err(|e| ApplyError::sql("closing a statement", e))?;
        }
        Ok(())
    }

    /// Opens the batch's replica transaction before its first statement:
    /// BEGIN and the guard (preparing the fixed statements if needed).
    fn begin_if_needed(&mut self) -> Result<(), ApplyError> {
        if self.open.is_some_and(|b| b.in_txn) {
            return Ok(());
        }
        let open = self.open.get_or_insert(BatchEnd {
            last: self.pushed,
            txns: 0,
            statements: 0,
            in_txn: false,
            durable: true,
        });
        open.in_txn = true;
        let encode = |e| ApplyError::sql("encoding BEGIN", e);
        let pipe = self.session.pipeline();
        if !self.fixed_prepared {
            for (name, sql) in [BEGIN, GUARD, PROGRESS, COMMIT, SYNC_COMMIT_ON] {
                pipe.parse(name, sql).map_err(encode)?;
            }
            self.fixed_prepared = true;
        }
        let expect = self.chain.to_string();
        pipe.bind_execute(BEGIN.0, [], Some(Tag::Begin)).map_err(encode)?;
        pipe.bind_execute(GUARD.0, [Some(self.source.as_bytes()), Some(expect.as_bytes())], Some(Tag::Guard))
            .map_err(encode)
    }

    /// After a statement is encoded: counts it, makes room in the window of
    /// answers, and writes out a batch that grew large.
    async fn sent(&mut self) -> Result<(), ApplyError> {
        if let Some(open) = &mut self.open {
            open.statements += 1;
        }
        while self.in_flight() > MAX_IN_FLIGHT && self.restart.is_none() {
            self.complete_one().await?;
        }
        if self.session.pipeline().unwritten() >= WRITE_AT {
            self.write_out().await?;
        }
        Ok(())
    }

    /// DDL: a barrier inside the batch's transaction (see module docs).
    /// Everything before it is answered first (a Sync inside the open
    /// transaction makes the server flush), then the DDL runs, then every
    /// prepared row statement is closed.
    async fn ddl(&mut self, msg: &DdlMessage) -> Result<(), ApplyError> {
        self.begin_if_needed()?;
        if self.session.pipeline().group_open() {
            self.session.pipeline().sync();
        }
        self.drain().await?;
        if self.restart.is_some() {
            return Ok(());
        }
        if let Some(open) = &mut self.open {
            open.statements += 1;
        }
        let result = replay_ddl(&mut self.session, &self.database, msg).await;
        self.statements.clear();
        self.close_evicted()?;
        result
    }
}

/// Runs a captured DDL message's statements under the original role and
/// search_path, inside the current replica transaction.
async fn replay_ddl(session: &mut WriterSession<Tag>, database: &str, msg: &DdlMessage) -> Result<(), ApplyError> {
    let statements = ddl::replay_statements(msg);
    if statements.is_empty() {
        tracing::warn!(query = %msg.query, "captured DDL has no statement to replay (DDL run inside a function?)");
        return Ok(());
    }
    let err = |e: WriterError| ApplyError::Ddl { query: msg.query.clone(), source: e };
    session
        .query("SELECT pg_catalog.set_config('search_path', $1, true)", &[Some(&msg.search_path)])
        .await
        .map_err(err)?;
    let roles = session.query("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1", &[Some(&msg.role)]).await;
    let role_exists = match roles.map_err(err)?.first() {
        Some(row) => text_column(row, 0).map_err(err)?.is_some(),
        None => false,
    };
    if role_exists {
        session.simple_query(&format!("SET LOCAL ROLE {}", sql::quote_ident(&msg.role))).await.map_err(err)?;
    } else {
        tracing::warn!(role = %msg.role, "role of captured DDL missing on the replica; replaying as the replicator");
    }
    for stmt in &statements {
        tracing::info!(database, statement = %stmt, "replaying DDL");
        session.simple_query(stmt).await.map_err(err)?;
    }
    session.simple_query("RESET ROLE; RESET search_path").await.map_err(err)?;
    Ok(())
}
