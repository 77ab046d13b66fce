//! Initial copy of one database of one replica.
//!
//! Place in the data flow: before streaming. When the source creates the
//! logical slot it gets an exported snapshot and the slot's consistent point;
//! everything committed before that point is copied here, everything after
//! arrives through the change log and the applier, which resumes from the
//! progress row this copy writes.
//!
//! Steps: make the replica server read-only for ordinary sessions; copy roles
//! (`pg_dumpall --globals-only`); create the database if missing; then, in
//! ONE replica transaction: the schema (`pg_dump --schema-only
//! --snapshot=NAME`), every table's rows (COPY, read in the snapshot), the
//! sequences' values, and the progress row set to the consistent point. A
//! crash anywhere inside rolls all of it back, so the next attempt starts
//! from an empty database again; a database whose progress row exists is
//! already copied and left alone.

mod data;
mod database;
mod globals;
mod tools;

use std::time::Instant;

use tandem_core::Lsn;
use tokio_postgres::Config;

use crate::apply::session;

pub use data::{copy_table, list_tables, read_sequences, write_sequences, TANDEM_SCHEMA};
pub use database::ensure_database;
pub use globals::{apply_globals, copy_globals};
pub use tools::{conninfo, strip_meta_commands, PgTools};

/// Why an initial copy failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// `pg_dump`/`pg_dumpall` are nowhere to be found.
    #[error("cannot find pg_dump and pg_dumpall (looked in: {0}); set PG_BIN to PostgreSQL's bin directory")]
    ToolsNotFound(String),
    /// A dump tool could not be started.
    #[error("cannot run {program}: {source}")]
    ToolSpawn {
        /// Path of the program.
        program: String,
        /// Why it did not start.
        #[source]
        source: std::io::Error,
    },
    /// A dump tool exited with an error.
    #[error("{program} failed ({status}): {stderr}")]
    ToolFailed {
        /// Name of the program.
        program: String,
        /// Its exit status.
        status: String,
        /// What it printed on standard error.
        stderr: String,
    },
    /// A dump tool printed something that is not UTF-8.
    #[error("{0} printed output that is not UTF-8")]
    ToolOutput(String),
    /// A statement on the primary or the replica failed.
    #[error("{context}: {source}")]
    Sql {
        /// What the copy was doing.
        context: String,
        /// The server's or the connection's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The database does not exist on the primary.
    #[error("database {0:?} does not exist on the primary")]
    NoSuchDatabase(String),
    /// The replica's database holds tables but was never fed from this source.
    #[error(
        "database {database:?} on the replica already has tables ({example} ...) but no Tandem progress \
         for source {source_name:?}; drop it or point the replica elsewhere"
    )]
    ReplicaNotEmpty {
        /// The database.
        database: String,
        /// One of the tables found.
        example: String,
        /// The progress key looked for.
        source_name: String,
    },
    /// The replica's database was fed by Tandem before, but not up to where
    /// the new stream starts: the changes in between are gone.
    #[error(
        "database {database:?} on the replica was applied up to {applied} only, but the stream \
         now starts after {needed}; drop the replica's database so it is copied again"
    )]
    StaleReplica {
        /// The database.
        database: String,
        /// Its progress row.
        applied: Lsn,
        /// What the new stream needs.
        needed: Lsn,
    },
    /// The replica DSN names no user, so its own role cannot be protected.
    #[error("the replica DSN must name the user to log in as")]
    NoReplicaUser,
}

/// What to copy, from where, to where.
#[derive(Clone, Copy, Debug)]
pub struct CopyRequest<'a> {
    /// The primary (any database name in it is replaced by `database`).
    pub primary: &'a Config,
    /// The replica; its user must be a superuser there.
    pub replica: &'a Config,
    /// The database to copy (same name on both sides).
    pub database: &'a str,
    /// Snapshot exported by `CREATE_REPLICATION_SLOT ... EXPORT_SNAPSHOT`,
    /// still valid (its replication connection has not run another command).
    pub snapshot: &'a str,
    /// The slot's consistent point. Transactions whose commit record starts
    /// at or after it are streamed, those before are in the snapshot; the
    /// progress row is therefore set to `consistent_point - 1`, so that the
    /// applier's rule "skip `commit_lsn <= progress`" keeps a commit sitting
    /// exactly at the consistent point.
    pub consistent_point: Lsn,
    /// Key of the progress row (the source the replica is fed from).
    pub source: &'a str,
}

/// What a copy did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopyOutcome {
    /// The database was copied now.
    Copied {
        /// Tables whose rows were copied.
        tables: usize,
        /// Rows copied over all tables.
        rows: u64,
    },
    /// The database already had a progress row for this source; nothing done.
    AlreadyCopied {
        /// The applied position found.
        lsn: Lsn,
    },
}

