//! Applying decoded transactions to one database of one replica, exactly once.
//!
//! Place in the data flow: change log → **applier** → replica. One
//! [`Applier`] owns one writer session (see [`super::session`]) and the
//! position it has applied. Transactions are grouped into batches (one
//! transaction, or many when catching up); each batch is ONE replica
//! transaction:
//!
//! ```text
//! BEGIN
//! <guard: lock the progress row, fail unless tandem.applied.lsn = <value after the previous batch>>
//! <row statements, DDL>      -- prepared per table and shape, sent without waiting
//! UPDATE tandem.applied SET lsn = <last commit of the batch> WHERE source = ..
//! COMMIT
//! ```
//!
//! Nothing waits for a round trip while a batch is sent: statements, the
//! progress update and COMMIT are pipelined (see [`super::inflight`]), and
//! the next batch is sent while the previous one commits. Answers are checked
//! in order as they arrive; a batch counts as applied (the `applied` watch
//! moves, which is what sync mode reports to the primary) only once its
//! COMMIT succeeded with no error before it.
//!
//! Exactly once: the guard locks the progress row, so a second writer (an old
//! process still running) waits, and it raises an error (division by zero)
//! unless the row holds exactly the position this applier expects: the end
//! of the previous batch it sent. The error aborts the replica transaction,
//! so everything sent after it in that transaction fails and its COMMIT
//! becomes a ROLLBACK; and since the row then does not move, the guards of
//! batches pipelined behind it fail too. So a batch commits only if every
//! transaction before it is applied and none of its own is, and a crash at
//! any point neither loses nor repeats a transaction. A failed guard means
//! another writer got there first: the applier re-reads the row and carries
//! on from it. DDL is a barrier: everything before it is answered first, and
//! prepared statements are dropped after it, since their tables may have
//! changed.

use std::sync::Arc;

use tandem_core::Lsn;
use tokio::sync::watch;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, Statement};

use super::inflight::{InFlight, Reply, RequestFuture};
use super::session::{self, lsn_to_pg};
use super::sql::{self, RowKind};
use super::statements::{Prepared, StatementCache};
use super::text::TextParam;
use super::ApplyError;
use crate::change::{self, Change, Transaction};
use crate::copy::TANDEM_SCHEMA;
use crate::ddl::{self, DdlMessage, DDL_PREFIX};
use crate::status::ReplicaReporter;

/// Requests in flight before the applier waits for the oldest answer: deep
/// enough that the replica never runs dry while this process is descheduled
/// for a few milliseconds, small enough to bound memory.
const MAX_IN_FLIGHT: usize = 4096;
/// Prepared statements kept per session before the cache is emptied.
const MAX_PREPARED: usize = 1024;

/// Locks the progress row and fails (22012) unless it holds `$2`.
const GUARD_SQL: &str = "WITH held AS (SELECT 1 FROM tandem.applied WHERE source = $1 AND lsn = $2 FOR UPDATE) \
                         SELECT 1 / count(*)::int FROM held";
/// Moves the progress row to the end of the batch (the guard holds its lock).
const PROGRESS_SQL: &str = "UPDATE tandem.applied SET lsn = $2, applied_at = now() WHERE source = $1";

/// What applying a batch did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The batch was committed on the replica; `statements` row/DDL statements ran.
    Committed {
        /// Statements executed.
        statements: usize,
    },
    /// Every transaction of the batch was applied before (or had nothing for
    /// this database); only the in-memory position moved.
    Skipped,
}

/// What a request in flight was, for checking its answer.
enum Tag {
    Begin,
    Guard,
    Row {
        kind: RowKind,
        sql: Arc<str>,
    },
    Truncate(String),
    Progress,
    /// The COMMIT of a batch (or, with `in_txn` false, the in-order marker of
    /// a batch that needed no replica transaction).
    End(BatchEnd),
}

#[derive(Clone, Copy, Debug)]
struct BatchEnd {
    last: Lsn,
    txns: usize,
    statements: usize,
    in_txn: bool,
    /// Committed with synchronous_commit on (always, unless async commit is allowed).
    durable: bool,
}

