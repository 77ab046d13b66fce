//! Creating a replica's database like the primary's.
//!
//! Place in the data flow: between the global objects (the owner role must
//! exist) and the schema (which is restored into this database). Only
//! creation attributes that must match for the data to fit are copied:
//! encoding, collation, character classes, locale provider, owner.

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::CopyError;
use crate::apply::sql::{quote_ident, quote_literal};

/// Creates `database` on the replica (through `replica_admin`, a writer
/// session on another database) unless it exists; returns whether it did.
pub async fn ensure_database(primary: &Client, replica_admin: &Client, database: &str) -> Result<bool, CopyError> {
    let exists = replica_admin
        .query_opt("SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1", &[&database])
        .await
        .map_err(|source| CopyError::Sql { context: "looking up the database on the replica".to_owned(), source })?
        .is_some();
    if exists {
        return Ok(false);
    }
    // to_jsonb(d) keeps this working across versions that renamed columns
    // (daticulocale became datlocale in 17).
    let row = primary
        .query_opt(
            "SELECT pg_catalog.pg_encoding_to_char(d.encoding), pg_catalog.pg_get_userbyid(d.datdba), \
                    to_jsonb(d)::text \
             FROM pg_catalog.pg_database d WHERE d.datname = $1",
            &[&database],
        )
        .await
        .map_err(|source| CopyError::Sql {
            context: "reading the database's attributes on the primary".to_owned(),
            source,
        })?
        .ok_or_else(|| CopyError::NoSuchDatabase(database.to_owned()))?;
    let encoding: String = row.get(0);
    let owner: String = row.get(1);
    let attrs: serde_json::Value = serde_json::from_str(row.get::<_, &str>(2)).unwrap_or_default();
    let text = |key: &str| attrs.get(key).and_then(|v| v.as_str()).map(str::to_owned);

    let mut sql = format!(
        "CREATE DATABASE {} WITH TEMPLATE template0 ENCODING {} OWNER {}",
        quote_ident(database),
        quote_literal(&encoding),
        quote_ident(&owner)
    );
    if let Some(collate) = text("datcollate") {
        sql.push_str(&format!(" LC_COLLATE {}", quote_literal(&collate)));
    }
    if let Some(ctype) = text("datctype") {
        sql.push_str(&format!(" LC_CTYPE {}", quote_literal(&ctype)));
    }
    if text("datlocprovider").as_deref() == Some("i") {
        sql.push_str(" LOCALE_PROVIDER icu");
        if let Some(icu) = text("daticulocale").or_else(|| text("datlocale")) {
            sql.push_str(&format!(" ICU_LOCALE {}", quote_literal(&icu)));
        }
    }
    tracing::info!(database, "creating the database on the replica");
    match replica_admin.batch_execute(&sql).await {
        Ok(()) => Ok(true),
        // Another session created it since we looked: typically the session of
        // a replicator killed in the middle of this very CREATE DATABASE,
        // which the server finished after its client was gone.
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) || e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            tracing::info!(database, "the database appeared on the replica meanwhile");
            Ok(false)
        }
        Err(source) => Err(CopyError::Sql { context: format!("creating database {database} on the replica"), source }),
    }
}