/// Copies one database of the primary into a replica (see module docs).
pub async fn copy_database(req: &CopyRequest<'_>) -> Result<CopyOutcome, CopyError> {
    let started = Instant::now();
    let replica_user = req.replica.get_user().ok_or(CopyError::NoReplicaUser)?;
    let tools = PgTools::locate().await?;
    let sql = |context: &str| {
        let context = context.to_owned();
        move |source| CopyError::Sql { context, source }
    };

    let maintenance_db = req.replica.get_dbname().unwrap_or("postgres");
    let admin = session::connect_writer(req.replica, maintenance_db).await.map_err(sql("connecting to the replica"))?;
    let mut primary_cfg = req.primary.clone();
    primary_cfg.dbname(req.database);
    let primary =
        session::connect(&primary_cfg, req.database, "tandem-copy").await.map_err(sql("connecting to the primary"))?;

    // If the database already exists with progress, it was copied before;
    // usable only if it has everything up to the new stream's start.
    if let Some(lsn) = existing_progress(req).await? {
        let needed = progress_after_copy(req.consistent_point);
        if lsn < needed {
            return Err(CopyError::StaleReplica { database: req.database.to_owned(), applied: lsn, needed });
        }
        tracing::info!(database = req.database, %lsn, "replica database already copied");
        return Ok(CopyOutcome::AlreadyCopied { lsn });
    }

    session::make_server_read_only(&admin).await.map_err(sql("making the replica server read-only"))?;
    let globals = copy_globals(&tools, &primary_cfg, &admin, replica_user).await?;
    tracing::info!(statements = globals, "copied roles to the replica");
    ensure_database(&primary, &admin, req.database).await?;
    drop(admin);

    let replica =
        session::connect_writer(req.replica, req.database).await.map_err(sql("connecting to the replica database"))?;
    if let Some(example) = any_user_table(&replica).await? {
        return Err(CopyError::ReplicaNotEmpty {
            database: req.database.to_owned(),
            example,
            source_name: req.source.to_owned(),
        });
    }

    let schema = tools
        .run(
            "pg_dump",
            &primary_cfg,
            &[
                "--schema-only".to_owned(),
                format!("--snapshot={}", req.snapshot),
                "--no-tablespaces".to_owned(),
                "--no-publications".to_owned(),
                "--no-subscriptions".to_owned(),
            ],
        )
        .await?;

    primary
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            crate::apply::sql::quote_literal(req.snapshot)
        ))
        .await
        .map_err(sql("importing the exported snapshot on the primary"))?;
    replica.batch_execute("BEGIN").await.map_err(sql("starting the copy transaction on the replica"))?;
    replica.batch_execute(&strip_meta_commands(&schema)).await.map_err(sql("restoring the schema on the replica"))?;

    let tables = list_tables(&primary).await?;
    let mut rows = 0;
    for table in &tables {
        let n = copy_table(&primary, &replica, table).await?;
        tracing::debug!(table = %table, rows = n, "copied table");
        rows += n;
    }
    let sequences = read_sequences(&primary).await.map_err(sql("reading sequences on the primary"))?;
    write_sequences(&replica, &sequences).await.map_err(sql("setting sequences on the replica"))?;
    session::ensure_progress_table(&replica).await.map_err(sql("creating the progress table on the replica"))?;
    session::write_progress(&replica, req.source, progress_after_copy(req.consistent_point))
        .await
        .map_err(sql("writing the progress row on the replica"))?;
    replica.batch_execute("COMMIT").await.map_err(sql("committing the copy on the replica"))?;
    // The primary side only read; ending it releases the snapshot.
    let _ = primary.batch_execute("COMMIT").await;
    tracing::info!(
        database = req.database,
        tables = tables.len(),
        rows,
        lsn = %req.consistent_point,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "initial copy done"
    );
    Ok(CopyOutcome::Copied { tables: tables.len(), rows })
}

/// The progress row value standing for "everything committed before
/// `consistent_point`" (see [`CopyRequest::consistent_point`]).
pub fn progress_after_copy(consistent_point: Lsn) -> Lsn {
    Lsn(consistent_point.0.saturating_sub(1))
}

/// The progress of `req.source` in the replica's database, if both exist.
async fn existing_progress(req: &CopyRequest<'_>) -> Result<Option<Lsn>, CopyError> {
    let replica = match session::connect_writer(req.replica, req.database).await {
        Ok(c) => c,
        // Most likely the database does not exist yet.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME) => return Ok(None),
        Err(source) => {
            return Err(CopyError::Sql {
                context: format!("connecting to database {} on the replica", req.database),
                source,
            })
        }
    };
    session::read_progress(&replica, req.source)
        .await
        .map_err(|source| CopyError::Sql { context: "reading the replica's progress".to_owned(), source })
}

/// A user table in the replica's database, if there is any.
async fn any_user_table(replica: &tokio_postgres::Client) -> Result<Option<String>, CopyError> {
    let row = replica
        .query_opt(
            "SELECT format('%I.%I', n.nspname, c.relname) \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
             LIMIT 1",
            &[],
        )
        .await
        .map_err(|source| CopyError::Sql { context: "looking for tables on the replica".to_owned(), source })?;
    Ok(row.map(|r| r.get(0)))
}
