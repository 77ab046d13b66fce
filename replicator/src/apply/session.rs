//! Sessions on replica servers and the progress table that makes apply exactly-once.
//!
//! Place in the data flow: the end of the line. Every write the replicator
//! makes on a replica (initial copy, streamed transactions, DDL, sequence
//! values) goes through a *writer session*: opened here with tokio-postgres
//! for the copy and sequences, and with the same settings on the raw protocol
//! for the applier ([`super::writer`]). The replica server is
//! set `default_transaction_read_only = on` for everyone; the writer session
//! turns that off for itself and runs with `session_replication_role =
//! replica`, so user triggers and foreign-key checks behave as on a logical
//! replica (the primary already ran them) and event triggers do not re-fire.
//!
//! `tandem.applied` holds, per source, the position up to which the database
//! has applied the change stream. It is written in the same replica
//! transaction as the data it covers, so after any crash it tells exactly
//! where to resume.

use tandem_core::Lsn;
use tokio_postgres::types::PgLsn;
use tokio_postgres::{Client, Config, GenericClient};

/// SQL creating the progress table if it is missing (idempotent).
pub const PROGRESS_TABLE_SQL: &str = "CREATE SCHEMA IF NOT EXISTS tandem; \
     CREATE TABLE IF NOT EXISTS tandem.applied ( \
       source text PRIMARY KEY, \
       lsn pg_lsn NOT NULL, \
       applied_at timestamptz NOT NULL DEFAULT now())";

/// The `application_name` of the replicator's writer sessions on replicas.
pub const WRITER_APPLICATION_NAME: &str = "tandem-apply";

/// Opens a session on `database` of the server `cfg` names, with the given
/// `application_name`; the connection task is spawned and logs how it ended.
pub async fn connect(cfg: &Config, database: &str, application_name: &str) -> Result<Client, tokio_postgres::Error> {
    let mut cfg = cfg.clone();
    cfg.dbname(database).application_name(application_name);
    open(cfg).await
}

/// Opens a writer session on `database` of a replica (see module docs).
///
/// Requires a superuser login on the replica (`session_replication_role`).
pub async fn connect_writer(replica: &Config, database: &str) -> Result<Client, tokio_postgres::Error> {
    let mut cfg = replica.clone();
    let mut options = cfg.get_options().map(str::to_owned).unwrap_or_default();
    if !options.is_empty() {
        options.push(' ');
    }
    options.push_str("-c default_transaction_read_only=off -c session_replication_role=replica");
    cfg.dbname(database).application_name(WRITER_APPLICATION_NAME).options(options);
    open(cfg).await
}

async fn open(cfg: Config) -> Result<Client, tokio_postgres::Error> {
    // TLS as the DSN's sslmode says (prefer by default), without certificate checks.
    // Building a configuration without CA files does not fail; if it ever did, TLS would
    // only be lost where the DSN allows plain connections.
    let tls = crate::source::conn::tls_config()
        .map_err(|e| tracing::warn!(error = %e, "no TLS configuration for replica sessions"))
        .ok();
    let (client, _connection) = tandem_pgtls::connect(&cfg, tls.as_deref()).await?;
    Ok(client)
}

/// Makes the replica server read-only for every session but the writer's
/// (`ALTER SYSTEM SET default_transaction_read_only = on` and a reload).
pub async fn make_server_read_only(writer: &Client) -> Result<(), tokio_postgres::Error> {
    writer.batch_execute("ALTER SYSTEM SET default_transaction_read_only = on").await?;
    writer.batch_execute("SELECT pg_catalog.pg_reload_conf()").await
}

/// Creates `tandem.applied` if needed.
pub async fn ensure_progress_table(client: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(PROGRESS_TABLE_SQL).await
}

/// The applied position for `source`, or `None` if this database was never
/// fed from it (or has no progress table at all).
pub async fn read_progress(client: &impl GenericClient, source: &str) -> Result<Option<Lsn>, tokio_postgres::Error> {
    let exists: bool = client.query_one("SELECT to_regclass('tandem.applied') IS NOT NULL", &[]).await?.get(0);
    if !exists {
        return Ok(None);
    }
    let row = client.query_opt("SELECT lsn FROM tandem.applied WHERE source = $1", &[&source]).await?;
    Ok(row.map(|r| lsn_from_pg(r.get::<_, PgLsn>(0))))
}

/// Sets the applied position of `source` (insert or overwrite), inside the
/// caller's transaction.
pub async fn write_progress(client: &impl GenericClient, source: &str, lsn: Lsn) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO tandem.applied (source, lsn, applied_at) VALUES ($1, $2, now()) \
             ON CONFLICT (source) DO UPDATE SET lsn = EXCLUDED.lsn, applied_at = EXCLUDED.applied_at",
            &[&source, &lsn_to_pg(lsn)],
        )
        .await?;
    Ok(())
}

/// `pg_lsn` value of an [`Lsn`].
pub fn lsn_to_pg(lsn: Lsn) -> PgLsn {
    PgLsn::from(lsn.0)
}

/// [`Lsn`] of a `pg_lsn` value.
pub fn lsn_from_pg(lsn: PgLsn) -> Lsn {
    Lsn(u64::from(lsn))
}
