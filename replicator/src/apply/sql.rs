//! SQL text building for the applier: quoting and per-relation statements.
//!
//! Place in the data flow: between a decoded change and the replica. Each
//! relation and change shape (which columns are sent, which are unchanged
//! TOAST, which identify the row) maps to one statement text, prepared once
//! per writer session and reused.

use super::text::TextParam;
use crate::change::{Change, Datum, Relation, ReplicaIdentity, Tuple};

/// Quotes an identifier for SQL text (always double-quoted, `"` doubled).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal for SQL text (`'` doubled; standard strings).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// `"schema"."name"`.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// Statement text and bind parameters for one row change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowStatement {
    /// SQL text with `$n` placeholders; also the prepared-statement cache key.
    pub sql: String,
    /// One text-format value per placeholder, in order.
    pub params: Vec<TextParam>,
}

/// Why a change cannot be turned into a statement.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// UPDATE/DELETE on a table with no way to find the old row.
    #[error(
        "cannot apply {op} to table {table}: it has no usable replica identity \
         (add a primary key, or ALTER TABLE ... REPLICA IDENTITY FULL on the primary)"
    )]
    NoIdentity {
        /// `UPDATE` or `DELETE`.
        op: &'static str,
        /// Quoted table name.
        table: String,
    },
    /// A key column came as "unchanged TOAST" with no old key to use instead.
    #[error("cannot apply {op} to table {table}: key column {column} was not sent")]
    KeyNotSent {
        /// `UPDATE` or `DELETE`.
        op: &'static str,
        /// Quoted table name.
        table: String,
        /// The column.
        column: String,
    },
    /// The tuple does not have one value per column of its relation.
    #[error("change for table {table} carries {got} values for {expected} columns")]
    Arity {
        /// Quoted table name.
        table: String,
        /// Values in the tuple.
        got: usize,
        /// Columns in the relation.
        expected: usize,
    },
}

/// Type OIDs without a usable `=` (json, xml, geometric types compared by
/// area, and their arrays): matched as text in REPLICA IDENTITY FULL lookups.
const COMPARE_AS_TEXT: &[u32] = &[114, 199, 142, 143, 600, 1017, 603, 1020, 604, 1027, 628, 629, 718, 719];

/// `INSERT INTO t (sent columns) VALUES (...)`.
pub fn insert(rel: &Relation, new: &Tuple) -> Result<RowStatement, PlanError> {
    let table = qualified(&rel.schema, &rel.name);
    check_arity(rel, new, &table)?;
    let mut cols = Vec::new();
    let mut placeholders = Vec::new();
    let mut params = Vec::new();
    for (col, datum) in rel.columns.iter().zip(&new.0) {
        let Some(param) = param_of(datum) else {
            continue;
        };
        params.push(param);
        cols.push(quote_ident(&col.name));
        placeholders.push(format!("${}", params.len()));
    }
    let sql = if cols.is_empty() {
        format!("INSERT INTO {table} DEFAULT VALUES")
    } else {
        format!("INSERT INTO {table} ({}) VALUES ({})", cols.join(", "), placeholders.join(", "))
    };
    Ok(RowStatement { sql, params })
}

/// `INSERT INTO t (sent columns) VALUES (...), (...)` for `rows` rows sending
/// the same columns as `new`; the parameters are each row's, in row order.
pub fn insert_rows(rel: &Relation, new: &Tuple, rows: usize) -> Result<String, PlanError> {
    let table = qualified(&rel.schema, &rel.name);
    check_arity(rel, new, &table)?;
    let sent: Vec<&str> =
        rel.columns.iter().zip(&new.0).filter(|(_, d)| !matches!(d, Datum::Unchanged)).map(|(c, _)| &*c.name).collect();
    let mut sql =
        format!("INSERT INTO {table} ({}) VALUES ", sent.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", "));
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        let first = row * sent.len();
        sql.push_str(&(1..=sent.len()).map(|i| format!("${}", first + i)).collect::<Vec<_>>().join(", "));
        sql.push(')');
    }
    Ok(sql)
}

