//! Orchestration of a replicator process: checks on the primary, then per
//! database: publication → slot (+ initial copy in its exported snapshot) →
//! appliers → the stream loop (slot → decoder → change log → feedback),
//! reconnecting on errors; sync-mode `synchronous_standby_names` management;
//! change-log trimming once every replica applied a segment.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tandem_core::Lsn;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::changelog::{ChangeLog, ChangeLogError, ChangeLogOptions};
use crate::config::{ConfigError, Mode, ReplicatorConfig};
use crate::join::{snapshot_info, Joiner};
use crate::seam::{AppliedLsn, BoxError, ReplicaSide, SnapshotInfo};
use crate::source::primary::{self, DatabaseInfo};
use crate::source::{stream_database, HeldSnapshot, ReplicationConnection, SourceError, StreamOptions, StreamStats};

/// Why the replicator stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplicatorError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Talking to the primary failed in a way retrying will not fix.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The change log could not be opened.
    #[error(transparent)]
    ChangeLog(#[from] ChangeLogError),
    /// DDL capture (event triggers) cannot be installed on the primary.
    #[error("database {database}: {source}")]
    Ddl {
        /// Database on the primary.
        database: String,
        /// Why installing failed.
        #[source]
        source: crate::ddl::DdlError,
    },
    /// The physical WAL relay stopped.
    #[error(transparent)]
    Relay(#[from] crate::physical::RelayError),
    /// The status endpoint cannot listen on its address.
    #[error("status endpoint on {addr}: {source}")]
    Status {
        /// The `--status-listen` address.
        addr: std::net::SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
}

/// Runs the replicator with `side` doing copies and applies, until `shutdown`.
pub async fn run_with(
    cfg: Arc<ReplicatorConfig>,
    shutdown: CancellationToken,
    side: Arc<dyn ReplicaSide>,
) -> Result<(), ReplicatorError> {
    cfg.validate()?;
    let primary_cfg = cfg.primary_config()?;
    let admin_db = primary_cfg.get_dbname().unwrap_or("postgres").to_owned();
    let admin = admin_session(&primary_cfg, &admin_db).await?;
    let databases = primary::list_databases(&admin, &cfg.databases).await?;
    let mut missing_slots = 0;
    let mut active = 0;
    for db in &databases {
        match primary::slot_state(&admin, &cfg.slot_name(db.oid)).await? {
            None => missing_slots += 1,
            Some(s) if s.active_pid.is_some() => active += 1,
            Some(_) => {}
        }
    }
    primary::check_primary(&admin, missing_slots, databases.len().saturating_sub(active)).await?;
    tracing::info!(databases = databases.len(), mode = %cfg.mode, "primary ready for replication");

    let stop = shutdown.child_token();
    let (started_tx, mut started_rx) = mpsc::channel::<()>(databases.len().max(1));
    let mut tasks = JoinSet::new();
    for db in databases.clone() {
        let (cfg, side, stop, started) = (cfg.clone(), side.clone(), stop.clone(), started_tx.clone());
        let primary_cfg = primary_cfg.clone();
        tasks.spawn(async move { run_database(&cfg, &primary_cfg, db, side, stop, started).await });
    }
    drop(started_tx);

    let names: Vec<String> = databases.iter().map(|d| cfg.stream_application_name(d.oid)).collect();
    let mut waiting = databases.len();
    let mut standbys_set = false;
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            Some(()) = started_rx.recv(), if waiting > 0 => {
                waiting -= 1;
                if waiting == 0 && !standbys_set {
                    standbys_set = true;
                    if let Err(e) = manage_sync_standbys(&admin, &cfg, &names).await {
                        break Err(e.into());
                    }
                }
            }
            done = tasks.join_next() => match done {
                None => break Ok(()),
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => break Err(e),
                Some(Err(e)) => break Err(SourceError::Protocol(format!("database task failed: {e}")).into()),
            },
        }
    };
    // A clean stop must not leave the primary waiting for streams that are gone: its
    // commits go on asynchronously until the replicator is back (and says so).
    if cfg.mode == Mode::Sync && standbys_set && shutdown.is_cancelled() {
        match primary::set_sync_standbys(&admin, "").await {
            Ok(_) => tracing::warn!("stopped: the primary commits asynchronously until the replicator is back"),
            Err(e) => tracing::error!(error = %e, "could not take the replicator out of synchronous_standby_names"),
        }
    }
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    result
}

