//! What a client has done to "its" session, independent of server connections.
//!
//! With transaction pooling a client's statements run on whichever server
//! connection is free, so the session state the client believes in lives here
//! and is re-created on a connection when needed: session parameters
//! ([`SessionParams`], replayed as `SET`s) and named prepared statements
//! ([`Statements`], prepared lazily under content-derived names).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::Bytes;

use crate::router::classify::{Route, SessionEffect};

/// Startup parameters that are connection identity, not session settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// Settings `RESET ALL` leaves alone (PostgreSQL's `GUC_NO_RESET_ALL`): the session's
/// identity. Only `DISCARD ALL` (or their own RESET) undoes them.
const IDENTITY_SETTINGS: &[&str] = &["role", "session_authorization"];

/// What a server connection is brought back to before a client's settings are replayed:
/// the login identity first (`RESET ALL` skips it), then every other setting.
const RESET_SERVER_SESSION: &str = "RESET SESSION AUTHORIZATION;\nRESET ROLE;\nRESET ALL";

/// Whether a StartupMessage entry names the connection (user, database, protocol options)
/// rather than a setting.
pub fn is_identity(name: &str) -> bool {
    NOT_SETTINGS.contains(&name) || name.starts_with("_pq_.")
}

/// A server connection's settings signature when they are not known: matches no session's
/// (signatures are 0 or odd), so the next unit replays.
pub const UNKNOWN_SIGNATURE: u64 = 2;

/// Session parameters set by the client, in the order set.
#[derive(Clone, Debug, Default)]
pub struct SessionParams {
    entries: Vec<(String, String)>,
    /// The settings from the StartupMessage: what RESET ALL returns to, as in PostgreSQL.
    startup: Vec<(String, String)>,
    signature: u64,
}

impl SessionParams {
    /// Parameters from a StartupMessage (application_name, client_encoding, ...).
    ///
    /// A client that names no `application_name` has an empty one, as in PostgreSQL (the
    /// proxy's own server connections log in as `tandem`).
    pub fn from_startup(params: &[(String, String)]) -> SessionParams {
        let mut p = SessionParams::default();
        if !params.iter().any(|(n, _)| n.eq_ignore_ascii_case("application_name")) {
            p.set("application_name", &startup_statement("application_name", ""));
        }
        for (name, value) in params {
            if is_identity(name) {
                continue;
            }
            // Names are case-insensitive; a later SET or RESET uses the lower-case name.
            p.set(&name.to_ascii_lowercase(), &startup_statement(name, value));
        }
        p.startup = p.entries.clone();
        p
    }

    /// Records a session-level `SET` of `name` (lower case) with its statement text.
    /// `SET SESSION AUTHORIZATION` also ends a `SET ROLE`, as in PostgreSQL. The startup
    /// value stays before it: some settings are set in part (`SET datestyle = ISO` keeps the
    /// day order), so the replay builds on the login value as the client's session did.
    pub fn set(&mut self, name: &str, statement: &str) {
        let startup = &self.startup;
        self.entries.retain(|e| {
            let (n, _) = e;
            startup.contains(e) || n != name && !(name == "session_authorization" && n == "role")
        });
        self.entries.push((name.to_owned(), statement.to_owned()));
        self.resign();
    }

    /// Records `RESET name`.
    pub fn reset(&mut self, name: &str) {
        self.entries.retain(|(n, _)| n != name && !(name == "session_authorization" && n == "role"));
        // Back to the startup value, if the client gave one.
        if let Some(e) = self.startup.iter().find(|(n, _)| n == name) {
            self.entries.push(e.clone());
        }
        self.resign();
    }

    /// Records `RESET ALL`: back to the startup settings (the server connection's own
    /// startup settings are not the client's), except the role and session authorization,
    /// which `RESET ALL` keeps.
    pub fn reset_all(&mut self) {
        let kept = self.entries.iter().filter(|(n, _)| IDENTITY_SETTINGS.contains(&n.as_str())).cloned();
        let kept: Vec<_> = kept.collect();
        self.entries.clone_from(&self.startup);
        self.entries.extend(kept);
        self.resign();
    }

    /// Records `DISCARD ALL`: back to the startup settings and the login identity.
    pub fn discard_all(&mut self) {
        self.entries.clone_from(&self.startup);
        self.resign();
    }

    /// The statements that give a server connection the client's startup values again
    /// after it ran `effects` (the server resets to its own connection's startup values,
    /// PostgreSQL to the client's), joined into one query; `None` when nothing is due.
    pub fn restore_sql(&self, effects: &[SessionEffect]) -> Option<String> {
        let mut due: Vec<&(String, String)> = Vec::new();
        for e in effects {
            match e {
                SessionEffect::Reset { name } => {
                    due.retain(|(n, _)| n != name);
                    due.extend(self.startup.iter().filter(|(n, _)| n == name));
                }
                SessionEffect::ResetAll | SessionEffect::DiscardAll => due = self.startup.iter().collect(),
                SessionEffect::Set { name, .. } => due.retain(|(n, _)| n != name),
                _ => {}
            }
        }
        if due.is_empty() {
            return None;
        }
        Some(due.iter().map(|(_, stmt)| stmt.as_str()).collect::<Vec<_>>().join(";\n"))
    }