/// `UPDATE t SET (sent columns) WHERE (identity)`; unchanged TOAST columns
/// are left out of the SET list, so the replica keeps its value. `None` when
/// there is nothing to set.
pub fn update(rel: &Relation, old: Option<&Tuple>, new: &Tuple) -> Result<Option<RowStatement>, PlanError> {
    let table = qualified(&rel.schema, &rel.name);
    check_arity(rel, new, &table)?;
    let mut params = Vec::new();
    let mut sets = Vec::new();
    for (col, datum) in rel.columns.iter().zip(&new.0) {
        let Some(param) = param_of(datum) else {
            continue;
        };
        params.push(param);
        sets.push(format!("{} = ${}", quote_ident(&col.name), params.len()));
    }
    if sets.is_empty() {
        return Ok(None);
    }
    let filter = row_filter(rel, old, new, &table, "UPDATE", &mut params)?;
    Ok(Some(RowStatement { sql: format!("UPDATE {table} SET {} WHERE {filter}", sets.join(", ")), params }))
}

/// `DELETE FROM t WHERE (identity)`.
pub fn delete(rel: &Relation, old: &Tuple) -> Result<RowStatement, PlanError> {
    let table = qualified(&rel.schema, &rel.name);
    check_arity(rel, old, &table)?;
    let mut params = Vec::new();
    let filter = row_filter(rel, Some(old), old, &table, "DELETE", &mut params)?;
    Ok(RowStatement { sql: format!("DELETE FROM {table} WHERE {filter}"), params })
}

/// The statement text and parameters of a row change ([`insert`], [`update`]
/// or [`delete`]); `None` for other changes and an UPDATE with nothing to set.
pub fn render(change: &Change) -> Result<Option<RowStatement>, PlanError> {
    match change {
        Change::Insert { rel, new } => insert(rel, new).map(Some),
        Change::Update { rel, old, new } => update(rel, old.as_ref(), new),
        Change::Delete { rel, old } => delete(rel, old).map(Some),
        Change::Truncate { .. } | Change::Message { .. } => Ok(None),
    }
}

/// `TRUNCATE t1, t2 [RESTART IDENTITY] [CASCADE]`.
pub fn truncate(rels: &[std::sync::Arc<Relation>], cascade: bool, restart_identity: bool) -> String {
    let names: Vec<String> = rels.iter().map(|r| qualified(&r.schema, &r.name)).collect();
    let mut sql = format!("TRUNCATE {}", names.join(", "));
    if restart_identity {
        sql.push_str(" RESTART IDENTITY");
    }
    if cascade {
        sql.push_str(" CASCADE");
    }
    sql
}

/// Which statement a row change becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RowKind {
    /// `INSERT`.
    Insert,
    /// `UPDATE`.
    Update,
    /// `DELETE`.
    Delete,
}

impl RowKind {
    /// The SQL verb, for logs and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            RowKind::Insert => "INSERT",
            RowKind::Update => "UPDATE",
            RowKind::Delete => "DELETE",
        }
    }
}

/// The hot path of planning a row change: appends its statement *shape* to
/// `key` and its bind values to `params`, without building SQL text.
///
/// For a given relation, two changes with the same key get the same SQL text
/// from [`insert`] / [`update`] / [`delete`] and their parameters in the same
/// order, so the key (with the relation) identifies the prepared statement:
/// the applier looks statements up by key and renders SQL only on a miss.
/// What the text depends on, besides the relation: which new columns are sent
/// (unchanged TOAST is left out), and for the row filter whether it matches
/// the full old row (and which old values are NULL or not sent) or the key
/// (and which key values are NULL). Returns `Ok(None)` for a change that is
/// not a row change or an UPDATE with nothing to set.
pub fn shape(change: &Change, key: &mut Vec<u8>, params: &mut Vec<TextParam>) -> Result<Option<RowKind>, PlanError> {
    match change {
        Change::Insert { rel, new } => {
            shape_arity(rel, new)?;
            key.push(b'I');
            shape_values(new, key, params);
            Ok(Some(RowKind::Insert))
        }
        Change::Update { rel, old, new } => {
            shape_arity(rel, new)?;
            if new.0.iter().all(|d| matches!(d, Datum::Unchanged)) {
                return Ok(None);
            }
            key.push(b'U');
            shape_values(new, key, params);
            shape_filter(rel, old.as_ref(), new, "UPDATE", key, params)?;
            Ok(Some(RowKind::Update))
        }
        Change::Delete { rel, old } => {
            shape_arity(rel, old)?;
            key.push(b'D');
            shape_filter(rel, Some(old), old, "DELETE", key, params)?;
            Ok(Some(RowKind::Delete))
        }
        Change::Truncate { .. } | Change::Message { .. } => Ok(None),
    }
}

fn shape_arity(rel: &Relation, tuple: &Tuple) -> Result<(), PlanError> {
    if tuple.0.len() != rel.columns.len() {
        return check_arity(rel, tuple, &qualified(&rel.schema, &rel.name));
    }
    Ok(())
}

