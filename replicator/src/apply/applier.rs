//! Applying decoded transactions to one database of one replica, exactly once.
//!
//! Place in the data flow: change log → **applier** → replica. One
//! [`Applier`] owns one writer session (see [`super::session`]) and the
//! position it has applied. A batch of transactions (one, or several when
//! catching up) becomes ONE replica transaction:
//!
//! ```text
//! BEGIN
//! UPDATE tandem.applied SET lsn = <last commit> WHERE source = .. AND lsn < <first commit>
//! <row statements, DDL>               -- pipelined, prepared per table and shape
//! COMMIT
//! ```
//!
//! The progress update comes first: it locks the progress row, so a second
//! writer (an old process still running) waits and then finds nothing to do,
//! and it must hit exactly one row, otherwise the batch was applied already
//! and is rolled back. So a crash at any point neither loses nor repeats a
//! transaction. Statements of a batch are sent without waiting for each
//! answer (tokio-postgres pipelines requests queued on one connection); DDL
//! is a barrier: everything before it is finished first, and prepared
//! statements are dropped after it, since their tables may have changed.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use bytes::Bytes;
use tandem_core::Lsn;
use tokio::sync::watch;
use tokio_postgres::types::PgLsn;
use tokio_postgres::{Client, Config, Statement};

use super::session::{self, lsn_to_pg};
use super::sql::{self, RowStatement};
use super::text::TextParam;
use super::ApplyError;
use crate::change::{self, Change, Transaction};
use crate::copy::TANDEM_SCHEMA;
use crate::ddl::{self, DdlMessage, DDL_PREFIX};
use crate::status::ReplicaReporter;

/// Statements sent before waiting for their answers.
const PIPELINE_DEPTH: usize = 256;
/// Prepared statements kept per session before the cache is emptied.
const MAX_PREPARED: usize = 1024;

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

