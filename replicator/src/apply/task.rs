//! The long-running apply task of one (replica, database).
//!
//! Place in the data flow: change log reader → [`Applier`] → replica. It
//! opens the applier (reading the replica's progress), reads the change log
//! from there, and applies what it reads: one transaction at a time when
//! keeping up, several per replica transaction when catching up. Any failure
//! (replica down, connection lost, a statement failing) is logged, shown in
//! the status and retried after a pause with a fresh session and a fresh
//! reader from the replica's own progress row, so nothing is lost or repeated.

use std::time::{Duration, Instant};

use tandem_core::Lsn;
use tokio::sync::watch;
use tokio_postgres::Config;
use tokio_util::sync::CancellationToken;

use super::{Applier, ApplyError};
use crate::change;
use crate::changelog::ChangeLog;
use crate::status::ReplicaReporter;

/// Transactions applied in one replica transaction, at most, when catching
/// up. Not more: a row updated by many transactions of one batch (a hot
/// counter row) gets a chain of versions no one can prune before the commit,
/// and every further update walks it; 2,048 made the replica slower than 64.
const MAX_BATCH_TXNS: usize = 64;
/// Row statements in one replica transaction, at most, when catching up.
const MAX_BATCH_STATEMENTS: usize = 4096;
/// With async commit allowed, a batch sealed for being full commits durably
/// at least this often, so that the applied position and trimming move.
const DURABLE_EVERY: Duration = Duration::from_secs(1);

/// Everything one apply task needs.
pub struct ApplyTask {
    /// Replica name, for logs.
    pub replica_name: String,
    /// The replica server (its user must be a superuser there).
    pub replica: Config,
    /// The database applied to (same name as on the primary).
    pub database: String,
    /// Progress key on the replica.
    pub source: String,
    /// The change log of this database's stream.
    pub log: ChangeLog,
    /// Where the applied position is published (sync mode waits on it).
    pub applied: watch::Sender<Lsn>,
    /// Status reporting, if a status board runs.
    pub reporter: Option<ReplicaReporter>,
    /// Pause before retrying after a failure.
    pub retry_delay: Duration,
    /// Async mode: batches may commit with synchronous_commit off (see
    /// [`Applier::set_async_commit`]); `applied` then follows durable commits.
    pub async_commit: bool,
}

/// Runs the apply task until `shutdown`. Returns an error only for failures
/// retrying cannot fix (the replica was never initially copied).
pub async fn run_apply_task(task: ApplyTask, shutdown: CancellationToken) -> Result<(), ApplyError> {
    loop {
        let result = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            r = apply_until_error(&task) => r,
        };
        let e = match result {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if let ApplyError::NotInitialized { .. } = e {
            return Err(e);
        }
        tracing::warn!(replica = %task.replica_name, database = %task.database, error = %e,
            "apply failed; retrying in {:?}", task.retry_delay);
        if let Some(r) = &task.reporter {
            r.record_error(&e.to_string());
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(task.retry_delay) => {}
        }
    }
}

/// One session's life: open, read, apply, until something fails.
///
/// Records are pushed into the applier as soon as they are durable; the open
/// batch is sealed (planned, sent, progress update + COMMIT) when it is full,
/// or when the log has nothing more right now and no earlier batch is still
/// committing (if one is, what the open batch holds is sent without sealing
/// it). While one batch commits, the next one fills with whatever arrives
/// meanwhile (group commit on the replica), and a backlog is applied in large
/// batches without ever waiting for a round trip.
async fn apply_until_error(task: &ApplyTask) -> Result<(), ApplyError> {
    let mut applier =
        Applier::connect(&task.replica, &task.database, &task.source, task.applied.clone(), task.reporter.clone())
            .await?;
    let mut reader = task.log.reader(applier.progress())?;
    if task.async_commit {
        applier.set_async_commit(true).await?;
    }
    let mut last_durable = Instant::now();
    let mut relations = change::RelationCache::default();
    loop {
        let record = match reader.try_next()? {
            Some(record) => Some(record),
            None => {
                if applier.sealed_in_flight() == 0 && applier.open_batch().is_some() {
                    // Caught up: this commit is durable, so the applied position
                    // (and with it change-log trimming) catches up too.
                    applier.seal(true).await?;
                    last_durable = Instant::now();
                } else {
                    // The open batch stays open while earlier ones commit; its
                    // statements go out now.
                    applier.send_buffered().await?;
                }
                if let Some(r) = &task.reporter {
                    r.record_source(task.log.last_lsn());
                }
                if applier.in_flight() == 0 {
                    applier.make_durable().await?;
                    Some(reader.next().await?)
                } else {
                    tokio::select! {
                        record = reader.next() => Some(record?),
                        answer = applier.next_answer() => {
                            if let Some(answer) = answer {
                                applier.check_answer(answer).await?;
                            }
                            None
                        }
                    }
                }
            }
        };
        if let Some((_, payload)) = record {
            let txn = change::decode_cached(payload, &mut relations)?;
            applier.push(&txn).await?;
            if applier
                .open_batch()
                .is_some_and(|(txns, statements)| txns >= MAX_BATCH_TXNS || statements >= MAX_BATCH_STATEMENTS)
            {
                // While catching up, commit durably now and then so that trimming follows.
                let durable = last_durable.elapsed() >= DURABLE_EVERY;
                if durable {
                    last_durable = Instant::now();
                }
                applier.seal(durable).await?;
            }
        }
        if let Some(at) = applier.take_restart() {
            reader = task.log.reader(at)?;
        }
    }
}
