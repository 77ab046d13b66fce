//! DDL capture on the primary and its replay on replicas.
//!
//! Place in the data flow: logical decoding carries row changes only, so
//! schema changes travel as transactional logical messages inside the
//! transaction that made them: an event trigger on the primary emits
//! `pg_logical_emit_message(true, 'tandem.ddl', <json>)`; the source decodes
//! it into a [`crate::change::Change::Message`]; the applier replays it (see
//! [`replay_statements`]) at the same point of the same transaction.
//!
//! Choices, and why:
//! - `ddl_command_end` for most commands, so a failed command emits nothing;
//!   but `ddl_command_start` for `CREATE TABLE AS`, whose rows are decoded
//!   like inserts and must find the table already created on the replica
//!   (where it is replayed `WITH NO DATA`, the rows following in the stream).
//! - `sql_drop` only to recognise drops of temporary objects, which are
//!   session-local and never replayed (creating temporary objects neither).
//! - One message per client query string and statement: `current_query()` is
//!   the whole string, and the trigger fires once per command in it; the
//!   replica replays the DDL statements of the string once.
//! - Sessions that set `tandem.skip_ddl = on` (the replicator's own) are not
//!   captured; on replicas the applier runs with `session_replication_role =
//!   replica`, under which event triggers do not fire at all.
//! - DDL run inside a function (`SELECT f()`) has only `SELECT f()` as its
//!   query text; such messages replay nothing and are logged as warnings.

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::apply::split::{first_keyword, split_statements};

/// Logical message prefix of captured DDL.
pub const DDL_PREFIX: &str = "tandem.ddl";

/// Name of the event triggers installed on the primary (with suffixes).
pub const TRIGGER_NAME: &str = "tandem_ddl";

/// Why installing DDL capture failed.
#[derive(Debug, thiserror::Error)]
pub enum DdlError {
    /// A statement on the primary failed.
    #[error("installing DDL capture on the primary: {0}")]
    Install(#[from] tokio_postgres::Error),
}

/// The payload of a `tandem.ddl` message (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DdlMessage {
    /// The client's whole query string (`current_query()`).
    pub query: String,
    /// `search_path` of the session that ran it.
    pub search_path: String,
    /// `current_user` that ran it: replayed under the same role, so owners match.
    pub role: String,
    /// Command tag of the first captured command.
    #[serde(default)]
    pub tag: String,
}

impl DdlMessage {
    /// Parses a message payload.
    pub fn parse(content: &[u8]) -> Result<DdlMessage, serde_json::Error> {
        serde_json::from_slice(content)
    }
}

const CAPTURE_FUNCTION: &str = r#"
CREATE OR REPLACE FUNCTION tandem.capture_ddl() RETURNS event_trigger
LANGUAGE plpgsql AS $tandem$
DECLARE
  marker text := md5(current_query()) || '/' || statement_timestamp()::text;
BEGIN
  IF coalesce(current_setting('tandem.skip_ddl', true), '') = 'on' THEN RETURN; END IF;
  IF coalesce(current_setting('tandem.ddl_marker', true), '') = marker THEN RETURN; END IF;
  IF TG_EVENT = 'ddl_command_start' THEN
    IF TG_TAG NOT IN ('CREATE TABLE AS', 'SELECT INTO') THEN RETURN; END IF;
  ELSIF TG_EVENT = 'sql_drop' THEN
    IF NOT EXISTS (SELECT 1 FROM pg_event_trigger_dropped_objects() WHERE NOT is_temporary) THEN
      PERFORM set_config('tandem.ddl_marker', marker, true);
    END IF;
    RETURN;
  ELSE
    IF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands())
       AND NOT EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands()
                       WHERE schema_name IS NULL OR schema_name NOT LIKE 'pg\_temp%') THEN
      RETURN;
    END IF;
  END IF;
  PERFORM set_config('tandem.ddl_marker', marker, true);
  PERFORM pg_logical_emit_message(true, 'tandem.ddl', json_build_object(
    'query', current_query(),
    'search_path', current_setting('search_path'),
    'role', current_user::text,
    'tag', TG_TAG)::text);
END
$tandem$"#;

/// Installs (or refreshes) DDL capture in the primary database `primary` is
/// connected to. Needs a superuser. Idempotent.
pub async fn install_capture(primary: &Client) -> Result<(), DdlError> {
    primary.batch_execute("SET tandem.skip_ddl = on; CREATE SCHEMA IF NOT EXISTS tandem").await?;
    primary.batch_execute(CAPTURE_FUNCTION).await?;
    for (suffix, event) in [("", "ddl_command_end"), ("_start", "ddl_command_start"), ("_drop", "sql_drop")] {
        let name = format!("{TRIGGER_NAME}{suffix}");
        let exists = primary
            .query_opt("SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = $1", &[&name])
            .await?
            .is_some();
        if !exists {
            primary
                .batch_execute(&format!("CREATE EVENT TRIGGER {name} ON {event} EXECUTE FUNCTION tandem.capture_ddl()"))
                .await?;
        }
    }
    primary.batch_execute("RESET tandem.skip_ddl").await?;
    Ok(())
}

/// Keywords that start statements DDL event triggers fire for.
const DDL_KEYWORDS: &[&str] =
    &["CREATE", "ALTER", "DROP", "COMMENT", "GRANT", "REVOKE", "SECURITY", "IMPORT", "REFRESH"];