/// One code per column: `u` left out (unchanged TOAST), `p` a parameter.
fn shape_values(tuple: &Tuple, key: &mut Vec<u8>, params: &mut Vec<TextParam>) {
    for datum in &tuple.0 {
        match param_of(datum) {
            Some(p) => {
                key.push(b'p');
                params.push(p);
            }
            None => key.push(b'u'),
        }
    }
}

/// The key and parameters of [`row_filter`]'s condition (same walk, same order).
fn shape_filter(
    rel: &Relation,
    old: Option<&Tuple>,
    new: &Tuple,
    op: &'static str,
    key: &mut Vec<u8>,
    params: &mut Vec<TextParam>,
) -> Result<(), PlanError> {
    let no_identity = || PlanError::NoIdentity { op, table: qualified(&rel.schema, &rel.name) };
    if let Some(old) = old {
        shape_arity(rel, old)?;
    }
    let before = params.len();
    if let (ReplicaIdentity::Full, Some(old)) = (rel.replica_identity, old) {
        key.push(b'F');
        let mut conds = 0;
        for datum in &old.0 {
            match datum {
                Datum::Unchanged => key.push(b'u'),
                Datum::Null => {
                    key.push(b'n');
                    conds += 1;
                }
                Datum::Text(v) => {
                    key.push(b'p');
                    params.push(TextParam::Text(v.clone()));
                    conds += 1;
                }
            }
        }
        if conds == 0 {
            return Err(no_identity());
        }
        return Ok(());
    }
    if rel.replica_identity == ReplicaIdentity::Nothing {
        return Err(no_identity());
    }
    key.push(b'K');
    let source = old.unwrap_or(new);
    let mut conds = 0;
    for (col, datum) in rel.columns.iter().zip(&source.0) {
        if !col.is_key {
            continue;
        }
        match datum {
            Datum::Null => key.push(b'n'),
            Datum::Text(v) => {
                key.push(b'p');
                params.push(TextParam::Text(v.clone()));
            }
            Datum::Unchanged => {
                params.truncate(before);
                return Err(PlanError::KeyNotSent {
                    op,
                    table: qualified(&rel.schema, &rel.name),
                    column: col.name.clone(),
                });
            }
        }
        conds += 1;
    }
    if conds == 0 {
        return Err(no_identity());
    }
    Ok(())
}

fn check_arity(rel: &Relation, tuple: &Tuple, table: &str) -> Result<(), PlanError> {
    if tuple.0.len() != rel.columns.len() {
        return Err(PlanError::Arity { table: table.to_owned(), got: tuple.0.len(), expected: rel.columns.len() });
    }
    Ok(())
}

/// The bind value of a datum; `None` for an unchanged TOAST value.
fn param_of(datum: &Datum) -> Option<TextParam> {
    match datum {
        Datum::Null => Some(TextParam::Null),
        Datum::Text(v) => Some(TextParam::Text(v.clone())),
        Datum::Unchanged => None,
    }
}

