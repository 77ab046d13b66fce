//! SQL-level work on the primary over ordinary connections: readiness checks,
//! the publication, slot state, and `synchronous_standby_names` in sync mode.
//! Runs before and beside the replication stream (`conn.rs`/`stream.rs`).

use std::time::Duration;

use tandem_core::Lsn;
use tokio_postgres::Client;

use super::conn::{parse_lsn, quote_ident, quote_literal, tls_config};
use super::error::SourceError;

/// A database to replicate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseInfo {
    /// Its name.
    pub name: String,
    /// Its OID on the primary (names its slot and stream).
    pub oid: u32,
}

/// A logical slot as `pg_replication_slots` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotState {
    /// Database the slot belongs to.
    pub database: Option<String>,
    /// Output plugin.
    pub plugin: Option<String>,
    /// Walsender currently streaming from it.
    pub active_pid: Option<i32>,
    /// Position confirmed by the consumer: streaming restarts here.
    pub confirmed_flush: Lsn,
}

/// Opens an ordinary SQL connection to `database` on the primary (TLS as the DSN's
/// `sslmode` says, without certificate checks).
pub async fn connect_sql(
    config: &tokio_postgres::Config,
    database: &str,
    application_name: &str,
) -> Result<Client, SourceError> {
    let mut cfg = config.clone();
    cfg.dbname(database).application_name(application_name);
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(Duration::from_secs(10));
    }
    let tls = tls_config().map_err(|e| SourceError::Config(e.to_string()))?;
    let (client, _connection) = tandem_pgtls::connect(&cfg, Some(&tls))
        .await
        .map_err(SourceError::sql(format!("connecting to database {database:?} on the primary")))?;
    Ok(client)
}

