//! `tandem replica add`: a new physical standby, an exact copy of the primary.
//!
//! Place in the data flow: before everything else; it makes the node that later streams
//! from the primary and restores from the relay. Steps: a physical slot for the standby on
//! the primary (so the primary keeps the WAL it still needs), `pg_basebackup` of the primary
//! (WAL streamed alongside), then the standby's settings in `postgresql.auto.conf`:
//! `primary_conninfo` + `primary_slot_name` (streaming, lowest lag), `restore_command`
//! (`tandem wal-fetch` from the relay, for when streaming cannot serve), `cluster_name` (its
//! WAL receiver's `application_name`, the name the sync quorum lists), timeline `latest` (so
//! it follows a promotion), `hot_standby`, its own port, `wal_retrieve_retry_interval`
//! (100 ms: a standby whose primary died polls the relay often), and an empty
//! `synchronous_standby_names` (the primary's is copied by the backup and means nothing here).
//! The two halves, [`clone_primary`] and [`write_settings`], are also `tandem rejoin`'s:
//! it re-clones an old primary pg_rewind cannot bring back, and sets the same settings on
//! one it could.

use std::path::{Path, PathBuf};

use tandem_core::NodeId;

use super::relay::connect;
use super::{autoconf, RelayError};
use crate::config::{parse_dsn, standby_slot_name};

/// What to make.
#[derive(Clone, Debug)]
pub struct StandbySpec {
    /// The standby's name (its `cluster_name` and slot suffix).
    pub name: NodeId,
    /// The primary's DSN (a role with REPLICATION).
    pub primary: String,
    /// New data directory (must not exist or be empty).
    pub data_dir: PathBuf,
    /// Port the standby listens on.
    pub port: u16,
    /// Where `restore_command` reads the relay's WAL: its WAL directory or `http://HOST:PORT`;
    /// none leaves `restore_command` unset.
    pub relay: Option<String>,
    /// The `tandem` program `restore_command` runs.
    pub tandem: PathBuf,
}

/// What `add` did, for the command's output.
#[derive(Debug)]
pub struct Added {
    /// The slot on the primary.
    pub slot: String,
    /// Warnings an operator should read (e.g. pg_rewind will not work).
    pub warnings: Vec<String>,
}

/// Makes the standby's data directory. Does not start it.
pub async fn add(spec: &StandbySpec) -> Result<Added, RelayError> {
    let added = clone_primary(&spec.name, &spec.primary, &spec.data_dir).await?;
    let restore = spec.relay.as_deref().map(|relay| restore_command(&spec.tandem, relay));
    let settings = StandbySettings {
        name: spec.name.clone(),
        primary_conninfo: spec.primary.clone(),
        slot: added.slot.clone(),
        port: Some(spec.port),
        restore_command: restore,
    };
    write_settings(&spec.data_dir, &format!("tandem replica add {}", spec.name), &settings)?;
    Ok(added)
}

/// The copy without the settings: checks the primary (DSN `primary`), makes the slot of the
/// standby `name` on it (if missing) and runs `pg_basebackup` into `data_dir` (which must
/// not exist, or be empty). `tandem rejoin` uses it to re-clone an old primary that
/// pg_rewind cannot bring back, then writes the settings itself.
pub async fn clone_primary(name: &NodeId, primary: &str, data_dir: &Path) -> Result<Added, RelayError> {
    let config = parse_dsn("the primary", primary)?;
    check_target(data_dir)?;
    let admin = connect(&config, "tandem_replica_add").await?;
    let row = admin
        .query_one(
            "SELECT pg_is_in_recovery(), current_setting('wal_log_hints'), current_setting('data_checksums')",
            &[],
        )
        .await
        .map_err(RelayError::sql("checking the primary"))?;
    let (in_recovery, hints, checksums): (bool, String, String) = (row.get(0), row.get(1), row.get(2));
    if in_recovery {
        return Err(RelayError::NotReady("the server given with --from is a standby, not the primary".into()));
    }
    let mut warnings = Vec::new();
    if hints != "on" && checksums != "on" {
        warnings.push(
            "the primary has neither wal_log_hints nor data checksums: pg_rewind cannot bring it back as a \
             standby after a failover (set wal_log_hints = on and restart it)"
                .to_owned(),
        );
    }
    let slot = standby_slot_name(name);
    super::relay::ensure_slot(&admin, &slot).await?;
    drop(admin);

    let (primary, data_dir, slot2) = (primary.to_owned(), data_dir.to_owned(), slot.clone());
    tokio::task::spawn_blocking(move || base_backup(&primary, &data_dir, &slot2))
        .await
        .map_err(|e| RelayError::Protocol(format!("pg_basebackup task: {e}")))??;
    Ok(Added { slot, warnings })
}

