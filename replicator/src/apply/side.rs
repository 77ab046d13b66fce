//! The replica side of the replicator, as [`crate::run`] drives it.
//!
//! Place in the data flow: the seam ([`crate::seam::ReplicaSide`]) between
//! the source (slots, snapshots, change logs) and this module's parts: the
//! initial copy ([`crate::copy`]), one apply task per (replica, database)
//! ([`super::task`]), the periodic sequence sync ([`super::sequences`]) and
//! status reporting ([`crate::status`]). DDL capture on the primary
//! ([`crate::ddl`]) is installed by [`crate::run`] before any slot exists.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tandem_core::Lsn;
use tokio::sync::watch;
use tokio_postgres::Config;
use tokio_util::sync::CancellationToken;

use super::sequences::run_sequence_sync;
use super::session;
use super::task::{run_apply_task, ApplyTask};
use crate::changelog::ChangeLog;
use crate::config::{parse_dsn, ConfigError, Mode, ReplicaConfig, ReplicatorConfig};
use crate::copy::{copy_database, CopyRequest};
use crate::seam::{AppliedLsn, BoxError, ReplicaSide, SnapshotInfo};
use crate::status::StatusBoard;

/// How often sequence values are copied to replicas.
const SEQUENCE_SYNC_INTERVAL: Duration = Duration::from_secs(10);
/// Pause before an apply task retries after a failure.
const APPLY_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Copy and apply for every replica of one replicator.
pub struct Replicas {
    primary: Config,
    source: String,
    mode: Mode,
    board: Option<Arc<StatusBoard>>,
    /// One lock per replica: its databases are copied one at a time, since every
    /// copy also applies the global objects (roles), and concurrent `ALTER ROLE`s
    /// of the same role fail with "tuple concurrently updated".
    copy_locks: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Replicas {
    /// The replica side for `cfg`; progress rows are keyed by the slot
    /// prefix (one stream of one primary), reports go to `board` if given.
    pub fn new(cfg: &ReplicatorConfig, board: Option<Arc<StatusBoard>>) -> Result<Replicas, ConfigError> {
        Ok(Replicas {
            primary: cfg.primary_config()?,
            source: cfg.slot_prefix.clone(),
            mode: cfg.mode,
            board,
            copy_locks: Default::default(),
        })
    }
}

fn replica_config(replica: &ReplicaConfig) -> Result<Config, BoxError> {
    Ok(parse_dsn(&format!("replica {}", replica.name), &replica.dsn)?)
}

impl ReplicaSide for Replicas {
    fn needs_copy<'a>(
        &'a self,
        _primary: &'a Config,
        replica: &'a ReplicaConfig,
        database: &'a str,
    ) -> BoxFuture<'a, Result<bool, BoxError>> {
        Box::pin(async move {
            let cfg = replica_config(replica)?;
            let client = match session::connect_writer(&cfg, database).await {
                Ok(c) => c,
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME) => return Ok(true),
                Err(e) => return Err(e.into()),
            };
            Ok(session::read_progress(&client, &self.source).await?.is_none())
        })
    }

    fn initial_copy<'a>(
        &'a self,
        primary: &'a Config,
        replica: &'a ReplicaConfig,
        snapshot: &'a SnapshotInfo,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            // DDL capture was installed by `run` before the slot (and its
            // snapshot) was created: DDL is either in the snapshot or in the stream.
            let cfg = replica_config(replica)?;
            let lock = {
                let mut locks = self.copy_locks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                locks.entry(replica.name.to_string()).or_default().clone()
            };
            let _one_copy_at_a_time = lock.lock().await;
            let outcome = copy_database(&CopyRequest {
                primary,
                replica: &cfg,
                database: &snapshot.database,
                snapshot: &snapshot.snapshot,
                consistent_point: snapshot.consistent_point,
                source: &self.source,
            })
            .await?;
            tracing::info!(replica = %replica.name, database = %snapshot.database, ?outcome, "initial copy finished");
            Ok(())
        })
    }

    fn spawn_applier(
        &self,
        replica: &ReplicaConfig,
        database: &str,
        log: ChangeLog,
        shutdown: CancellationToken,
    ) -> Result<AppliedLsn, BoxError> {
        let cfg = replica_config(replica)?;
        let (tx, rx) = watch::channel(Lsn::ZERO);
        let name = replica.name.to_string();
        let task = ApplyTask {
            replica_name: name.clone(),
            replica: cfg.clone(),
            database: database.to_owned(),
            source: self.source.clone(),
            log,
            applied: tx,
            reporter: self.board.as_ref().map(|b| b.replica(&name, database)),
            retry_delay: APPLY_RETRY_DELAY,
            async_commit: self.mode == Mode::Async,
        };
        let (db, stop) = (database.to_owned(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = run_apply_task(task, stop).await {
                tracing::error!(replica = %name, database = %db, error = %e, "apply task stopped");
            }
        });
        tokio::spawn(run_sequence_sync(
            self.primary.clone(),
            vec![(replica.name.to_string(), cfg)],
            database.to_owned(),
            SEQUENCE_SYNC_INTERVAL,
            shutdown,
        ));
        Ok(rx)
    }
}
