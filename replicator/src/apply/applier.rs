//! Applying decoded transactions to one database of one replica, exactly once.
//!
//! Place in the data flow: change log → **applier** → replica. One
//! [`Applier`] owns one writer session (see [`super::writer`]) and the
//! position it has applied. Transactions are grouped into batches (one
//! transaction, or many when catching up); each batch is ONE replica
//! transaction, sent as extended-protocol messages behind ONE Sync:
//!
//! ```text
//! BEGIN
//! <guard: lock the progress row, fail unless tandem.applied.lsn = <value after the previous batch>>
//! <row statements, DDL>      -- prepared per table and shape
//! UPDATE tandem.applied SET lsn = <last commit of the batch> WHERE source = ..
//! COMMIT
//! Sync
//! ```
//!
//! Nothing waits for a round trip while a batch is sent, and the next batch
//! is written while the previous one's answers are still coming. Answers are
//! checked in order ([`super::replies`]); a batch counts as applied (the
//! `applied` watch moves, which is what sync mode reports to the primary)
//! only once its COMMIT succeeded with no error before it. How changes become
//! messages is in [`super::batch`].
//!
//! Exactly once: the guard locks the progress row, so a second writer (an old
//! process still running) waits, and it raises an error (division by zero)
//! unless the row holds exactly the position this applier expects: the end
//! of the previous batch it sent. Any error aborts the replica transaction:
//! the server skips the rest of the batch up to its Sync, so its COMMIT never
//! runs, and the session stays in a failed transaction, in which the BEGIN and
//! guard of every batch pipelined behind it fail as well (and were the
//! transaction somehow gone, their guards would fail, since the row did not
//! move). So a batch commits only if every transaction before it is applied
//! and none of its own is, and a crash at any point neither loses nor repeats
//! a transaction. After a failure the applier reads what is left in flight,
//! rolls back, and either reports the error or — for a failed guard, which
//! means another writer got there first — re-reads the row and carries on
//! from it. DDL is a barrier: everything before it is answered first, and
//! prepared statements are dropped after it, since their tables may have
//! changed.

use std::collections::HashMap;
use std::sync::Arc;

use tandem_core::Lsn;
use tokio::sync::watch;
use tokio_postgres::Config;

use super::facts::TableFacts;
use super::replies::{read_progress, BatchEnd, Tag};
use super::statements::StatementCache;
use super::text::TextParam;
use super::writer::{Event, WriterError, WriterSession};
use super::ApplyError;
use crate::change::{self, Change, Relation, Transaction};
use crate::status::ReplicaReporter;

/// Answers outstanding (about two per statement) before the applier waits
/// for the oldest: deep enough that the replica never runs dry while this
/// process is descheduled for a few milliseconds, small enough to bound memory.
pub(super) const MAX_IN_FLIGHT: usize = 16_384;
/// Prepared statements kept per session before the cache is emptied.
const MAX_PREPARED: usize = 1024;

/// What applying a batch did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The batch was committed on the replica.
    Committed {
        /// Row changes, TRUNCATEs and DDL statements it applied (fewer
        /// statements may have run: see [`super::coalesce`]).
        statements: usize,
    },
    /// Every transaction of the batch was applied before (or had nothing for
    /// this database); only the in-memory position moved.
    Skipped,
}

