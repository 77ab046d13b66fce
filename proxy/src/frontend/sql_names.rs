//! SQL that names a prepared statement the client made with the protocol's Parse.
//!
//! `client → frontend → server`: under transaction pooling a client's `Parse("s1", ...)`
//! lives on the servers as `tandem_<hash>` (shared by clients), so SQL such as
//! `EXECUTE s1 (42)` or sqlx's describe `EXPLAIN (VERBOSE, FORMAT JSON) EXECUTE sqlx_s_1`
//! would find nothing. The classifier marks such statements (`ExecutePrepared`); here the
//! names after `EXECUTE` are looked up among the client's statements and replaced by their
//! server names, and the session makes sure the connection has them (see
//! `Session::on_query`). Names the client did not Parse (its SQL `PREPARE`s, which pin it)
//! are left as they are.

use std::ops::Range;
use std::sync::Arc;

use pg_query::protobuf::Token;

use super::client_side::Failure;
use super::pipeline::Expect;
use super::session::Session;
use super::state::{Statement, Statements};
use crate::protocol::build::{self, sqlstate, Severity};
use crate::protocol::fields::TxStatus;
use crate::router::classify::Route;

/// The name after each `EXECUTE` keyword in `sql`: its byte range and the name as the
/// server reads it (unquoted names fold to lower case, quoted ones keep their text).
fn executed_names(sql: &str) -> Vec<(Range<usize>, String)> {
    let Ok(scan) = pg_query::scan(sql) else { return Vec::new() };
    let mut out = Vec::new();
    for pair in scan.tokens.windows(2) {
        let [keyword, name] = pair else { continue };
        if keyword.token != Token::Execute as i32 {
            continue;
        }
        let (Ok(start), Ok(end)) = (usize::try_from(name.start), usize::try_from(name.end)) else { continue };
        let Some(text) = sql.get(start..end) else { continue };
        let folded = match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
            Some(quoted) => quoted.replace("\"\"", "\""),
            None => text.to_ascii_lowercase(),
        };
        out.push((start..end, folded));
    }
    out
}

/// `sql` with every `EXECUTE name` of a statement in `statements` naming its server-side
/// statement, and those statements; `None` when it names none of them.
pub(crate) fn map_executed(sql: &str, statements: &Statements) -> Option<(String, Vec<Arc<Statement>>)> {
    let mut text = String::with_capacity(sql.len() + 16);
    let mut used = Vec::new();
    let mut copied = 0;
    for (range, name) in executed_names(sql) {
        let Some(stmt) = statements.get(name.as_bytes()) else { continue };
        text.push_str(sql.get(copied..range.start)?);
        text.push_str(&stmt.server_name);
        copied = range.end;
        used.push(stmt.clone());
    }
    if used.is_empty() {
        return None;
    }
    text.push_str(sql.get(copied..)?);
    Some((text, used))
}

/// A query that is one `PREPARE name ...` statement: the name as the server reads it and
/// the text after it (parameter types, `AS`, the statement).
fn prepared_name(sql: &str) -> Option<(String, &str)> {
    let scan = pg_query::scan(sql).ok()?;
    let [prepare, name, rest @ ..] = scan.tokens.as_slice() else { return None };
    let semicolon = Token::Ascii59 as i32;
    let inner = match rest.split_last() {
        Some((last, inner)) if last.token == semicolon => inner,
        _ => rest,
    };
    if prepare.token != Token::Prepare as i32
        || name.token == Token::Transaction as i32
        || inner.iter().any(|t| t.token == semicolon)
    {
        return None;
    }
    let end = usize::try_from(name.end).ok()?;
    let text = sql.get(usize::try_from(name.start).ok()?..end)?;
    let folded = match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\"\"", "\""),
        None => text.to_ascii_lowercase(),
    };
    let rest = sql.get(end..)?.trim_end();
    Some((folded, rest.strip_suffix(';').unwrap_or(rest)))
}

/// The client's SQL-prepared statement with text `rest` (after its name), shared by text
/// like protocol statements, made on a connection by `PREPARE <server name> <rest>`.
fn sql_statement(rest: &str) -> Statement {
    // Marked apart from a protocol statement of the same text: the two differ on the server.
    let mut stmt = Statement::new(rest.as_bytes(), b"SQL PREPARE", Route::Write);
    stmt.sql_prepare = Some(format!("PREPARE {}{rest}", stmt.server_name));
    stmt
}