    /// Identifies this set of settings; 0 means "server defaults".
    pub fn signature(&self) -> u64 {
        self.signature
    }

    /// The value of a startup-style setting, for reporting ParameterStatus.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// SQL that turns a server session with any settings and identity into this one.
    pub fn replay_sql(&self) -> String {
        let mut sql = String::from(RESET_SERVER_SESSION);
        for (_, stmt) in &self.entries {
            sql.push_str(";\n");
            sql.push_str(stmt);
        }
        sql
    }

    fn resign(&mut self) {
        self.signature = if self.entries.is_empty() {
            0
        } else {
            let mut h = DefaultHasher::new();
            self.entries.hash(&mut h);
            h.finish() | 1
        };
    }
}

/// The statement that applies startup setting `name` = `value` on a server connection.
/// set_config takes the value as the server reads a startup setting: `SET x = 'a,b'` would
/// make a list setting such as search_path one quoted element.
fn startup_statement(name: &str, value: &str) -> String {
    format!("SELECT pg_catalog.set_config({}, {}, false)", quote_literal(name), quote_literal(value))
}

/// Quotes a string literal for SQL (standard_conforming_strings on).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A client's named prepared statement.
#[derive(Debug)]
pub struct Statement {
    /// Hash of query text and parameter types: the server-side identity.
    pub hash: u64,
    /// Server-side name: derived from the hash under transaction pooling (shared by
    /// clients), the client's own name under session pooling (see [`Statement::named`]).
    pub server_name: String,
    /// The SQL text.
    pub query: Bytes,
    /// Parameter type count and OIDs as the client sent them.
    pub param_types: Bytes,
    /// Where executions of it may run.
    pub route: Route,
    /// Session effects of executing it (SET, LISTEN, ...).
    pub effects: Vec<SessionEffect>,
    /// The client's statements its SQL `EXECUTE`s (under their server names): prepared
    /// first wherever it is (see `frontend::sql_names`).
    pub needs: Vec<Arc<Statement>>,
    /// A statement the client made with SQL `PREPARE` (transaction pooling): the `PREPARE`
    /// that makes it on a server connection, under its server name.
    pub sql_prepare: Option<String>,
    /// The client's Parse was answered without a server: its first use parses it on the
    /// server again, so that it matches the current schema as a new statement does in
    /// PostgreSQL (a shared statement parsed before an ALTER TABLE would return old columns,
    /// or fail with "cached plan must not change result type").
    pub reparse: AtomicBool,
}

impl Statement {
    /// Describes a statement from a client's `Parse`.
    pub fn new(query: &[u8], param_types: &[u8], route: Route) -> Statement {
        let mut h = DefaultHasher::new();
        query.hash(&mut h);
        param_types.hash(&mut h);
        let hash = h.finish();
        Statement {
            hash,
            server_name: crate::pool::server::statement_name(hash),
            query: Bytes::copy_from_slice(query),
            param_types: Bytes::copy_from_slice(param_types),
            route,
            effects: Vec::new(),
            needs: Vec::new(),
            sql_prepare: None,
            reparse: AtomicBool::new(false),
        }
    }

    /// Describes a statement that keeps the client's name on the server: under session
    /// pooling a server connection serves one client, so the statement need not be shared,
    /// and SQL that names it (`EXECUTE name`, `DEALLOCATE name`, `pg_prepared_statements`)
    /// works as it does on PostgreSQL. The name is part of the hash, so two names for the
    /// same text are two statements on the connection. A name that is not UTF-8 falls back
    /// to the content-derived name.
    pub fn named(name: &[u8], query: &[u8], param_types: &[u8], route: Route) -> Statement {
        let Ok(client_name) = std::str::from_utf8(name) else {
            return Statement::new(query, param_types, route);
        };
        let mut stmt = Statement::new(query, param_types, route);
        let mut h = DefaultHasher::new();
        name.hash(&mut h);
        stmt.hash.hash(&mut h);
        stmt.hash = h.finish();
        stmt.server_name = client_name.to_owned();
        stmt
    }
}

/// Named prepared statements of one client, by client-side name.
///
/// Each definition gets an id, so that a definition the server turns out to have refused (its
/// Parse failed, or was skipped after an earlier error) can be forgotten without touching a
/// later definition of the same name.
#[derive(Debug, Default)]
pub struct Statements {
    named: foldhash::HashMap<Bytes, (u64, Arc<Statement>)>,
    next_id: u64,
    /// Route of the last unnamed statement parsed.
    pub unnamed_route: Option<Route>,
}

impl Statements {
    /// Defines (or redefines) a named statement; returns the id of this definition.
    pub fn insert(&mut self, name: &[u8], stmt: Arc<Statement>) -> u64 {
        self.next_id += 1;
        self.named.insert(Bytes::copy_from_slice(name), (self.next_id, stmt));
        self.next_id
    }

    /// Looks a statement up by client-side name.
    pub fn get(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.named.get(name).map(|(_, s)| s)
    }