/// Applies transactions to one replica database (see module docs).
pub struct Applier {
    pub(super) session: WriterSession<Tag>,
    pub(super) database: String,
    pub(super) source: String,
    /// Every commit LSN at or below it is applied (committed, or nothing to apply).
    pub(super) progress: Lsn,
    /// Every commit LSN at or below it is applied and durable on the replica
    /// (what the `applied` watch shows); equals `progress` unless batches
    /// were committed with synchronous_commit off.
    pub(super) durable: Lsn,
    /// Whether batches may commit with synchronous_commit off (see [`Self::set_async_commit`]).
    pub(super) async_commit: bool,
    /// Newest commit LSN taken into a batch (sent or skipped).
    pub(super) pushed: Lsn,
    /// The progress row's value as of the last commit seen.
    pub(super) row: Lsn,
    /// The progress row's value once every batch sent has committed: what the next guard expects.
    pub(super) chain: Lsn,
    /// Whether the session's fixed statements (BEGIN, guard, progress, COMMIT) are prepared.
    pub(super) fixed_prepared: bool,
    pub(super) statements: StatementCache,
    /// Number in the name of the next row statement prepared.
    pub(super) next_statement: u64,
    /// The batch being sent (not sealed yet).
    pub(super) open: Option<BatchEnd>,
    /// Sealed batches whose end is still in flight.
    pub(super) sealed: usize,
    /// Set when a conflict moved `progress`: the caller must read on from there.
    pub(super) restart: Option<Lsn>,
    /// Outcome of the last batch whose end was answered.
    pub(super) last_outcome: Option<Applied>,
    /// Row changes of the open batch not encoded yet (see [`super::batch`]).
    pub(super) pending: Vec<Change>,
    /// The relation description of each table in `pending`.
    pub(super) pending_rels: HashMap<u32, Arc<Relation>>,
    /// What planning may rely on about the replica's tables.
    pub(super) facts: TableFacts,
    /// Scratch space for a row change's shape and parameters.
    pub(super) key: Vec<u8>,
    pub(super) scratch: Vec<u8>,
    pub(super) params: Vec<TextParam>,
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
        let mut session = WriterSession::connect(replica, database).await.map_err(ApplyError::Connect)?;
        // A committed write with synchronous_commit on flushes the replica's
        // WAL, so the progress row read next is durable, not just visible
        // (an earlier session may have committed with synchronous_commit off).
        session
            .simple_query("SELECT pg_catalog.txid_current()")
            .await
            .map_err(|e| ApplyError::sql("flushing the replica's WAL", e))?;
        let progress = read_progress(&mut session, source)
            .await
            .map_err(|e| ApplyError::sql("reading the progress row", e))?
            .ok_or_else(|| ApplyError::NotInitialized {
                database: database.to_owned(),
                source_name: source.to_owned(),
            })?;
        let facts = TableFacts::load(&mut session).await.map_err(|e| ApplyError::sql("reading table facts", e))?;
        tracing::info!(database, source, %progress, independent_tables = facts.independent, "applier connected");
        let applier = Applier {
            session,
            database: database.to_owned(),
            source: source.to_owned(),
            progress,
            durable: progress,
            async_commit: false,
            pushed: progress,
            row: progress,
            chain: progress,
            fixed_prepared: false,
            statements: StatementCache::new(MAX_PREPARED),
            next_statement: 0,
            open: None,
            sealed: 0,
            restart: None,
            last_outcome: None,
            pending: Vec::new(),
            pending_rels: HashMap::new(),
            facts,
            key: Vec::new(),
            scratch: Vec::new(),
            params: Vec::new(),
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
        self.session.is_closed()
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
        self.session
            .simple_query(&format!("SET synchronous_commit = {value}"))
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
        if self.durable >= self.progress || self.in_flight() > 0 || self.open.is_some() {
            return Ok(());
        }
        self.session
            .simple_query("BEGIN; SET LOCAL synchronous_commit = on; SELECT pg_catalog.txid_current(); COMMIT")
            .await
            .map_err(|e| ApplyError::sql("flushing the replica's WAL", e))?;
        self.durable = self.progress;
        self.publish(0);
        Ok(())
    }

    /// Transactions and statements in the open batch, if one is open.
    pub fn open_batch(&self) -> Option<(usize, usize)> {
        self.open.map(|b| (b.txns, b.statements))
    }

    /// Sealed batches not yet answered.
    pub fn sealed_in_flight(&self) -> usize {
        self.sealed
    }

    /// Answers not yet looked at (requests and batch markers).
    pub fn in_flight(&mut self) -> usize {
        self.session.pipeline().outstanding()
    }

    /// Where to read on after a conflict with another writer moved the
    /// position (`None` normally); taking it clears it.
    pub fn take_restart(&mut self) -> Option<Lsn> {
        self.restart.take()
    }

    /// Waits for the oldest answer and checks it; completing a batch moves
    /// the applied position. Returns at once with nothing in flight.
    pub async fn complete_one(&mut self) -> Result<(), ApplyError> {
        let event = self.session.next_event().await;
        self.check_answer(Answer { event }).await
    }

    /// The oldest answer, for callers that wait on other things at the same
    /// time (cancel-safe: nothing is lost if the future is dropped); hand it
    /// to [`Self::check_answer`] before anything else.
    pub async fn next_answer(&mut self) -> Option<Answer> {
        match self.session.next_event().await {
            Ok(None) => None,
            event => Some(Answer { event }),
        }
    }

    /// Checks an answer taken with [`Self::next_answer`].
    pub async fn check_answer(&mut self, answer: Answer) -> Result<(), ApplyError> {
        match answer.event {
            Ok(Some(event)) => self.check(event).await,
            Ok(None) => Ok(()),
            Err(e) => {
                self.abandon().await;
                Err(ApplyError::sql("waiting for the replica's answers", e))
            }
        }
    }

    /// Seals the open batch and waits for every answer.
    pub async fn finish(&mut self) -> Result<(), ApplyError> {
        self.seal(true).await?;
        self.drain().await
    }

    /// Checks every answer in flight.
    pub(super) async fn drain(&mut self) -> Result<(), ApplyError> {
        while self.in_flight() > 0 {
            self.complete_one().await?;
        }
        Ok(())
    }

    /// Moves the applied position forward to `lsn`.
    pub(super) fn advance(&mut self, lsn: Lsn, txns: usize) {
        if lsn > self.progress {
            self.progress = lsn;
        }
        if !self.async_commit {
            self.durable = self.progress;
        }
        self.publish(txns);
    }

    /// The `applied` watch shows the durable position; the status shows what is visible.
    pub(super) fn publish(&self, txns: usize) {
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
}

/// One answer taken out of flight by [`Applier::next_answer`], not yet checked.
pub struct Answer {
    event: Result<Option<Event<Tag>>, WriterError>,
}