/// The statements of a captured query string to run on a replica: its DDL
/// statements only (the rows of any DML in the same string arrive through
/// the stream), without temporary objects, `CREATE TABLE AS` made `WITH NO
/// DATA` (its rows arrive through the stream too).
pub fn replay_statements(msg: &DdlMessage) -> Vec<String> {
    split_statements(&msg.query)
        .into_iter()
        .filter(|s| DDL_KEYWORDS.contains(&first_keyword(s).as_str()))
        .filter(|s| !creates_temporary(s))
        .map(|s| if is_create_table_as(&s) { without_data(&s) } else { s })
        .collect()
}

/// Upper-cased words of `stmt` outside parentheses, literals and quoted names.
fn top_level_words(stmt: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut depth = 0usize;
    let mut word = String::new();
    let mut quote: Option<char> = None;
    for c in stmt.chars() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            c if depth == 0 && (c.is_alphanumeric() || c == '_') => {
                word.push(c.to_ascii_uppercase());
                continue;
            }
            _ => {}
        }
        if !word.is_empty() {
            words.push(std::mem::take(&mut word));
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// `CREATE [GLOBAL|LOCAL] TEMP|TEMPORARY ...`.
fn creates_temporary(stmt: &str) -> bool {
    let words = top_level_words(stmt);
    let mut it = words.iter().map(String::as_str);
    if it.next() != Some("CREATE") {
        return false;
    }
    let mut next = it.next();
    if matches!(next, Some("GLOBAL" | "LOCAL")) {
        next = it.next();
    }
    matches!(next, Some("TEMP" | "TEMPORARY"))
}

/// `CREATE [UNLOGGED] TABLE [IF NOT EXISTS] name [(cols)] ... AS query`.
fn is_create_table_as(stmt: &str) -> bool {
    let words = top_level_words(stmt);
    let mut i = 0;
    if words.get(i).map(String::as_str) != Some("CREATE") {
        return false;
    }
    i += 1;
    if words.get(i).map(String::as_str) == Some("UNLOGGED") {
        i += 1;
    }
    if words.get(i).map(String::as_str) != Some("TABLE") {
        return false;
    }
    words[i..].iter().any(|w| w == "AS")
}

/// The statement with its `WITH [NO] DATA` tail replaced by `WITH NO DATA`.
fn without_data(stmt: &str) -> String {
    let words = top_level_words(stmt);
    let n = words.len();
    let trimmed = stmt.trim_end();
    let cut = if n >= 3 && words[n - 3] == "WITH" && words[n - 2] == "NO" && words[n - 1] == "DATA" {
        strip_tail_words(trimmed, 3)
    } else if n >= 2 && words[n - 2] == "WITH" && words[n - 1] == "DATA" {
        strip_tail_words(trimmed, 2)
    } else {
        trimmed
    };
    format!("{} WITH NO DATA", cut.trim_end())
}

/// `s` without its last `count` whitespace-separated words.
fn strip_tail_words(s: &str, count: usize) -> &str {
    let mut end = s.len();
    for _ in 0..count {
        let head = s[..end].trim_end();
        end = head.rfind(char::is_whitespace).map_or(0, |p| p + 1);
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(query: &str) -> DdlMessage {
        DdlMessage {
            query: query.to_owned(),
            search_path: "public".to_owned(),
            role: "postgres".to_owned(),
            tag: String::new(),
        }
    }

    #[test]
    fn keeps_only_ddl_of_a_mixed_string() {
        let got = replay_statements(&msg(
            "BEGIN; CREATE TABLE t (id int primary key); INSERT INTO t VALUES (1); ALTER TABLE t ADD c text; COMMIT",
        ));
        assert_eq!(got, vec!["CREATE TABLE t (id int primary key)", "ALTER TABLE t ADD c text"]);
    }

    #[test]
    fn skips_temporary_objects() {
        assert!(replay_statements(&msg("CREATE TEMP TABLE x (a int)")).is_empty());
        assert!(replay_statements(&msg("create global temporary table x (a int)")).is_empty());
        assert_eq!(replay_statements(&msg("CREATE TABLE temp (a int)")).len(), 1);
    }

    #[test]
    fn create_table_as_is_replayed_without_data() {
        assert_eq!(
            replay_statements(&msg("CREATE TABLE s AS SELECT * FROM t")),
            vec!["CREATE TABLE s AS SELECT * FROM t WITH NO DATA"]
        );
        assert_eq!(
            replay_statements(&msg("create unlogged table s (a) as values (1) with data")),
            vec!["create unlogged table s (a) as values (1) WITH NO DATA"]
        );
        // Generated columns say AS inside parentheses: not a CREATE TABLE AS.
        let plain = "CREATE TABLE g (a int, b int GENERATED ALWAYS AS (a * 2) STORED)";
        assert_eq!(replay_statements(&msg(plain)), vec![plain]);
    }

    #[test]
    fn function_calls_replay_nothing() {
        assert!(replay_statements(&msg("SELECT do_migration()")).is_empty());
    }

    #[test]
    fn message_json_round_trips() {
        let m = msg("CREATE TABLE a ()");
        let json = serde_json::to_vec(&m).unwrap();
        assert_eq!(DdlMessage::parse(&json).unwrap(), m);
        assert!(DdlMessage::parse(b"not json").is_err());
    }
}