/// Why a batch did not commit.
enum Failure {
    /// The guard found the progress row elsewhere: another writer applied.
    Conflict,
    /// Anything else.
    Error(ApplyError),
}

/// Applies transactions to one replica database (see module docs).
pub struct Applier {
    client: Arc<Client>,
    database: String,
    source: String,
    /// Every commit LSN at or below it is applied (committed, or nothing to apply).
    progress: Lsn,
    /// Every commit LSN at or below it is applied and durable on the replica
    /// (what the `applied` watch shows); equals `progress` unless batches
    /// were committed with synchronous_commit off.
    durable: Lsn,
    /// Whether batches may commit with synchronous_commit off (see [`Self::set_async_commit`]).
    async_commit: bool,
    /// Newest commit LSN taken into a batch (sent or skipped).
    pushed: Lsn,
    /// The progress row's value as of the last commit seen.
    row: Lsn,
    /// The progress row's value once every batch sent has committed: what the next guard expects.
    chain: Lsn,
    guard_stmt: Statement,
    progress_stmt: Statement,
    statements: StatementCache,
    inflight: InFlight<Tag>,
    /// The batch being sent (not sealed yet).
    open: Option<BatchEnd>,
    /// Sealed batches whose end is still in flight.
    sealed: usize,
    /// Set when a conflict moved `progress`: the caller must read on from there.
    restart: Option<Lsn>,
    /// Outcome of the last batch whose end was answered.
    last_outcome: Option<Applied>,
    key: Vec<u8>,
    applied: watch::Sender<Lsn>,
    reporter: Option<ReplicaReporter>,
}