fn check_target(dir: &Path) -> Result<(), RelayError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(RelayError::NotReady(format!("{} exists and is not empty", dir.display())));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RelayError::Io { what: format!("read {}", dir.display()), source: e }),
    }
}

fn base_backup(primary: &str, data_dir: &Path, slot: &str) -> Result<(), RelayError> {
    let parent = data_dir.parent().unwrap_or(Path::new("/")).to_path_buf();
    std::fs::create_dir_all(&parent).map_err(RelayError::io(format!("create {}", parent.display())))?;
    tandem_localpg::chown_for_server(&parent).map_err(RelayError::LocalPg)?;
    if data_dir.exists() {
        tandem_localpg::chown_for_server(data_dir).map_err(RelayError::LocalPg)?;
    }
    let program = tandem_localpg::tool("pg_basebackup").map_err(RelayError::LocalPg)?;
    let out = tandem_localpg::server_command(&program, &parent)
        .map_err(RelayError::LocalPg)?
        .arg("--pgdata")
        .arg(data_dir)
        .args(["--wal-method=stream", "--checkpoint=fast", "--slot", slot, "--dbname", primary])
        .output()
        .map_err(RelayError::io("run pg_basebackup"))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        return Err(RelayError::Protocol(format!("pg_basebackup failed ({}): {}", out.status, text.trim())));
    }
    Ok(())
}

/// The `restore_command` that reads the relay's WAL from `relay`.
pub fn restore_command(tandem: &Path, relay: &str) -> String {
    format!("\"{}\" wal-fetch --from \"{}\" %f \"%p\"", tandem.display(), relay)
}

/// A standby's own settings in `postgresql.auto.conf`.
#[derive(Clone, Debug)]
pub struct StandbySettings {
    /// Its name: `cluster_name`, so its WAL receiver's `application_name`.
    pub name: NodeId,
    /// `primary_conninfo`: how it reaches the primary.
    pub primary_conninfo: String,
    /// `primary_slot_name`.
    pub slot: String,
    /// `port`; none keeps what its configuration says.
    pub port: Option<u16>,
    /// `restore_command`; none leaves the setting as it is.
    pub restore_command: Option<String>,
}

impl StandbySettings {
    /// `(name, value)` pairs, in the order they are written.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = vec![
            ("primary_conninfo", self.primary_conninfo.clone()),
            ("primary_slot_name", self.slot.clone()),
            ("cluster_name", self.name.to_string()),
            ("recovery_target_timeline", "latest".to_owned()),
            ("hot_standby", "on".to_owned()),
            // The primary's value came along with the copy and means nothing on a standby.
            ("synchronous_standby_names", String::new()),
            // When no source has the WAL the startup process needs (streaming failed: the
            // primary died), it waits this long before trying restore_command, pg_wal and
            // streaming again. PostgreSQL's 5 s default would leave a standby up to 5 s behind
            // what the relay has, and a failover waiting on it. A round costs one `tandem
            // wal-fetch`: milliseconds from a relay directory, a download of the relay's
            // partial segment over HTTP.
            ("wal_retrieve_retry_interval", "100ms".to_owned()),
        ];
        if let Some(port) = self.port {
            pairs.push(("port", port.to_string()));
        }
        if let Some(restore) = &self.restore_command {
            pairs.push(("restore_command", restore.clone()));
        }
        pairs
    }
}

/// Sets `settings` in `<data_dir>/postgresql.auto.conf` (under the comment `header`),
/// drops `default_transaction_read_only` (a fence on an old primary sets it with ALTER
/// SYSTEM; a standby is read-only anyway and must not keep it for when it is promoted), and
/// writes `standby.signal`.
pub fn write_settings(data_dir: &Path, header: &str, settings: &StandbySettings) -> Result<(), RelayError> {
    autoconf::apply(data_dir, header, &settings.pairs(), &["default_transaction_read_only"])?;
    autoconf::write_standby_signal(data_dir)
}
