//! Table data and sequence values of the initial copy.
//!
//! Place in the data flow: the last step of the initial copy. Every table is
//! read with `COPY ... TO STDOUT` on a primary session that has imported the
//! snapshot exported by slot creation, and streamed, chunk by chunk, into
//! `COPY ... FROM STDIN` on the replica's writer session. The caller holds the
//! replica transaction open around all tables, so a crash leaves nothing half
//! copied. Text format: it works for every type that has an output function,
//! across server versions.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio_postgres::Client;

use super::CopyError;

/// Schema whose tables belong to Tandem itself and are never copied.
pub const TANDEM_SCHEMA: &str = "tandem";

/// Lists the primary's user tables holding data (quoted `schema.table`):
/// ordinary tables and leaf partitions, not temporary, not owned by an
/// extension (their data comes with `CREATE EXTENSION`), not Tandem's own.
pub async fn list_tables(primary: &Client) -> Result<Vec<String>, CopyError> {
    let rows = primary
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND c.relpersistence <> 't' \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema', $1) \
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
                   WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e') \
             ORDER BY 1",
            &[&TANDEM_SCHEMA],
        )
        .await
        .map_err(|source| CopyError::Sql { context: "listing the primary's tables".to_owned(), source })?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Streams the rows of `table` from the primary session into the replica
/// session; returns the number of rows copied.
pub async fn copy_table(primary: &Client, replica: &Client, table: &str) -> Result<u64, CopyError> {
    let sql_err = |what: &str| {
        let context = format!("{what} table {table}");
        move |source| CopyError::Sql { context, source }
    };
    let out = primary.copy_out(&format!("COPY {table} TO STDOUT")).await.map_err(sql_err("reading"))?;
    let sink = replica.copy_in::<_, Bytes>(&format!("COPY {table} FROM STDIN")).await.map_err(sql_err("writing"))?;
    futures::pin_mut!(out);
    futures::pin_mut!(sink);
    while let Some(chunk) = out.next().await {
        let chunk = chunk.map_err(sql_err("reading"))?;
        sink.as_mut().feed(chunk).await.map_err(sql_err("writing"))?;
    }
    sink.as_mut().finish().await.map_err(sql_err("writing"))
}

/// Reads every sequence's current value from the primary (sequences never
/// called yet are left out; Tandem's own schema too).
pub async fn read_sequences(primary: &Client) -> Result<Vec<(String, i64)>, tokio_postgres::Error> {
    let rows = primary
        .query(
            "SELECT format('%I.%I', schemaname, sequencename), last_value \
             FROM pg_catalog.pg_sequences \
             WHERE last_value IS NOT NULL AND schemaname <> $1 ORDER BY 1",
            &[&TANDEM_SCHEMA],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Sets the given sequence values on the replica with `setval`. A sequence
/// the replica does not have (yet: DDL still in flight) is skipped with a
/// debug log; returns how many were set.
pub async fn write_sequences(replica: &Client, values: &[(String, i64)]) -> Result<usize, tokio_postgres::Error> {
    let stmt = replica
        .prepare(
            "SELECT pg_catalog.setval(c.oid, $2, true) FROM pg_catalog.pg_class c \
             WHERE c.oid = to_regclass($1) AND c.relkind = 'S'",
        )
        .await?;
    let mut set = 0;
    for (name, value) in values {
        let rows = replica.query(&stmt, &[name, value]).await?;
        if rows.is_empty() {
            tracing::debug!(sequence = %name, "sequence not on the replica yet");
        } else {
            set += 1;
        }
    }
    Ok(set)
}
