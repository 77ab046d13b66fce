//! Turning transactions into the messages of a batch.
//!
//! Place in the data flow: change log → applier → **batch encoding** →
//! writer session. [`Applier::push`] adds a transaction's row changes to the
//! open batch's buffer; at a barrier (TRUNCATE, DDL, a new description of a
//! relation already buffered) and at [`Applier::seal`] the buffer is planned
//! ([`super::coalesce`]: grouped by table, INSERTs merged, superseded UPDATEs
//! dropped) and encoded: BEGIN and guard before the first statement, Parse
//! only for shapes not prepared yet, Bind/Execute per statement; the seal
//! adds the progress update, COMMIT and the batch's one Sync and writes it
//! out. Nothing here waits for the replica unless the window of answers in
//! flight is full or DDL comes along. See the applier's module docs for the
//! exactly-once argument.

use std::sync::Arc;

use super::applier::{Applier, MAX_IN_FLIGHT};
use super::coalesce::{self, Step};
use super::facts::TableFacts;
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
            Ok(counted) => {
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
                open.statements += counted;
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
        if let Err(e) = self.flush_pending().await {
            self.abandon().await;
            return Err(e);
        }
        if self.restart.is_some() {
            return Ok(());
        }
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

    /// Plans, encodes and writes the open batch's buffered changes without
    /// sealing it: for when the change log has nothing more right now, so
    /// the replica works on them while earlier batches commit.
    pub async fn send_buffered(&mut self) -> Result<(), ApplyError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.flush_pending().await {
            self.abandon().await;
            return Err(e);
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

    /// Buffers the row changes of one transaction in the open batch and runs
    /// its barriers; returns how many changes and DDL statements it counted.
    async fn push_changes(&mut self, txn: &Transaction) -> Result<usize, ApplyError> {
        if !txn.database.is_empty() && txn.database != self.database {
            return Ok(0);
        }
        let ours = |rel: &change::Relation| rel.schema == TANDEM_SCHEMA;
        let mut counted = 0;
        for change in &txn.changes {
            if self.restart.is_some() {
                return Ok(counted);
            }
            match change {
                Change::Insert { rel, .. } | Change::Update { rel, .. } | Change::Delete { rel, .. } if !ours(rel) => {
                    let mut change = change.clone();
                    match self.pending_rels.get(&rel.oid) {
                        Some(known) if Arc::ptr_eq(known, rel) => {}
                        // Same description, another transaction's copy: share one
                        // `Arc`, so later lookups are pointer comparisons.
                        Some(known) if **known == **rel => set_relation(&mut change, known.clone()),
                        known => {
                            if known.is_some() {
                                // The relation changed within the batch: what came before goes first.
                                self.flush_pending().await?;
                            }
                            self.pending_rels.insert(rel.oid, rel.clone());
                        }
                    }
                    self.pending.push(change);
                    counted += 1;
                }
                Change::Truncate { rels, cascade, restart_identity } => {
                    let rels: Vec<_> = rels.iter().filter(|r| !ours(r)).cloned().collect();
                    if !rels.is_empty() {
                        self.flush_pending().await?;
                        let sql = sql::truncate(&rels, *cascade, *restart_identity);
                        counted += 1;
                        self.begin_if_needed()?;
                        let pipe = self.session.pipeline();
                        pipe.parse("", &sql).map_err(|e| ApplyError::sql("encoding TRUNCATE", e))?;
                        pipe.bind_execute("", [], Some(Tag::Truncate(sql)))
                            .map_err(|e| ApplyError::sql("encoding TRUNCATE", e))?;
                        self.sent().await?;
                    }
                }
                Change::Message { prefix, content } if prefix == DDL_PREFIX => match DdlMessage::parse(content) {
                    Ok(msg) => {
                        counted += 1;
                        self.ddl(&msg).await?
                    }
                    Err(e) => tracing::warn!(error = %e, "ignoring malformed DDL message"),
                },
                _ => {}
            }
        }
        Ok(counted)
    }

    /// Plans and encodes the buffered row changes.
    async fn flush_pending(&mut self) -> Result<(), ApplyError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        self.pending_rels.clear();
        let result = self.send_planned(&pending).await;
        // Keep the buffer's allocation for the next batch.
        self.pending = pending;
        self.pending.clear();
        result
    }

    async fn send_planned(&mut self, pending: &[Change]) -> Result<(), ApplyError> {
        let facts = &self.facts;
        let steps = coalesce::plan(pending, facts.independent, |rel| facts.collapsible(rel));
        for step in &steps {
            if self.restart.is_some() {
                break;
            }
            match step {
                Step::One(change) => self.send_row(change)?,
                Step::Inserts(rows) => self.send_inserts(rows)?,
            }
            self.sent().await?;
        }
        Ok(())
    }

    /// Encodes INSERTs of one table sending the same columns as multi-row
    /// INSERTs, one prepared statement per row count ([`coalesce::bucket`]).
    fn send_inserts(&mut self, rows: &[&Change]) -> Result<(), ApplyError> {
        let mut at = 0;
        while let Some(&first) = rows.get(at) {
            let Change::Insert { rel, new } = first else {
                self.send_row(first)?;
                at += 1;
                continue;
            };
            let n = coalesce::bucket(rows.len() - at, rel.columns.len());
            let chunk = &rows[at..(at + n).min(rows.len())];
            at += chunk.len();
            if chunk.len() == 1 {
                self.send_row(first)?;
                continue;
            }
            self.key.clear();
            self.params.clear();
            for (i, change) in chunk.iter().enumerate() {
                let key = if i == 0 { &mut self.key } else { &mut self.scratch };
                key.clear();
                sql::shape(change, key, &mut self.params)?;
            }
            self.key.push(b'#');
            self.key.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
            let encode = |e| ApplyError::sql("encoding a multi-row INSERT", e);
            self.begin_if_needed()?;
            if let Some(prepared) = self.statements.get(rel, &self.key) {
                let tag = Tag::Row { kind: sql::RowKind::Insert, sql: prepared.sql.clone() };
                let params = self.params.iter().map(|p| p.as_bytes());
                self.session.pipeline().bind_execute(&prepared.name, params, Some(tag)).map_err(encode)?;
                continue;
            }
            let text = sql::insert_rows(rel, new, chunk.len())?;
            self.prepare_and_send(rel, sql::RowKind::Insert, text)?;
        }
        Ok(())
    }

    /// Encodes one row change: Parse first if its shape is new, then Bind/Execute.
    fn send_row(&mut self, change: &Change) -> Result<(), ApplyError> {
        let (Change::Insert { rel, .. } | Change::Update { rel, .. } | Change::Delete { rel, .. }) = change else {
            return Ok(());
        };
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
        let Some(text) = sql::render(change)? else {
            return Ok(());
        };
        self.prepare_and_send(rel, kind, text.sql)
    }

    /// A new shape (`self.key`, parameters in `self.params`): prepares it in
    /// the same stream, right before its first use, and sends it.
    fn prepare_and_send(
        &mut self,
        rel: &Arc<change::Relation>,
        kind: sql::RowKind,
        text: String,
    ) -> Result<(), ApplyError> {
        let encode = |e| ApplyError::sql("encoding a row change", e);
        self.close_evicted()?;
        self.next_statement += 1;
        let name: Box<str> = format!("tandem_{}", self.next_statement).into();
        let sql: Arc<str> = Arc::from(text);
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
        self.flush_pending().await?;
        self.begin_if_needed()?;
        if self.session.pipeline().group_open() {
            self.session.pipeline().sync();
        }
        self.drain().await?;
        if self.restart.is_some() {
            return Ok(());
        }
        replay_ddl(&mut self.session, &self.database, msg).await?;
        // The DDL may have added tables, indexes or inheritance: plan with the catalog as it is now.
        self.facts =
            TableFacts::load(&mut self.session).await.map_err(|e| ApplyError::sql("reading table facts", e))?;
        self.statements.clear();
        self.close_evicted()
    }
}

/// Points a row change at `rel` (an equal description of its relation).
fn set_relation(change: &mut Change, rel: Arc<change::Relation>) {
    if let Change::Insert { rel: r, .. } | Change::Update { rel: r, .. } | Change::Delete { rel: r, .. } = change {
        *r = rel;
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