/// Sync mode: every stream's application name becomes a required sync
/// standby. Async mode: a value we set earlier is removed.
async fn manage_sync_standbys(
    admin: &tokio_postgres::Client,
    cfg: &ReplicatorConfig,
    names: &[String],
) -> Result<(), SourceError> {
    let current = primary::show_sync_standbys(admin).await?;
    match cfg.mode {
        Mode::Sync => {
            let value = primary::sync_standby_value(names);
            if !current.is_empty() && !primary::is_our_sync_value(&current, &cfg.application_name) {
                tracing::warn!(previous = current, "replacing synchronous_standby_names set outside Tandem");
            }
            primary::set_sync_standbys(admin, &value).await?;
            tracing::info!(value, "primary now waits for the replicator (sync mode)");
        }
        Mode::Async => {
            if primary::is_our_sync_value(&current, &cfg.application_name) {
                primary::set_sync_standbys(admin, "").await?;
                tracing::info!("removed the replicator from synchronous_standby_names (async mode)");
            }
        }
    }
    Ok(())
}

/// An SQL session on `database` of the primary for the replicator's own
/// work. Its commits (publication, DDL capture) wait for the primary's WAL
/// flush only, never for synchronous standbys: in sync mode the standby is
/// this replicator, which is not streaming yet while it sets up, so such a
/// commit would otherwise wait for ever (seen after a kill -9 in sync mode).
async fn admin_session(
    primary_cfg: &tokio_postgres::Config,
    database: &str,
) -> Result<tokio_postgres::Client, SourceError> {
    let client = primary::connect_sql(primary_cfg, database, "tandem_replicator_admin").await?;
    client
        .batch_execute("SET synchronous_commit = local")
        .await
        .map_err(SourceError::sql("setting synchronous_commit on the primary"))?;
    Ok(client)
}

/// Directory of a database's change log: its name with anything outside
/// `[A-Za-z0-9_-]` percent-escaped, so every name maps to one safe directory.
pub fn changelog_dir(data_dir: &Path, database: &str) -> PathBuf {
    let mut name = String::new();
    for b in database.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            name.push(b as char);
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    data_dir.join("db").join(name)
}

