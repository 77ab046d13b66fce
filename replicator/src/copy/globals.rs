//! Roles and other cluster-wide objects of a new replica.
//!
//! Place in the data flow: first step of the initial copy, before databases
//! and schemas (which name roles as owners and grantees). The script comes
//! from `pg_dumpall --globals-only --no-tablespaces` on the primary and is run
//! statement by statement on the replica:
//! - `CREATE ROLE` of a role the replica already has is skipped (the replica
//!   may have been fed before, or share the bootstrap superuser's name);
//! - every statement about the role the replicator logs into the replica as
//!   is skipped, so the replica's own superuser keeps its password and rights;
//! - tablespaces are left out: their directories belong to the primary's host.

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config};

use super::tools::PgTools;
use super::CopyError;
use crate::apply::split::split_statements;

/// Copies roles, role memberships and role settings from the primary to the
/// replica. Returns how many statements were applied.
pub async fn copy_globals(
    tools: &PgTools,
    primary: &Config,
    replica: &Client,
    replica_user: &str,
) -> Result<usize, CopyError> {
    let script =
        tools.run("pg_dumpall", primary, &["--globals-only".to_owned(), "--no-tablespaces".to_owned()]).await?;
    apply_globals(&script, replica, replica_user).await
}

/// Runs a `pg_dumpall --globals-only` script on the replica (see module docs).
pub async fn apply_globals(script: &str, replica: &Client, replica_user: &str) -> Result<usize, CopyError> {
    let mut applied = 0;
    for stmt in split_statements(script) {
        if about_role(&stmt, replica_user) {
            tracing::debug!(role = replica_user, "keeping the replica's own login role as it is");
            continue;
        }
        match replica.batch_execute(&stmt).await {
            Ok(()) => applied += 1,
            Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) && is_create_role(&stmt) => {
                tracing::debug!(statement = %stmt, "role already exists on the replica");
            }
            Err(source) => {
                return Err(CopyError::Sql {
                    context: format!("applying global object statement `{}`", abbreviate(&stmt)),
                    source,
                })
            }
        }
    }
    Ok(applied)
}

fn is_create_role(stmt: &str) -> bool {
    let upper = stmt.trim_start().to_ascii_uppercase();
    upper.starts_with("CREATE ROLE ") || upper.starts_with("CREATE USER ")
}

/// Whether `stmt` is `CREATE ROLE`/`ALTER ROLE`/`COMMENT ON ROLE` about `role`.
fn about_role(stmt: &str, role: &str) -> bool {
    let trimmed = stmt.trim_start();
    let upper = trimmed.to_ascii_uppercase();
    let rest = ["CREATE ROLE ", "ALTER ROLE ", "CREATE USER ", "ALTER USER ", "COMMENT ON ROLE "]
        .iter()
        .find(|prefix| upper.starts_with(*prefix))
        .map(|prefix| &trimmed[prefix.len()..]);
    match rest.and_then(leading_identifier) {
        Some(name) => name == role,
        None => false,
    }
}

/// Parses the identifier at the start of `s` (quoted or not, as `fmtId` writes it).
fn leading_identifier(s: &str) -> Option<String> {
    let s = s.trim_start();
    if let Some(body) = s.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = body.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    name.push('"');
                } else {
                    return Some(name);
                }
            } else {
                name.push(c);
            }
        }
        None
    } else {
        let name: String = s.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '$').collect();
        (!name.is_empty()).then(|| name.to_lowercase())
    }
}

/// First line of a statement, cut to 120 characters, for error messages.
/// Never includes more than the statement's head (role passwords come later).
pub(crate) fn abbreviate(stmt: &str) -> String {
    let line = stmt.lines().next().unwrap_or_default();
    let head: String = line.chars().take(120).collect();
    if let Some(pos) = head.to_ascii_uppercase().find(" PASSWORD ") {
        return format!("{} PASSWORD ...", &head[..pos]);
    }
    if head.len() < stmt.len() {
        format!("{head} ...")
    } else {
        head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_statements_about_the_login_role() {
        assert!(about_role("ALTER ROLE postgres WITH SUPERUSER PASSWORD 'x'", "postgres"));
        assert!(about_role("CREATE ROLE \"Weird\"\"Name\"", "Weird\"Name"));
        assert!(!about_role("ALTER ROLE alice WITH LOGIN", "postgres"));
        assert!(!about_role("GRANT postgres TO alice", "postgres"));
        assert!(!about_role("ALTER ROLE postgresql WITH LOGIN", "postgres"));
    }

    #[test]
    fn abbreviation_hides_passwords() {
        let s = abbreviate("ALTER ROLE a WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:abc'");
        assert_eq!(s, "ALTER ROLE a WITH LOGIN PASSWORD ...");
    }
}