impl Applier {
    /// Opens a writer session on `database` of `replica` and reads the
    /// progress of `source`; the database must have been initially copied
    /// (its progress row exists). `applied` is set to the progress found and
    /// then to every position applied.
    pub async fn connect(
        replica: &Config,
        database: &str,
        source: &str,
        applied: watch::Sender<Lsn>,
        reporter: Option<ReplicaReporter>,
    ) -> Result<Applier, ApplyError> {
        let client = session::connect_writer(replica, database).await.map_err(ApplyError::Connect)?;
        // A committed write with synchronous_commit on flushes the replica's
        // WAL, so the progress row read next is durable, not just visible
        // (an earlier session may have committed with synchronous_commit off).
        client
            .batch_execute("SELECT pg_catalog.txid_current()")
            .await
            .map_err(|e| ApplyError::sql("flushing the replica's WAL", e))?;
        let progress = session::read_progress(&client, source)
            .await
            .map_err(|e| ApplyError::sql("reading the progress row", e))?
            .ok_or_else(|| ApplyError::NotInitialized {
                database: database.to_owned(),
                source_name: source.to_owned(),
            })?;
        let prepare = |sql: &'static str| {
            let client = &client;
            async move { client.prepare(sql).await.map_err(|e| ApplyError::sql("preparing the progress statements", e)) }
        };
        let (guard_stmt, progress_stmt) = futures::try_join!(prepare(GUARD_SQL), prepare(PROGRESS_SQL))?;
        tracing::info!(database, source, %progress, "applier connected");
        let applier = Applier {
            client: Arc::new(client),
            database: database.to_owned(),
            source: source.to_owned(),
            progress,
            durable: progress,
            async_commit: false,
            pushed: progress,
            row: progress,
            chain: progress,
            guard_stmt,
            progress_stmt,
            statements: StatementCache::new(MAX_PREPARED),
            inflight: InFlight::default(),
            open: None,
            sealed: 0,
            restart: None,
            last_outcome: None,
            key: Vec::new(),
            applied,
            reporter,
        };
        if let Some(r) = &applier.reporter {
            r.record_position(progress);
        }
        applier.publish(0);
        Ok(applier)
    }

    /// The newest commit LSN this database holds (everything at or below it is applied).
    pub fn progress(&self) -> Lsn {
        self.progress
    }

    /// Whether the writer session's connection is gone (the applier must be reopened).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Decodes change-log records and applies them as one batch.
    pub async fn apply_records(&mut self, records: &[(Lsn, bytes::Bytes)]) -> Result<Applied, ApplyError> {
        let txns =
            records.iter().map(|(_, payload)| change::decode_bytes(payload.clone())).collect::<Result<Vec<_>, _>>()?;
        self.apply_batch(&txns).await
    }

    /// Applies one transaction (see [`Self::apply_batch`]).
    pub async fn apply(&mut self, txn: &Transaction) -> Result<Applied, ApplyError> {
        self.apply_batch(std::slice::from_ref(txn)).await
    }

    /// Applies transactions given in commit order in one replica transaction
    /// and waits for the outcome; those at or below [`Self::progress`] are skipped.
    pub async fn apply_batch(&mut self, txns: &[Transaction]) -> Result<Applied, ApplyError> {
        self.finish().await?;
        self.restart = None;
        self.last_outcome = None;
        for txn in txns {
            self.push(txn).await?;
            if self.restart.take().is_some() {
                self.finish().await?;
                return Ok(Applied::Skipped);
            }
        }
        self.finish().await?;
        if self.restart.take().is_some() {
            return Ok(Applied::Skipped);
        }
        Ok(self.last_outcome.take().unwrap_or(Applied::Skipped))
    }

    /// Lets batches commit with `synchronous_commit = off` unless sealed as
    /// durable. Only for async mode, where nothing is promised about the
    /// replica; the `applied` watch then moves only at durable commits.
    ///
    /// Why this is safe: the progress row is committed in the same replica
    /// transaction as the data it covers, so if the replica crashes and loses
    /// its last asynchronous commits, the row rolls back with them and the
    /// applier re-applies them from the change log, which still holds them:
    /// the change log is trimmed only up to the `applied` watch, and that
    /// moves only when a synchronous commit (which flushes the replica's WAL
    /// up to itself, so every earlier commit too) or the WAL flush at connect
    /// made everything up to it durable. Sync mode never calls this: every
    /// batch commits durably before the primary is told it is applied.
    pub async fn set_async_commit(&mut self, on: bool) -> Result<(), ApplyError> {
        self.finish().await?;
        let value = if on { "off" } else { "on" };
        self.client
            .batch_execute(&format!("SET synchronous_commit = {value}"))
            .await
            .map_err(|e| ApplyError::sql("setting synchronous_commit", e))?;
        self.async_commit = on;
        Ok(())
    }

    /// With async commit: makes everything applied so far durable (one
    /// synchronous commit flushes the replica's WAL past every earlier
    /// commit) and moves the `applied` watch; for when the last batch before
    /// going idle committed asynchronously. No-op otherwise or with requests in flight.
    pub async fn make_durable(&mut self) -> Result<(), ApplyError> {
        if self.durable >= self.progress || !self.inflight.is_empty() || self.open.is_some() {
            return Ok(());
        }
        self.client
            .batch_execute("BEGIN; SET LOCAL synchronous_commit = on; SELECT pg_catalog.txid_current(); COMMIT")
            .await
            .map_err(|e| ApplyError::sql("flushing the replica's WAL", e))?;
        self.durable = self.progress;
        self.publish(0);
        Ok(())
    }

    // --- streaming interface (the apply task) ---------------------------------------------

    /// Adds a transaction to the open batch (opening one if needed) and sends
    /// its statements without waiting for their answers, except when
    /// [`MAX_IN_FLIGHT`] requests are out. Transactions at or below what was
    /// already pushed are ignored. After a conflict with another writer,
    /// [`Self::take_restart`] says where to read on from.
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

    /// Ends the open batch: sends the progress update and COMMIT (or queues
    /// the marker of a batch that had nothing to apply). Does not wait.
    /// `durable`: commit with synchronous_commit on even when async commit
    /// is allowed, so that the `applied` watch can move.
    pub fn seal(&mut self, durable: bool) {
        let Some(mut end) = self.open.take() else {
            return;
        };
        end.durable = durable || !self.async_commit;
        self.sealed += 1;
        if !end.in_txn {
            self.inflight.push_marker(Tag::End(end));
            return;
        }
        let (client, stmt, source, last) =
            (self.client.clone(), self.progress_stmt.clone(), self.source.clone(), lsn_to_pg(end.last));
        self.inflight.push(Box::pin(async move { client.execute(&stmt, &[&source, &last]).await }), Tag::Progress);
        self.chain = end.last;
        let client = self.client.clone();
        let commit =
            if end.durable && self.async_commit { "SET LOCAL synchronous_commit = on; COMMIT" } else { "COMMIT" };
        self.inflight.push(Box::pin(async move { client.batch_execute(commit).await.map(|()| 0) }), Tag::End(end));
    }

    /// Transactions and statements in the open batch, if one is open.
    pub fn open_batch(&self) -> Option<(usize, usize)> {
        self.open.map(|b| (b.txns, b.statements))
    }

    /// Sealed batches not yet answered.
    pub fn sealed_in_flight(&self) -> usize {
        self.sealed
    }

    /// Requests whose answers have not been looked at.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Where to read on after a conflict with another writer moved the
    /// position (`None` normally); taking it clears it.
    pub fn take_restart(&mut self) -> Option<Lsn> {
        self.restart.take()
    }

    /// Waits for the oldest answer and checks it; completing a batch moves
    /// the applied position. Do not call with nothing in flight.
    pub async fn complete_one(&mut self) -> Result<(), ApplyError> {
        let Some((reply, tag)) = self.inflight.next().await else {
            return Ok(());
        };
        self.check(reply, tag).await
    }

    /// The oldest answer, for callers that wait on other things at the same
    /// time (cancel-safe: nothing is lost if the future is dropped); hand it
    /// to [`Self::check_answer`] before anything else.
    pub async fn next_answer(&mut self) -> Option<Answer> {
        self.inflight.next().await.map(|(reply, tag)| Answer { reply, tag })
    }

    /// Checks an answer taken with [`Self::next_answer`].
    pub async fn check_answer(&mut self, answer: Answer) -> Result<(), ApplyError> {
        self.check(answer.reply, answer.tag).await
    }

    /// Seals the open batch and waits for every answer.
    pub async fn finish(&mut self) -> Result<(), ApplyError> {
        self.seal(true);
        self.drain().await
    }

    // --- internals --------------------------------------------------------------------------

    async fn drain(&mut self) -> Result<(), ApplyError> {
        while let Some((reply, tag)) = self.inflight.next().await {
            self.check(reply, tag).await?;
        }
        Ok(())
    }

    /// Checks one answer in order; on a failure, cleans up (see [`Self::recover`]).
    async fn check(&mut self, reply: Reply, tag: Tag) -> Result<(), ApplyError> {
        match (reply, tag) {
            (Err(e), Tag::Guard) if e.code() == Some(&SqlState::DIVISION_BY_ZERO) => {
                self.recover(Failure::Conflict).await
            }
            (Err(e), tag) => {
                let context = match tag {
                    Tag::Row { sql, .. } => format!("applying `{sql}`"),
                    Tag::Truncate(sql) => format!("running `{sql}`"),
                    Tag::Begin => "starting a replica transaction".to_owned(),
                    Tag::Guard | Tag::Progress => "updating the progress row".to_owned(),
                    Tag::End(_) => "committing on the replica".to_owned(),
                };
                self.recover(Failure::Error(ApplyError::sql(context, e))).await
            }
            (Ok(0), Tag::Row { kind, sql }) if kind != RowKind::Insert => {
                tracing::warn!(database = %self.database, statement = %sql,
                    "row to {} not found on the replica; it has diverged from the primary",
                    kind.as_str().to_lowercase());
                Ok(())
            }
            (Ok(_), Tag::End(end)) => {
                self.sealed = self.sealed.saturating_sub(1);
                if end.in_txn {
                    self.row = end.last;
                    self.last_outcome = Some(Applied::Committed { statements: end.statements });
                } else {
                    self.last_outcome = Some(Applied::Skipped);
                }
                // A durable commit flushed everything before it; a marker is
                // as durable as what came before it.
                let durable = if end.in_txn { end.durable } else { self.durable == self.progress };
                self.advance(end.last, 0);
                if durable {
                    self.durable = self.progress;
                }
                self.publish(end.txns);
                tracing::trace!(statements = end.statements, last = %end.last, "batch done");
                Ok(())
            }
            (Ok(_), _) => Ok(()),
        }
    }

    /// After a failed request: everything still in flight was sent after it
    /// and is doomed (same replica transaction, or a later batch whose guard
    /// expects a position that now will not be reached), so it is drained
    /// unread and the open transaction rolled back. A conflict re-reads the
    /// progress row and asks the caller to read on from there.
    async fn recover(&mut self, failure: Failure) -> Result<(), ApplyError> {
        self.abandon().await;
        match failure {
            Failure::Error(e) => Err(e),
            Failure::Conflict => {
                let found = session::read_progress(self.client.as_ref(), &self.source)
                    .await
                    .map_err(|e| ApplyError::sql("re-reading the progress row", e))?
                    .unwrap_or(self.row);
                tracing::warn!(database = %self.database, %found, expected = %self.chain,
                    "progress row moved by another writer; continuing from it");
                self.row = found;
                self.chain = found;
                self.advance(found, 0);
                // The other writer's commit may not be durable yet: only a
                // later durable commit of ours moves the watch past it.
                self.pushed = self.progress;
                self.restart = Some(self.progress);
                self.last_outcome = Some(Applied::Skipped);
                Ok(())
            }
        }
    }

    /// Drops everything in flight and the open batch (rolling back its transaction).
    async fn abandon(&mut self) {
        while self.inflight.next().await.is_some() {}
        let in_txn = self.open.take().is_some_and(|b| b.in_txn);
        if in_txn && !self.client.is_closed() {
            let _ = self.client.batch_execute("ROLLBACK").await;
        }
        self.sealed = 0;
        self.chain = self.row;
        self.pushed = self.progress;
    }

    fn advance(&mut self, lsn: Lsn, txns: usize) {
        if lsn > self.progress {
            self.progress = lsn;
        }
        if !self.async_commit {
            self.durable = self.progress;
        }
        self.publish(txns);
    }

    /// The `applied` watch shows the durable position; the status shows what is visible.
    fn publish(&self, txns: usize) {
        let durable = self.durable;
        self.applied.send_if_modified(|v| {
            let newer = durable > *v;
            if newer {
                *v = durable;
            }
            newer
        });
        if txns > 0 {
            if let Some(r) = &self.reporter {
                r.record_applied(self.progress, txns as u64);
            }
        }
    }

    /// Sends the statements of one transaction into the open batch.
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
                    self.send_row(change, rel).await?;
                }
                Change::Truncate { rels, cascade, restart_identity } => {
                    let rels: Vec<_> = rels.iter().filter(|r| !ours(r)).cloned().collect();
                    if !rels.is_empty() {
                        let sql = sql::truncate(&rels, *cascade, *restart_identity);
                        self.begin_if_needed();
                        let (client, text) = (self.client.clone(), sql.clone());
                        self.send(
                            Box::pin(async move { client.batch_execute(&text).await.map(|()| 0) }),
                            Tag::Truncate(sql),
                        )
                        .await?;
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

    async fn send_row(&mut self, change: &Change, rel: &Arc<change::Relation>) -> Result<(), ApplyError> {
        self.key.clear();
        let mut params: Vec<TextParam> = Vec::with_capacity(rel.columns.len() + 1);
        let Some(kind) = sql::shape(change, &mut self.key, &mut params)? else {
            return Ok(());
        };
        let prepared = match self.statements.get(rel, &self.key) {
            Some(p) => p.clone(),
            None => {
                let Some(p) = self.prepare(change, kind).await? else {
                    return Ok(());
                };
                self.statements.insert(rel, self.key.clone(), p.clone());
                p
            }
        };
        self.begin_if_needed();
        let Prepared { stmt, sql, kind } = prepared;
        let client = self.client.clone();
        self.send(Box::pin(async move { client.execute_raw(&stmt, params).await }), Tag::Row { kind, sql }).await
    }

    /// Prepares the statement of a shape seen for the first time. The answer
    /// comes after everything in flight, so those answers are taken first
    /// (the connection would otherwise wait for them to be read).
    /// `None` if a conflict came up meanwhile (see [`Self::take_restart`]).
    async fn prepare(&mut self, change: &Change, kind: RowKind) -> Result<Option<Prepared>, ApplyError> {
        self.drain().await?;
        let Some(text) = sql::render(change)? else {
            return Ok(None);
        };
        if self.restart.is_some() {
            return Ok(None);
        }
        match self.client.prepare(&text.sql).await {
            Ok(stmt) => Ok(Some(Prepared { stmt, sql: Arc::from(text.sql), kind })),
            Err(e) => Err(ApplyError::sql(format!("preparing `{}`", text.sql), e)),
        }
    }

    /// Opens the batch's replica transaction before its first statement.
    fn begin_if_needed(&mut self) {
        if self.open.is_some_and(|b| b.in_txn) {
            return;
        }
        let open = self.open.get_or_insert(BatchEnd {
            last: self.pushed,
            txns: 0,
            statements: 0,
            in_txn: false,
            durable: true,
        });
        open.in_txn = true;
        let client = self.client.clone();
        self.inflight.push(Box::pin(async move { client.batch_execute("BEGIN").await.map(|()| 0) }), Tag::Begin);
        let (client, stmt, source, expect) =
            (self.client.clone(), self.guard_stmt.clone(), self.source.clone(), lsn_to_pg(self.chain));
        self.inflight.push(Box::pin(async move { client.execute(&stmt, &[&source, &expect]).await }), Tag::Guard);
    }

    /// Sends one statement of the open batch, first making room in the window.
    async fn send(&mut self, request: RequestFuture, tag: Tag) -> Result<(), ApplyError> {
        if let Some(open) = &mut self.open {
            open.statements += 1;
        }
        self.inflight.push(request, tag);
        while self.inflight.len() > MAX_IN_FLIGHT && self.restart.is_none() {
            self.complete_one().await?;
        }
        Ok(())
    }

    /// DDL: a barrier inside the batch's transaction (see module docs).
    async fn ddl(&mut self, msg: &DdlMessage) -> Result<(), ApplyError> {
        self.begin_if_needed();
        self.drain().await?;
        if self.restart.is_some() {
            return Ok(());
        }
        if let Some(open) = &mut self.open {
            open.statements += 1;
        }
        let result = replay_ddl(&self.client, &self.database, msg).await;
        self.statements.clear();
        result
    }
}

/// One answer taken out of flight by [`Applier::next_answer`], not yet checked.
pub struct Answer {
    reply: Reply,
    tag: Tag,
}

/// Runs a captured DDL message's statements under the original role and
/// search_path, inside the current replica transaction.
async fn replay_ddl(client: &Client, database: &str, msg: &DdlMessage) -> Result<(), ApplyError> {
    let statements = ddl::replay_statements(msg);
    if statements.is_empty() {
        tracing::warn!(query = %msg.query, "captured DDL has no statement to replay (DDL run inside a function?)");
        return Ok(());
    }
    let err = |e| ApplyError::Ddl { query: msg.query.clone(), source: e };
    client.execute("SELECT pg_catalog.set_config('search_path', $1, true)", &[&msg.search_path]).await.map_err(err)?;
    let role_exists = client
        .query_opt("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1", &[&msg.role])
        .await
        .map_err(err)?
        .is_some();
    if role_exists {
        client.batch_execute(&format!("SET LOCAL ROLE {}", sql::quote_ident(&msg.role))).await.map_err(err)?;
    } else {
        tracing::warn!(role = %msg.role, "role of captured DDL missing on the replica; replaying as the replicator");
    }
    for stmt in &statements {
        tracing::info!(database, statement = %stmt, "replaying DDL");
        client.batch_execute(stmt).await.map_err(err)?;
    }
    client.batch_execute("RESET ROLE; RESET search_path").await.map_err(err)?;
    Ok(())
}