async fn run_database(
    cfg: &ReplicatorConfig,
    primary_cfg: &tokio_postgres::Config,
    db: DatabaseInfo,
    side: Arc<dyn ReplicaSide>,
    stop: CancellationToken,
    started: mpsc::Sender<()>,
) -> Result<(), ReplicatorError> {
    let slot = cfg.slot_name(db.oid);
    let app = cfg.stream_application_name(db.oid);
    let client = admin_session(primary_cfg, &db.name).await?;
    primary::ensure_publication(&client, &cfg.publication).await?;
    // Before the slot exists: DDL committed after the slot's snapshot must be
    // captured, or replicas copied in that snapshot would miss it.
    crate::ddl::install_capture(&client)
        .await
        .map_err(|source| ReplicatorError::Ddl { database: db.name.clone(), source })?;
    let log = ChangeLog::open(&changelog_dir(&cfg.data_dir, &db.name), ChangeLogOptions::default())?;
    let joiner = Arc::new(Joiner {
        primary: primary_cfg.clone(),
        db: db.clone(),
        slot: slot.clone(),
        app: app.clone(),
        side: side.clone(),
        log: log.clone(),
        stop: stop.clone(),
    });

    // First start: every replica is copied in the new slot's snapshot before
    // streaming begins. Replicas that fail then, and on later starts every
    // replica, join in the background (copied first if they need it), so a
    // replica that is down never holds up the others.
    let mut first_conn = None;
    let mut applied: Vec<AppliedLsn> = Vec::new();
    if primary::slot_state(&client, &slot).await?.is_none() {
        let conn = ReplicationConnection::connect(primary_cfg, &db.name, &app).await?;
        let held = HeldSnapshot::create(conn, &slot, false).await?;
        let snap = snapshot_info(&db, &held);
        let copies = copy_replicas(primary_cfg, &db, snap, &cfg.replicas, side.as_ref()).await;
        first_conn = Some(held.release());
        for (i, (r, copied)) in cfg.replicas.iter().zip(copies).enumerate() {
            let started = copied.and_then(|()| side.spawn_applier(r, &db.name, log.clone(), stop.clone()));
            applied.push(match started {
                Ok(rx) => rx,
                Err(e) => {
                    tracing::warn!(replica = %r.name, database = db.name, error = %e,
                        "initial copy failed; retrying in the background");
                    joiner.spawn(i, r.clone())
                }
            });
        }
    } else {
        for (i, r) in cfg.replicas.iter().enumerate() {
            applied.push(joiner.spawn(i, r.clone()));
        }
    }
    let trimmer = tokio::spawn(trim_loop(log.clone(), applied.clone(), stop.clone()));

    let opts = StreamOptions {
        database: db.name.clone(),
        slot: slot.clone(),
        publication: cfg.publication.clone(),
        mode: cfg.mode,
        sync_quorum: cfg.sync_quorum,
        feedback_interval: Duration::from_millis(cfg.feedback_interval_ms),
        buffer: cfg.stream_buffer,
    };
    let (stats, _) = watch::channel(StreamStats::default());
    let mut backoff = Duration::from_millis(200);
    let mut announced = false;
    let result = loop {
        if stop.is_cancelled() {
            break Ok(());
        }
        let conn = match first_conn.take() {
            Some(c) => Ok(c),
            None => {
                // A previous process killed with -9 may still hold the slot.
                if let Err(e) = primary::release_slot(&client, &slot).await {
                    tracing::warn!(error = %e, slot, "cannot release the slot");
                }
                ReplicationConnection::connect(primary_cfg, &db.name, &app).await
            }
        };
        // Async: resume after the change log; sync: from the slot's confirmed
        // position (0/0), so transactions not yet applied are tracked again.
        let start = match cfg.mode {
            Mode::Async => log.last_lsn(),
            Mode::Sync => Lsn::ZERO,
        };
        if !announced {
            announced = true;
            let _ = started.send(()).await;
        }
        let outcome = match conn {
            Ok(conn) => stream_database(conn, start, &opts, &log, applied.clone(), &stats, &stop).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => break Ok(()),
            Err(e @ SourceError::Decode(_)) | Err(e @ SourceError::Sink(_)) => break Err(e.into()),
            Err(e) => {
                tracing::warn!(error = %e, database = db.name, ?backoff, "replication stream failed; reconnecting");
                tokio::select! {
                    _ = stop.cancelled() => break Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    trimmer.abort();
    result
}

/// Copies `replicas` concurrently, all in the one snapshot `snap` (held by
/// the caller); one outcome per replica, in order.
async fn copy_replicas(
    primary_cfg: &tokio_postgres::Config,
    db: &DatabaseInfo,
    snap: SnapshotInfo,
    replicas: &[crate::config::ReplicaConfig],
    side: &dyn ReplicaSide,
) -> Vec<Result<(), BoxError>> {
    let copies = replicas.iter().map(|r| {
        let snap = &snap;
        async move {
            tracing::info!(replica = %r.name, database = db.name, "initial copy");
            side.initial_copy(primary_cfg, r, snap).await
        }
    });
    futures::future::join_all(copies).await
}

/// Trims the change log up to what every replica has applied.
async fn trim_loop(log: ChangeLog, mut applied: Vec<AppliedLsn>, stop: CancellationToken) {
    if applied.is_empty() {
        return;
    }
    let mut trimmed = Lsn::ZERO;
    loop {
        let min = applied.iter().map(|a| *a.borrow()).min().unwrap_or(Lsn::ZERO);
        if min > trimmed {
            match log.trim(min) {
                Ok(()) => trimmed = min,
                Err(e) => tracing::warn!(error = %e, "cannot trim the change log"),
            }
        }
        let waits = applied.iter_mut().map(|a| Box::pin(a.changed()));
        tokio::select! {
            _ = stop.cancelled() => return,
            (r, _, _) = futures::future::select_all(waits) => if r.is_err() {
                // An applier stopped: its position is frozen, trimming can't pass it.
                return;
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changelog_dirs_are_safe_and_distinct() {
        let d = Path::new("/x");
        assert_eq!(changelog_dir(d, "app_1"), Path::new("/x/db/app_1"));
        assert_eq!(changelog_dir(d, "../a b"), Path::new("/x/db/%2E%2E%2Fa%20b"));
        assert_ne!(changelog_dir(d, "a%20b"), changelog_dir(d, "a b"));
    }
}