impl Session {
    /// Transaction pooling: a query that is one SQL `PREPARE name ...`, outside a
    /// transaction, prepares the statement under a shared server name (made again wherever
    /// the client's `EXECUTE name` runs) instead of pinning the client to its connection;
    /// the name is the client's once the server succeeded. Returns false, having done
    /// nothing, for any other query (which then pins as before).
    pub(super) async fn prepare_shared(&mut self, sql: &[u8]) -> Result<bool, Failure> {
        if self.tx != TxStatus::Idle || !self.pipeline.is_idle() {
            return Ok(false);
        }
        let Some((name, rest)) = std::str::from_utf8(sql).ok().and_then(prepared_name) else { return Ok(false) };
        if self.statements.get(name.as_bytes()).is_some() {
            let mut reply = bytes::BytesMut::new();
            let message = format!("prepared statement \"{name}\" already exists");
            build::error(&mut reply, Severity::Error, sqlstate::DUPLICATE_PREPARED_STATEMENT, &message);
            build::ready_for_query(&mut reply, self.tx);
            self.pipeline.push(Expect::Synthetic(reply.freeze()), &mut self.cout);
            return Ok(true);
        }
        let stmt = Arc::new(sql_statement(rest));
        self.begin_unit(Route::Write).await?;
        let Some(a) = self.active.as_mut() else { return Ok(false) };
        if a.conn.prepared.remove(&stmt.hash) {
            // This connection has it (another client's): made afresh, as a new PREPARE sees
            // the current schema.
            build::query(&mut self.sout, &format!("DEALLOCATE {}", stmt.server_name));
            self.pipeline.push(Expect::Query { swallow: true }, &mut self.cout);
        }
        if let Some(text) = &stmt.sql_prepare {
            build::query(&mut self.sout, text);
            self.pipeline.push(Expect::Query { swallow: false }, &mut self.cout);
        }
        self.pending_define = Some((bytes::Bytes::copy_from_slice(name.as_bytes()), stmt));
        Ok(true)
    }

    /// Sends the client's query `sql` with its `EXECUTE`d names mapped (see
    /// [`map_executed`]), after Parses (and a hidden Sync) for the statements this server
    /// connection lacks. Returns false, having sent nothing, when it names none of the
    /// client's protocol-level statements.
    pub(super) fn send_mapped_query(&mut self, sql: &str) -> bool {
        let Some((text, used)) = map_executed(sql, &self.statements) else { return false };
        let before = self.sout.len();
        for stmt in &used {
            self.ensure_prepared(stmt);
        }
        if self.sout.len() != before {
            build::sync(&mut self.sout);
            self.pipeline.push(Expect::HiddenSync, &mut self.cout);
        }
        build::query(&mut self.sout, &text);
        self.pipeline.push(Expect::Query { swallow: false }, &mut self.cout);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_after_execute_are_mapped() {
        let mut statements = Statements::default();
        let stmt = Arc::new(Statement::new(b"SELECT $1::int", b"\0\0", Route::Read));
        let server = stmt.server_name.clone();
        statements.insert(b"sqlx_s_1", stmt.clone());
        statements.insert(b"Mixed", stmt);
        let (sql, used) =
            map_executed("EXPLAIN (VERBOSE, FORMAT JSON) EXECUTE sqlx_s_1", &statements).expect("a client statement");
        assert_eq!(sql, format!("EXPLAIN (VERBOSE, FORMAT JSON) EXECUTE {server}"));
        assert_eq!(used.len(), 1);
        let (sql, _) = map_executed("execute SQLX_S_1(1); EXECUTE \"Mixed\" (2)", &statements).expect("two");
        assert_eq!(sql, format!("execute {server}(1); EXECUTE {server} (2)"));
        assert!(map_executed("EXECUTE mine", &statements).is_none(), "a SQL PREPAREd name");
        assert!(map_executed("SELECT 'EXECUTE sqlx_s_1'", &statements).is_none(), "inside a literal");
    }

    #[test]
    fn whole_query_prepares_are_recognised() {
        let (name, rest) = prepared_name("PREPARE P1 (int) AS SELECT $1 + 1;").expect("one PREPARE");
        assert_eq!((name.as_str(), rest), ("p1", " (int) AS SELECT $1 + 1"));
        assert_eq!(prepared_name("PREPARE \"Q\" AS SELECT 1").map(|(n, _)| n).as_deref(), Some("Q"));
        assert!(prepared_name("PREPARE a AS SELECT 1; SELECT 2").is_none(), "more than one statement");
        assert!(prepared_name("PREPARE TRANSACTION 'x'").is_none());
        let stmt = sql_statement(" AS SELECT 1");
        assert_eq!(stmt.sql_prepare, Some(format!("PREPARE {} AS SELECT 1", stmt.server_name)));
        assert_ne!(stmt.hash, Statement::new(b" AS SELECT 1", b"\0\0", Route::Read).hash);
    }
}