/// One step of a replica transaction.
enum Step {
    Row(RowStatement, &'static str),
    Simple(String),
    Ddl(DdlMessage),
}

/// One statement in flight in a pipeline.
enum Op<'a> {
    Progress { first: PgLsn, last: PgLsn },
    Row { stmt: Statement, params: &'a [TextParam], kind: &'static str, sql: &'a str },
    Simple(&'a str),
}

/// Applies transactions to one replica database (see module docs).
pub struct Applier {
    client: Client,
    database: String,
    source: String,
    progress: Lsn,
    progress_stmt: Statement,
    statements: HashMap<String, Statement>,
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
        let progress = session::read_progress(&client, source)
            .await
            .map_err(|e| ApplyError::sql("reading the progress row", e))?
            .ok_or_else(|| ApplyError::NotInitialized {
                database: database.to_owned(),
                source_name: source.to_owned(),
            })?;
        let progress_stmt = client
            .prepare(
                "UPDATE tandem.applied SET lsn = $2, applied_at = now() \
                 WHERE source = $1 AND lsn < $3",
            )
            .await
            .map_err(|e| ApplyError::sql("preparing the progress update", e))?;
        applied.send_if_modified(|v| {
            let newer = progress > *v;
            if newer {
                *v = progress;
            }
            newer
        });
        if let Some(r) = &reporter {
            r.record_position(progress);
        }
        tracing::info!(database, source, %progress, "applier connected");
        Ok(Applier {
            client,
            database: database.to_owned(),
            source: source.to_owned(),
            progress,
            progress_stmt,
            statements: HashMap::new(),
            applied,
            reporter,
        })
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
    pub async fn apply_records(&mut self, records: &[(Lsn, Bytes)]) -> Result<Applied, ApplyError> {
        let txns =
            records.iter().map(|(_, payload)| change::decode_bytes(payload.clone())).collect::<Result<Vec<_>, _>>()?;
        self.apply_batch(&txns).await
    }

    /// Applies one transaction (see [`Self::apply_batch`]).
    pub async fn apply(&mut self, txn: &Transaction) -> Result<Applied, ApplyError> {
        self.apply_batch(std::slice::from_ref(txn)).await
    }

    /// Applies transactions given in commit order, in one replica
    /// transaction; those at or below [`Self::progress`] are skipped.
    pub async fn apply_batch(&mut self, txns: &[Transaction]) -> Result<Applied, ApplyError> {
        let todo: Vec<&Transaction> = txns.iter().filter(|t| t.commit_lsn > self.progress).collect();
        let (Some(first), Some(last)) = (todo.first(), todo.last()) else {
            return Ok(Applied::Skipped);
        };
        let (first_lsn, last_lsn) = (first.commit_lsn, last.commit_lsn);
        let mut steps = Vec::new();
        for txn in &todo {
            self.plan(txn, &mut steps)?;
        }
        if steps.is_empty() {
            // Nothing for this database: no replica transaction needed. The
            // progress row stays behind; on restart these are read and skipped again.
            self.advance(last_lsn, todo.len());
            return Ok(Applied::Skipped);
        }
        match self.run(&steps, first_lsn, last_lsn).await {
            Ok(true) => {
                self.advance(last_lsn, todo.len());
                Ok(Applied::Committed { statements: steps.len() })
            }
            Ok(false) => {
                // Someone else applied this batch: believe the progress row.
                let _ = self.client.batch_execute("ROLLBACK").await;
                let found = session::read_progress(&self.client, &self.source)
                    .await
                    .map_err(|e| ApplyError::sql("re-reading the progress row", e))?
                    .unwrap_or(self.progress);
                tracing::warn!(database = %self.database, %found, batch_first = %first_lsn,
                    "batch already applied by another writer; skipping");
                self.advance(found.max(self.progress), 0);
                Ok(Applied::Skipped)
            }
            Err(e) => {
                if !self.client.is_closed() {
                    let _ = self.client.batch_execute("ROLLBACK").await;
                }
                Err(e)
            }
        }
    }

    fn advance(&mut self, lsn: Lsn, txns: usize) {
        if lsn > self.progress {
            self.progress = lsn;
        }
        let progress = self.progress;
        self.applied.send_if_modified(|v| {
            let newer = progress > *v;
            if newer {
                *v = progress;
            }
            newer
        });
        if let Some(r) = &self.reporter {
            r.record_applied(progress, txns as u64);
        }
    }

    /// Turns one transaction into steps.
    fn plan(&self, txn: &Transaction, steps: &mut Vec<Step>) -> Result<(), ApplyError> {
        if !txn.database.is_empty() && txn.database != self.database {
            return Ok(());
        }
        let ours = |rel: &change::Relation| rel.schema == TANDEM_SCHEMA;
        for change in &txn.changes {
            match change {
                Change::Insert { rel, new } if !ours(rel) => steps.push(Step::Row(sql::insert(rel, new)?, "INSERT")),
                Change::Update { rel, old, new } if !ours(rel) => {
                    if let Some(s) = sql::update(rel, old.as_ref(), new)? {
                        steps.push(Step::Row(s, "UPDATE"));
                    }
                }
                Change::Delete { rel, old } if !ours(rel) => steps.push(Step::Row(sql::delete(rel, old)?, "DELETE")),
                Change::Truncate { rels, cascade, restart_identity } => {
                    let rels: Vec<_> = rels.iter().filter(|r| !ours(r)).cloned().collect();
                    if !rels.is_empty() {
                        steps.push(Step::Simple(sql::truncate(&rels, *cascade, *restart_identity)));
                    }
                }
                Change::Message { prefix, content } if prefix == DDL_PREFIX => match DdlMessage::parse(content) {
                    Ok(msg) => steps.push(Step::Ddl(msg)),
                    Err(e) => tracing::warn!(error = %e, "ignoring malformed DDL message"),
                },
                _ => {}
            }
        }
        Ok(())
    }

    /// Runs the steps in one replica transaction; `Ok(false)` when the
    /// progress row shows the batch as applied already.
    async fn run(&mut self, steps: &[Step], first: Lsn, last: Lsn) -> Result<bool, ApplyError> {
        let mut ops: Vec<Op<'_>> =
            vec![Op::Simple("BEGIN"), Op::Progress { first: lsn_to_pg(first), last: lsn_to_pg(last) }];
        let mut progress_hit = None;
        for step in steps {
            match step {
                Step::Row(row, kind) => {
                    let stmt = self.prepared(&row.sql).await?;
                    ops.push(Op::Row { stmt, params: &row.params, kind, sql: &row.sql });
                }
                Step::Simple(sql) => ops.push(Op::Simple(sql)),
                Step::Ddl(msg) => {
                    if !self.flush(&mut ops, &mut progress_hit).await? {
                        return Ok(false);
                    }
                    self.replay_ddl(msg).await?;
                    self.statements.clear();
                }
            }
            if ops.len() >= PIPELINE_DEPTH && !self.flush(&mut ops, &mut progress_hit).await? {
                return Ok(false);
            }
        }
        if !self.flush(&mut ops, &mut progress_hit).await? || progress_hit != Some(1) {
            return Ok(false);
        }
        self.client.batch_execute("COMMIT").await.map_err(|e| ApplyError::sql("committing on the replica", e))?;
        tracing::trace!(statements = steps.len(), %last, "batch committed");
        Ok(true)
    }

    async fn prepared(&mut self, sql: &str) -> Result<Statement, ApplyError> {
        if let Some(stmt) = self.statements.get(sql) {
            return Ok(stmt.clone());
        }
        if self.statements.len() >= MAX_PREPARED {
            self.statements.clear();
        }
        let stmt = self.client.prepare(sql).await.map_err(|e| ApplyError::sql(format!("preparing `{sql}`"), e))?;
        self.statements.insert(sql.to_owned(), stmt.clone());
        Ok(stmt)
    }

    /// Sends every queued op before waiting for any answer, then checks the
    /// answers in order; the first failure is the error reported. `Ok(false)`
    /// when the progress update found the batch applied already (later
    /// failures, e.g. duplicate keys, are then expected and ignored).
    async fn flush(&self, ops: &mut Vec<Op<'_>>, progress_hit: &mut Option<u64>) -> Result<bool, ApplyError> {
        if ops.is_empty() {
            return Ok(true);
        }
        type Fut<'f> = Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'f>>;
        let client = &self.client;
        let source = self.source.as_str();
        let mut futures: Vec<Fut<'_>> = Vec::with_capacity(ops.len());
        for op in ops.iter() {
            let fut: Fut<'_> = match op {
                Op::Simple(sql) => Box::pin(async move { client.batch_execute(sql).await.map(|()| 0) }),
                Op::Row { stmt, params, .. } => Box::pin(client.execute_raw(stmt, params.iter())),
                Op::Progress { first, last } => {
                    let stmt = &self.progress_stmt;
                    Box::pin(async move { client.execute(stmt, &[&source, last, first]).await })
                }
            };
            futures.push(fut);
        }
        // First poll of each future queues its request on the connection, in order.
        let mut results: Vec<Option<Result<u64, tokio_postgres::Error>>> = Vec::with_capacity(futures.len());
        for fut in futures.iter_mut() {
            match futures::poll!(fut.as_mut()) {
                Poll::Ready(r) => results.push(Some(r)),
                Poll::Pending => results.push(None),
            }
        }
        let mut first_error = None;
        for ((fut, early), op) in futures.into_iter().zip(results).zip(ops.iter()) {
            let result = match early {
                Some(r) => r,
                None => fut.await,
            };
            match (result, op) {
                (Ok(n), Op::Progress { .. }) => *progress_hit = Some(n),
                (Ok(0), Op::Row { kind, sql, .. }) if *kind != "INSERT" => {
                    tracing::warn!(database = %self.database, statement = %sql,
                        "row to {} not found on the replica; it has diverged from the primary", kind.to_lowercase());
                }
                (Ok(_), _) => {}
                (Err(e), op) if first_error.is_none() => {
                    let context = match op {
                        Op::Row { sql, .. } => format!("applying `{sql}`"),
                        Op::Simple(sql) => format!("running `{sql}`"),
                        Op::Progress { .. } => "updating the progress row".to_owned(),
                    };
                    first_error = Some(ApplyError::sql(context, e));
                }
                (Err(_), _) => {}
            }
        }
        ops.clear();
        if *progress_hit == Some(0) {
            return Ok(false);
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(true),
        }
    }

    /// Runs a captured DDL message's statements under the original role and
    /// search_path.
    async fn replay_ddl(&self, msg: &DdlMessage) -> Result<(), ApplyError> {
        let statements = ddl::replay_statements(msg);
        if statements.is_empty() {
            tracing::warn!(query = %msg.query, "captured DDL has no statement to replay (DDL run inside a function?)");
            return Ok(());
        }
        let err = |e| ApplyError::Ddl { query: msg.query.clone(), source: e };
        self.client
            .execute("SELECT pg_catalog.set_config('search_path', $1, true)", &[&msg.search_path])
            .await
            .map_err(err)?;
        let role_exists = self
            .client
            .query_opt("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1", &[&msg.role])
            .await
            .map_err(err)?
            .is_some();
        if role_exists {
            self.client.batch_execute(&format!("SET LOCAL ROLE {}", sql::quote_ident(&msg.role))).await.map_err(err)?;
        } else {
            tracing::warn!(role = %msg.role, "role of captured DDL missing on the replica; replaying as the replicator");
        }
        for stmt in &statements {
            tracing::info!(database = %self.database, statement = %stmt, "replaying DDL");
            self.client.batch_execute(stmt).await.map_err(err)?;
        }
        self.client.batch_execute("RESET ROLE; RESET search_path").await.map_err(err)?;
        Ok(())
    }
}