    /// Forgets a statement (Close).
    pub fn remove(&mut self, name: &[u8]) {
        self.named.remove(name);
    }

    /// Forgets the definition with id `id` if it is still current: the server never
    /// created it, so PostgreSQL would not know the name either.
    pub fn undefine(&mut self, id: u64) {
        self.named.retain(|_, (i, _)| *i != id);
    }

    /// Forgets all statements (DISCARD ALL, DEALLOCATE ALL).
    pub fn clear(&mut self) {
        self.named.clear();
        self.unnamed_route = None;
    }

    /// Number of statements.
    pub fn len(&self) -> usize {
        self.named.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.named.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_params_become_sets() {
        let p = SessionParams::from_startup(&[("user".into(), "u".into()), ("application_name".into(), "it's".into())]);
        assert_eq!(
            p.replay_sql(),
            "RESET SESSION AUTHORIZATION;\nRESET ROLE;\nRESET ALL;\n\
             SELECT pg_catalog.set_config('application_name', 'it''s', false)"
        );
        assert_ne!(p.signature(), 0);
        let startup = p.signature();
        let mut q = p.clone();
        q.set("search_path", "SET search_path = a");
        q.reset_all();
        assert_eq!(q.signature(), startup, "RESET ALL returns to the startup settings");
        let none = SessionParams::from_startup(&[]);
        assert!(none.replay_sql().ends_with("set_config('application_name', '', false)"), "empty, as in PostgreSQL");
    }

    #[test]
    fn identity_survives_reset_all_but_not_discard_all() {
        let mut p = SessionParams::from_startup(&[]);
        let startup = p.signature();
        p.set("role", "SET ROLE r2");
        p.reset_all();
        assert!(p.replay_sql().ends_with("SET ROLE r2"), "RESET ALL keeps the role");
        p.set("session_authorization", "SET SESSION AUTHORIZATION r1");
        assert!(!p.replay_sql().contains("SET ROLE r2"), "a new session authorization ends the role");
        p.discard_all();
        assert_eq!(p.signature(), startup);
    }

    #[test]
    fn reset_restores_startup_values() {
        let p = SessionParams::from_startup(&[("DateStyle".into(), "SQL, DMY".into())]);
        let reset = |name: &str| SessionEffect::Reset { name: name.into() };
        let set = |name: &str| SessionEffect::Set { name: name.into(), statement: String::new() };
        let sql = p.restore_sql(&[reset("datestyle")]).unwrap_or_default();
        assert_eq!(sql, "SELECT pg_catalog.set_config('DateStyle', 'SQL, DMY', false)");
        assert_eq!(p.restore_sql(&[reset("datestyle"), set("datestyle")]), None, "a later SET wins");
        assert_eq!(p.restore_sql(&[reset("search_path")]), None, "not a startup setting");
        let all = p.restore_sql(&[SessionEffect::ResetAll]).unwrap_or_default();
        assert!(all.contains("'application_name', ''") && all.contains("DateStyle"), "{all}");
    }

    #[test]
    fn set_replaces_and_reset_removes() {
        let mut p = SessionParams::default();
        assert_eq!(p.signature(), 0);
        p.set("search_path", "SET search_path = a");
        let one = p.signature();
        p.set("search_path", "SET search_path = b");
        assert_ne!(p.signature(), one);
        assert_eq!(p.replay_sql(), "RESET SESSION AUTHORIZATION;\nRESET ROLE;\nRESET ALL;\nSET search_path = b");
        p.reset("search_path");
        assert_eq!(p.signature(), 0);
    }

    #[test]
    fn same_statement_same_server_name() {
        let a = Statement::new(b"select 1", b"\0\0", Route::Read);
        let b = Statement::new(b"select 1", b"\0\0", Route::Read);
        let c = Statement::new(b"select 2", b"\0\0", Route::Read);
        assert_eq!(a.server_name, b.server_name);
        assert_ne!(a.server_name, c.server_name);
    }

    #[test]
    fn session_statements_keep_the_client_name() {
        let a = Statement::named(b"foobar", b"select 1", b"\0\0", Route::Read);
        let b = Statement::named(b"other", b"select 1", b"\0\0", Route::Read);
        assert_eq!(a.server_name, "foobar");
        assert_ne!(a.hash, b.hash, "one statement per name on the connection");
        let odd = Statement::named(b"\xff", b"select 1", b"\0\0", Route::Read);
        assert_eq!(odd.server_name, Statement::new(b"select 1", b"\0\0", Route::Read).server_name);
    }

    #[test]
    fn undefine_forgets_only_that_definition() {
        let mut s = Statements::default();
        let first = s.insert(b"s1", Arc::new(Statement::new(b"selec 1", b"\0\0", Route::Read)));
        let second = s.insert(b"s1", Arc::new(Statement::new(b"select 1", b"\0\0", Route::Read)));
        s.undefine(first);
        assert!(s.get(b"s1").is_some(), "a later definition of the name stays");
        s.undefine(second);
        assert!(s.get(b"s1").is_none());
    }
}
