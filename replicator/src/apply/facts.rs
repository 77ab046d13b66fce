//! What the applier needs to know about the replica's tables to plan fewer statements.
//!
//! Place in the data flow: read from the replica's catalog when the writer
//! session opens and after every DDL replay (a barrier, so the plan of every
//! batch sees the catalog as it is when the batch runs), consumed by
//! [`super::coalesce::plan`]. See that module for why these facts make
//! grouping by table and dropping superseded UPDATEs safe.

use std::collections::{HashMap, HashSet};

use super::replies::Tag;
use super::writer::{conn::text_column, WriterError, WriterSession};
use crate::change::Relation;

/// Whether statements on one table may reach or observe others: a regular
/// table with inheritance children (an UPDATE/DELETE on it also reaches its
/// children's rows), or a trigger or rule that fires even under
/// `session_replication_role = replica` (ENABLE ALWAYS / ENABLE REPLICA),
/// which would also see every UPDATE run or dropped.
const DEPENDENT_SQL: &str = "SELECT (EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i \
       JOIN pg_catalog.pg_class c ON c.oid = i.inhparent WHERE c.relkind = 'r') \
     OR EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgenabled IN ('A', 'R') AND NOT t.tgisinternal) \
     OR EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite r WHERE r.ev_enabled IN ('A', 'R') AND r.rulename <> '_RETURN'))::text";

/// Tables whose only unique index is their replica identity index and which
/// have no exclusion constraint.
const COLLAPSIBLE_SQL: &str = "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'p') AND c.relreplident IN ('d', 'i') \
       AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisunique \
                       AND NOT (CASE c.relreplident WHEN 'd' THEN i.indisprimary ELSE i.indisreplident END)) \
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint x WHERE x.conrelid = c.oid AND x.contype = 'x')";

/// Catalog facts about the replica database's tables.
#[derive(Debug, Default)]
pub struct TableFacts {
    /// No table has inheritance children and no trigger or rule fires on the
    /// writer session: statements on different tables commute, and nothing
    /// observes an UPDATE that is dropped.
    pub independent: bool,
    /// schema → tables whose superseded UPDATEs may be dropped.
    collapsible: HashMap<String, HashSet<String>>,
}

impl TableFacts {
    /// Reads the facts on the writer session (nothing may be in flight).
    pub async fn load(session: &mut WriterSession<Tag>) -> Result<TableFacts, WriterError> {
        let rows = session.query(DEPENDENT_SQL, &[]).await?;
        let dependent = match rows.first() {
            Some(row) => text_column(row, 0)?,
            None => None,
        };
        let mut facts = TableFacts { independent: dependent.as_deref() == Some("false"), ..Default::default() };
        for row in session.query(COLLAPSIBLE_SQL, &[]).await? {
            if let (Some(schema), Some(table)) = (text_column(&row, 0)?, text_column(&row, 1)?) {
                facts.collapsible.entry(schema).or_default().insert(table);
            }
        }
        Ok(facts)
    }

    /// Whether superseded UPDATEs of `rel` may be dropped (never when tables
    /// are not independent).
    pub fn collapsible(&self, rel: &Relation) -> bool {
        self.independent && self.collapsible.get(rel.schema.as_str()).is_some_and(|t| t.contains(rel.name.as_str()))
    }
}