/// Checks that the primary can feed Tandem: `wal_level = logical`, a role with
/// REPLICATION (or superuser), and room for `new_slots` more slots and
/// `new_senders` more walsenders. Errors say what to change.
pub async fn check_primary(client: &Client, new_slots: usize, new_senders: usize) -> Result<(), SourceError> {
    let row = client
        .query_one(
            "SELECT current_setting('wal_level'), \
                    r.rolsuper, r.rolreplication, current_user::text, \
                    current_setting('max_replication_slots')::int, \
                    (SELECT count(*) FROM pg_replication_slots)::int, \
                    current_setting('max_wal_senders')::int, \
                    (SELECT count(*) FROM pg_stat_replication)::int, \
                    current_setting('server_version_num')::int \
             FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
        .map_err(SourceError::sql("checking the primary's settings"))?;
    let wal_level: String = row.get(0);
    let (superuser, replication): (bool, bool) = (row.get(1), row.get(2));
    let user: String = row.get(3);
    let (max_slots, used_slots): (i32, i32) = (row.get(4), row.get(5));
    let (max_senders, used_senders): (i32, i32) = (row.get(6), row.get(7));
    let version: i32 = row.get(8);
    if version < 100_000 {
        return Err(SourceError::NotReady(format!("PostgreSQL {version} is too old; Tandem needs 10 or newer")));
    }
    if wal_level != "logical" {
        return Err(SourceError::NotReady(format!(
            "wal_level is {wal_level:?}; set wal_level = logical on the primary and restart it"
        )));
    }
    if !superuser && !replication {
        return Err(SourceError::NotReady(format!(
            "role {user:?} may not replicate; run ALTER ROLE {} REPLICATION (or connect as a superuser)",
            quote_ident(&user)
        )));
    }
    let free_slots = (max_slots - used_slots).max(0) as usize;
    if free_slots < new_slots {
        return Err(SourceError::NotReady(format!(
            "max_replication_slots = {max_slots} with {used_slots} in use, Tandem needs {new_slots} more; \
             raise max_replication_slots and restart the primary"
        )));
    }
    let free_senders = (max_senders - used_senders).max(0) as usize;
    if free_senders < new_senders {
        return Err(SourceError::NotReady(format!(
            "max_wal_senders = {max_senders} with {used_senders} in use, Tandem needs {new_senders} more; \
             raise max_wal_senders and restart the primary"
        )));
    }
    Ok(())
}

/// The databases to replicate: `wanted`, or every connectable non-template
/// database when `wanted` is empty. Unknown names are an error.
pub async fn list_databases(client: &Client, wanted: &[String]) -> Result<Vec<DatabaseInfo>, SourceError> {
    let rows = client
        .query(
            "SELECT datname::text, oid::int8 FROM pg_database \
             WHERE NOT datistemplate AND datallowconn ORDER BY datname",
            &[],
        )
        .await
        .map_err(SourceError::sql("listing the primary's databases"))?;
    let all: Vec<DatabaseInfo> =
        rows.iter().map(|r| DatabaseInfo { name: r.get(0), oid: r.get::<_, i64>(1) as u32 }).collect();
    if wanted.is_empty() {
        return Ok(all);
    }
    wanted
        .iter()
        .map(|w| {
            all.iter()
                .find(|d| &d.name == w)
                .cloned()
                .ok_or_else(|| SourceError::NotReady(format!("database {w:?} does not exist on the primary")))
        })
        .collect()
}

/// Creates `publication` `FOR ALL TABLES` in the connected database if missing.
/// Returns whether it was created.
pub async fn ensure_publication(client: &Client, publication: &str) -> Result<bool, SourceError> {
    let exists = client
        .query_opt("SELECT puballtables FROM pg_publication WHERE pubname = $1", &[&publication])
        .await
        .map_err(SourceError::sql("looking up the publication"))?;
    match exists {
        Some(row) => {
            let all: bool = row.get(0);
            if !all {
                tracing::warn!(publication, "publication exists but is not FOR ALL TABLES; some tables may be missed");
            }
            Ok(false)
        }
        None => {
            client
                .batch_execute(&format!("CREATE PUBLICATION {} FOR ALL TABLES", quote_ident(publication)))
                .await
                .map_err(SourceError::sql(format!("creating publication {publication:?}")))?;
            tracing::info!(publication, "created publication FOR ALL TABLES");
            Ok(true)
        }
    }
}

/// The state of `slot`, if it exists.
pub async fn slot_state(client: &Client, slot: &str) -> Result<Option<SlotState>, SourceError> {
    let row = client
        .query_opt(
            "SELECT database::text, plugin::text, active_pid, confirmed_flush_lsn::text \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(SourceError::sql("looking up the replication slot"))?;
    let Some(row) = row else { return Ok(None) };
    let confirmed: Option<String> = row.get(3);
    Ok(Some(SlotState {
        database: row.get(0),
        plugin: row.get(1),
        active_pid: row.get(2),
        confirmed_flush: confirmed.as_deref().map(parse_lsn).transpose()?.unwrap_or(Lsn::ZERO),
    }))
}

/// Ends the walsender still holding `slot` (a previous replicator process
/// killed without closing its connection), so the slot can be streamed again.
pub async fn release_slot(client: &Client, slot: &str) -> Result<bool, SourceError> {
    let row = client
        .query_one(
            "SELECT coalesce(bool_or(pg_terminate_backend(active_pid)), false) \
             FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL",
            &[&slot],
        )
        .await
        .map_err(SourceError::sql("terminating the old walsender of the slot"))?;
    Ok(row.get(0))
}

/// Drops `slot` (used by tests and when a database stops being replicated).
pub async fn drop_slot(client: &Client, slot: &str) -> Result<(), SourceError> {
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .map_err(SourceError::sql(format!("dropping slot {slot:?}")))?;
    Ok(())
}

/// The value of `synchronous_standby_names` that makes every commit wait for
/// all of `names` (one replication stream per database).
pub fn sync_standby_value(names: &[String]) -> String {
    let list: Vec<String> = names.iter().map(|n| quote_ident(n)).collect();
    format!("FIRST {} ({})", names.len(), list.join(", "))
}

/// Whether a `synchronous_standby_names` value was written by a replicator
/// whose application names start with `prefix`.
pub fn is_our_sync_value(value: &str, prefix: &str) -> bool {
    value.contains(&format!("\"{prefix}_"))
}

/// Sets `synchronous_standby_names` (ALTER SYSTEM + reload) and waits until new
/// sessions see it. Returns the previous value.
pub async fn set_sync_standbys(client: &Client, value: &str) -> Result<String, SourceError> {
    let before = show_sync_standbys(client).await?;
    if before == value {
        return Ok(before);
    }
    // Two statements: ALTER SYSTEM refuses to run inside a (multi-statement) transaction.
    client
        .batch_execute(&format!("ALTER SYSTEM SET synchronous_standby_names = {}", quote_literal(value)))
        .await
        .map_err(SourceError::sql("setting synchronous_standby_names on the primary"))?;
    client
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .map_err(SourceError::sql("reloading the primary's configuration"))?;
    // The reload is asynchronous: poll until the setting is visible.
    for _ in 0..100 {
        if show_sync_standbys(client).await? == value {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(before)
}

/// The current `synchronous_standby_names`.
pub async fn show_sync_standbys(client: &Client) -> Result<String, SourceError> {
    let row = client
        .query_one("SELECT current_setting('synchronous_standby_names')", &[])
        .await
        .map_err(SourceError::sql("reading synchronous_standby_names"))?;
    Ok(row.get(0))
}
