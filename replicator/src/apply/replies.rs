//! Checking the replica's answers to what the applier sent, in order.
//!
//! Place in the data flow: replica → **replies** → the applied position.
//! Every statement the applier sends carries a [`Tag`] saying what it was;
//! its answer comes back as an [`Event`] with that tag. A batch's COMMIT
//! answered without an error before it moves the applied position. The first
//! failure ends everything in flight ([`Applier::abandon`]): what was sent
//! after it cannot commit (see the applier's module docs for why), so it is
//! read unexamined and the session rolled back; a failed guard means another
//! writer applied first, and the applier re-reads the progress row and goes
//! on from there.

use std::sync::Arc;

use tandem_core::Lsn;

use super::applier::{Applied, Applier};
use super::sql::RowKind;
use super::writer::{conn::text_column, Event, WriterError, WriterSession};
use super::ApplyError;

/// SQLSTATE of the guard's division by zero: the progress row is not where expected.
const GUARD_FAILED: &str = "22012";

/// What a request in flight was, for checking its answer.
pub enum Tag {
    /// The BEGIN of a batch.
    Begin,
    /// The guard on the progress row.
    Guard,
    /// A row change.
    Row {
        /// INSERT, UPDATE or DELETE (an UPDATE/DELETE hitting no row means divergence).
        kind: RowKind,
        /// The statement text, for logs and errors.
        sql: Arc<str>,
    },
    /// A TRUNCATE, with its text.
    Truncate(String),
    /// A session setting inside the batch (synchronous_commit for a durable COMMIT).
    Setting,
    /// The progress update.
    Progress,
    /// The COMMIT of a batch (or, with `in_txn` false, the in-order marker of
    /// a batch that needed no replica transaction).
    End(BatchEnd),
}

/// A batch's bookkeeping, carried by its COMMIT (or marker).
#[derive(Clone, Copy, Debug)]
pub struct BatchEnd {
    /// Commit LSN of its last transaction.
    pub last: Lsn,
    /// Transactions in it.
    pub txns: usize,
    /// Row and DDL statements in it.
    pub statements: usize,
    /// Whether it opened a replica transaction.
    pub in_txn: bool,
    /// Committed with synchronous_commit on (always, unless async commit is allowed).
    pub durable: bool,
}

/// Why a batch did not commit.
enum Failure {
    /// The guard found the progress row elsewhere: another writer applied.
    Conflict,
    /// Anything else.
    Error(ApplyError),
}

impl Applier {
    /// Checks one answer in order; on a failure, cleans up (see [`Self::recover`]).
    pub(super) async fn check(&mut self, event: Event<Tag>) -> Result<(), ApplyError> {
        match event {
            Event::Failed { tag: Some(Tag::Guard), error } if error.code == GUARD_FAILED => {
                self.recover(Failure::Conflict).await
            }
            Event::Failed { tag, error } => {
                let e = ApplyError::sql(context(tag.as_ref()), WriterError::Server(Box::new(error)));
                self.recover(Failure::Error(e)).await
            }
            Event::Skipped(tag) => {
                // Only after a failure, which is handled at once: the server broke the protocol.
                let e = WriterError::Protocol("a statement was skipped with no error before it".into());
                self.recover(Failure::Error(ApplyError::sql(context(tag.as_ref()), e))).await
            }
            Event::Done { tag: Some(Tag::End(end)), rolled_back, .. } => {
                if rolled_back {
                    let e = WriterError::Protocol("COMMIT answered ROLLBACK with no error before it".into());
                    return self.recover(Failure::Error(ApplyError::sql("committing on the replica", e))).await;
                }
                self.batch_done(end);
                Ok(())
            }
            Event::Done { tag: Some(Tag::Row { kind, sql }), rows: 0, .. } if kind != RowKind::Insert => {
                tracing::warn!(database = %self.database, statement = %sql,
                    "row to {} not found on the replica; it has diverged from the primary",
                    kind.as_str().to_lowercase());
                Ok(())
            }
            Event::Done { .. } | Event::Row(_) | Event::Ready(_) => Ok(()),
        }
    }

    /// A batch's end was answered: its transactions are applied.
    fn batch_done(&mut self, end: BatchEnd) {
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
    }

    /// After a failed request: everything still in flight was sent after it
    /// and is doomed (same replica transaction, or a later batch in the
    /// failed transaction or with a guard expecting a position that now will
    /// not be reached), so it is drained unread and the session rolled back.
    /// A conflict re-reads the progress row and asks the caller to read on from there.
    async fn recover(&mut self, failure: Failure) -> Result<(), ApplyError> {
        self.abandon().await;
        match failure {
            Failure::Error(e) => Err(e),
            Failure::Conflict => {
                let found = read_progress(&mut self.session, &self.source)
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

    /// Drops everything in flight and the open batch: ends the current
    /// Sync stretch, reads every answer still to come, then rolls back and
    /// drops all prepared statements (which Parses the server ran before the
    /// failure is not known; the fixed ones are prepared again with the next batch).
    pub(super) async fn abandon(&mut self) {
        self.open = None;
        self.pending.clear();
        self.pending_rels.clear();
        self.sealed = 0;
        self.chain = self.row;
        self.pushed = self.progress;
        self.statements.forget();
        self.fixed_prepared = false;
        if self.session.is_closed() {
            return;
        }
        if self.session.pipeline().group_open() {
            self.session.pipeline().sync();
        }
        while let Ok(Some(_)) = self.session.next_event().await {}
        if !self.session.is_closed() {
            if let Err(e) = self.session.simple_query("ROLLBACK; DEALLOCATE ALL").await {
                tracing::debug!(error = %e, "rolling back after a failed batch");
            }
        }
    }
}

/// What a failed request was doing, for the error message.
fn context(tag: Option<&Tag>) -> String {
    match tag {
        Some(Tag::Row { sql, .. }) => format!("applying `{sql}`"),
        Some(Tag::Truncate(sql)) => format!("running `{sql}`"),
        Some(Tag::Begin) => "starting a replica transaction".to_owned(),
        Some(Tag::Guard | Tag::Progress) => "updating the progress row".to_owned(),
        Some(Tag::Setting) => "setting synchronous_commit".to_owned(),
        Some(Tag::End(_)) => "committing on the replica".to_owned(),
        None => "applying a batch".to_owned(),
    }
}

/// The applied position for `source` on the writer session, or `None` if
/// this database was never fed from it (or has no progress table at all).
/// Only with nothing in flight.
pub(super) async fn read_progress(session: &mut WriterSession<Tag>, source: &str) -> Result<Option<Lsn>, WriterError> {
    let exists = session.query("SELECT to_regclass('tandem.applied') IS NOT NULL", &[]).await?;
    let exists = match exists.first() {
        Some(row) => text_column(row, 0)?,
        None => None,
    };
    if exists.as_deref() != Some("t") {
        return Ok(None);
    }
    let rows = session.query("SELECT lsn::text FROM tandem.applied WHERE source = $1", &[Some(source)]).await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let text = text_column(row, 0)?.ok_or_else(|| WriterError::Protocol("NULL progress position".into()))?;
    text.parse::<Lsn>().map(Some).map_err(|e| WriterError::Protocol(format!("progress position {text:?}: {e}")))
}
