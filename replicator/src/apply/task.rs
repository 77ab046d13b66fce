//! The long-running apply task of one (replica, database).
//!
//! Place in the data flow: change log reader → [`Applier`] → replica. It
//! opens the applier (reading the replica's progress), reads the change log
//! from there, and applies what it reads: one transaction at a time when
//! keeping up, several per replica transaction when catching up. Any failure
//! (replica down, connection lost, a statement failing) is logged, shown in
//! the status and retried after a pause with a fresh session and a fresh
//! reader from the replica's own progress row, so nothing is lost or repeated.

use std::time::Duration;

use tandem_core::Lsn;
use tokio::sync::watch;
use tokio_postgres::Config;
use tokio_util::sync::CancellationToken;

use super::{Applier, ApplyError};
use crate::changelog::ChangeLog;
use crate::status::ReplicaReporter;

/// Transactions applied together, at most, when catching up.
const MAX_BATCH_TXNS: usize = 64;
/// Payload bytes applied together, at most, when catching up.
const MAX_BATCH_BYTES: usize = 4 << 20;

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
async fn apply_until_error(task: &ApplyTask) -> Result<(), ApplyError> {
    let mut applier =
        Applier::connect(&task.replica, &task.database, &task.source, task.applied.clone(), task.reporter.clone())
            .await?;
    let mut reader = task.log.reader(applier.progress())?;
    loop {
        if let Some(r) = &task.reporter {
            r.record_source(task.log.last_lsn());
        }
        let first = reader.next().await?;
        if let Some(r) = &task.reporter {
            r.record_source(task.log.last_lsn());
        }
        let mut bytes = first.1.len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_TXNS && bytes < MAX_BATCH_BYTES {
            match reader.try_next()? {
                Some(rec) => {
                    bytes += rec.1.len();
                    batch.push(rec);
                }
                None => break,
            }
        }
        applier.apply_records(&batch).await?;
    }
}