/// The WHERE condition finding the old row.
///
/// Identity DEFAULT/INDEX: the key columns, from `old` when the key changed,
/// otherwise from `new`. Identity FULL: every sent column of the old row with
/// `IS NOT DISTINCT FROM`, limited to one physical row (`ctid`), because a
/// table without a key may hold identical rows and the primary changed one.
fn row_filter(
    rel: &Relation,
    old: Option<&Tuple>,
    new: &Tuple,
    table: &str,
    op: &'static str,
    params: &mut Vec<TextParam>,
) -> Result<String, PlanError> {
    if let Some(old) = old {
        check_arity(rel, old, table)?;
    }
    let full = rel.replica_identity == ReplicaIdentity::Full && old.is_some();
    if full {
        let old = old.unwrap_or(new);
        let mut conds = Vec::new();
        for (col, datum) in rel.columns.iter().zip(&old.0) {
            let name = quote_ident(&col.name);
            match datum {
                Datum::Unchanged => continue,
                Datum::Null => conds.push(format!("{name} IS NULL")),
                Datum::Text(v) => {
                    params.push(TextParam::Text(v.clone()));
                    let n = params.len();
                    if COMPARE_AS_TEXT.contains(&col.type_oid) {
                        conds.push(format!("{name}::text = ${n}::text"));
                    } else {
                        conds.push(format!("{name} = ${n}"));
                    }
                }
            }
        }
        if conds.is_empty() {
            return Err(PlanError::NoIdentity { op, table: table.to_owned() });
        }
        return Ok(format!("ctid = (SELECT ctid FROM {table} WHERE {} LIMIT 1)", conds.join(" AND ")));
    }
    if rel.replica_identity == ReplicaIdentity::Nothing {
        return Err(PlanError::NoIdentity { op, table: table.to_owned() });
    }
    let source = old.unwrap_or(new);
    let mut conds = Vec::new();
    for (col, datum) in rel.columns.iter().zip(&source.0) {
        if !col.is_key {
            continue;
        }
        let name = quote_ident(&col.name);
        match datum {
            Datum::Null => conds.push(format!("{name} IS NULL")),
            Datum::Text(v) => {
                params.push(TextParam::Text(v.clone()));
                conds.push(format!("{name} = ${}", params.len()));
            }
            Datum::Unchanged => {
                return Err(PlanError::KeyNotSent { op, table: table.to_owned(), column: col.name.clone() })
            }
        }
    }
    if conds.is_empty() {
        return Err(PlanError::NoIdentity { op, table: table.to_owned() });
    }
    Ok(conds.join(" AND "))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::change::Column;

    fn rel(identity: ReplicaIdentity, keys: &[bool]) -> Relation {
        Relation {
            oid: 1,
            schema: "public".into(),
            name: "t".into(),
            replica_identity: identity,
            columns: keys
                .iter()
                .enumerate()
                .map(|(i, k)| Column {
                    name: format!("c{i}"),
                    type_oid: if i == 2 { 114 } else { 23 },
                    type_modifier: -1,
                    is_key: *k,
                })
                .collect(),
        }
    }

    fn t(s: &str) -> Datum {
        Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn multi_row_insert_numbers_parameters_across_rows() {
        let r = rel(ReplicaIdentity::Default, &[true, false]);
        let s = insert_rows(&r, &Tuple(vec![t("1"), Datum::Null]), 3).unwrap();
        assert_eq!(s, r#"INSERT INTO "public"."t" ("c0", "c1") VALUES ($1, $2), ($3, $4), ($5, $6)"#);
    }

    #[test]
    fn insert_lists_sent_columns() {
        let r = rel(ReplicaIdentity::Default, &[true, false]);
        let s = insert(&r, &Tuple(vec![t("1"), Datum::Null])).unwrap();
        assert_eq!(s.sql, r#"INSERT INTO "public"."t" ("c0", "c1") VALUES ($1, $2)"#);
        assert_eq!(s.params, vec![TextParam::Text(Bytes::from_static(b"1")), TextParam::Null]);
    }

    #[test]
    fn update_skips_unchanged_toast_and_uses_key() {
        let r = rel(ReplicaIdentity::Default, &[true, false, false]);
        let s = update(&r, None, &Tuple(vec![t("1"), Datum::Unchanged, t("{}")])).unwrap().unwrap();
        assert_eq!(s.sql, r#"UPDATE "public"."t" SET "c0" = $1, "c2" = $2 WHERE "c0" = $3"#);
        assert_eq!(s.params.len(), 3);
    }

    #[test]
    fn update_with_changed_key_uses_old_key() {
        let r = rel(ReplicaIdentity::Index, &[true, false]);
        let s = update(&r, Some(&Tuple(vec![t("7"), Datum::Null])), &Tuple(vec![t("8"), t("x")])).unwrap().unwrap();
        assert_eq!(s.sql, r#"UPDATE "public"."t" SET "c0" = $1, "c1" = $2 WHERE "c0" = $3"#);
        assert_eq!(s.params[2], TextParam::Text(Bytes::from_static(b"7")));
    }

    #[test]
    fn full_identity_matches_one_row_on_all_columns() {
        let r = rel(ReplicaIdentity::Full, &[false, false, false]);
        let s = delete(&r, &Tuple(vec![t("1"), Datum::Null, t("{\"a\":1}")])).unwrap();
        assert_eq!(
            s.sql,
            r#"DELETE FROM "public"."t" WHERE ctid = (SELECT ctid FROM "public"."t" WHERE "c0" = $1 AND "c1" IS NULL AND "c2"::text = $2::text LIMIT 1)"#
        );
    }

    #[test]
    fn missing_identity_is_reported_with_the_table() {
        let r = rel(ReplicaIdentity::Default, &[false, false]);
        let err = delete(&r, &Tuple(vec![t("1"), t("2")])).unwrap_err();
        assert!(err.to_string().contains("\"public\".\"t\""), "{err}");
        let r = rel(ReplicaIdentity::Nothing, &[true]);
        assert!(matches!(update(&r, None, &Tuple(vec![t("1")])), Err(PlanError::NoIdentity { .. })));
    }

    /// Every change of the list, planned by `shape` and by the text builders:
    /// same parameters, and equal keys exactly when the SQL text is equal.
    #[test]
    fn shape_keys_match_the_statement_text() {
        let keyed = Arc::new(rel(ReplicaIdentity::Default, &[true, false, false]));
        let full = Arc::new(rel(ReplicaIdentity::Full, &[false, false, false]));
        let tup = |v: Vec<Datum>| Tuple(v);
        let changes = vec![
            Change::Insert { rel: keyed.clone(), new: tup(vec![t("1"), Datum::Null, t("x")]) },
            Change::Insert { rel: keyed.clone(), new: tup(vec![t("2"), t("y"), t("x")]) },
            Change::Insert { rel: keyed.clone(), new: tup(vec![t("3"), Datum::Unchanged, t("x")]) },
            Change::Update { rel: keyed.clone(), old: None, new: tup(vec![t("1"), t("a"), Datum::Unchanged]) },
            Change::Update { rel: keyed.clone(), old: None, new: tup(vec![t("1"), t("a"), t("b")]) },
            Change::Update {
                rel: keyed.clone(),
                old: Some(tup(vec![t("9"), Datum::Null, Datum::Null])),
                new: tup(vec![t("1"), t("a"), t("b")]),
            },
            Change::Update {
                rel: keyed.clone(),
                old: Some(tup(vec![Datum::Null, Datum::Null, Datum::Null])),
                new: tup(vec![t("1"), t("a"), t("b")]),
            },
            Change::Delete { rel: keyed.clone(), old: tup(vec![t("4"), Datum::Null, Datum::Null]) },
            Change::Delete { rel: full.clone(), old: tup(vec![t("4"), Datum::Null, t("{}")]) },
            Change::Delete { rel: full.clone(), old: tup(vec![t("4"), t("5"), t("{}")]) },
            Change::Delete { rel: full.clone(), old: tup(vec![t("4"), Datum::Unchanged, t("{}")]) },
            Change::Update {
                rel: full.clone(),
                old: Some(tup(vec![t("4"), Datum::Null, t("{}")])),
                new: tup(vec![t("4"), t("6"), t("{}")]),
            },
        ];
        let mut seen: Vec<(Vec<u8>, String)> = Vec::new();
        for change in &changes {
            let (mut key, mut params) = (Vec::new(), Vec::new());
            let kind = shape(change, &mut key, &mut params).unwrap().unwrap();
            let text = render(change).unwrap().unwrap();
            assert!(text.sql.starts_with(kind.as_str()), "{kind:?} {}", text.sql);
            assert_eq!(params, text.params, "{}", text.sql);
            for (k, sql) in &seen {
                assert_eq!(k == &key, sql == &text.sql, "{sql} vs {}", text.sql);
            }
            seen.push((key, text.sql));
        }
        // Errors agree with the text builders.
        let none = Arc::new(rel(ReplicaIdentity::Default, &[false, false, false]));
        let d = Change::Delete { rel: none.clone(), old: tup(vec![t("1"), t("2"), t("3")]) };
        let (mut key, mut params) = (Vec::new(), Vec::new());
        assert_eq!(
            shape(&d, &mut key, &mut params),
            Err(delete(&none, &tup(vec![t("1"), t("2"), t("3")])).unwrap_err())
        );
        let u = Change::Update { rel: keyed.clone(), old: None, new: tup(vec![Datum::Unchanged, t("a"), t("b")]) };
        assert!(matches!(shape(&u, &mut key, &mut params), Err(PlanError::KeyNotSent { .. })));
        let short = Change::Insert { rel: keyed.clone(), new: tup(vec![t("1")]) };
        assert!(matches!(shape(&short, &mut key, &mut params), Err(PlanError::Arity { .. })));
        let nothing = Change::Update { rel: keyed, old: None, new: tup(vec![Datum::Unchanged; 3]) };
        assert_eq!(shape(&nothing, &mut key, &mut params), Ok(None));
    }

    #[test]
    fn truncate_lists_tables_and_options() {
        let r = Arc::new(rel(ReplicaIdentity::Default, &[true]));
        assert_eq!(
            truncate(&[r.clone(), r], true, true),
            r#"TRUNCATE "public"."t", "public"."t" RESTART IDENTITY CASCADE"#
        );
    }
}
