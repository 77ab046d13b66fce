//! Names the session layer needs from a client's SQL before it forwards it.
//!
//! `frontend → router`: the classifier decides routes and session effects; this reads the
//! one thing it does not report, the database of a `DROP DATABASE`, whose pooled idle
//! connections the proxy closes first (see `ServerPool::close_idle`). A few bytes of
//! lexing, so that statements that are not `DROP DATABASE` cost a prefix comparison.

/// The database a `DROP DATABASE [IF EXISTS] name ...` statement drops, as PostgreSQL
/// folds the name (unquoted: lower case; quoted: as written, `""` for `"`).
pub fn dropped_database(sql: &[u8]) -> Option<String> {
    let rest = keyword(sql, "drop")?;
    let rest = keyword(rest, "database")?;
    let rest = match keyword(rest, "if") {
        Some(after_if) => keyword(after_if, "exists")?,
        None => rest,
    };
    identifier(rest)
}

/// `sql` after leading whitespace and the keyword `word` (any case), or `None`.
fn keyword<'a>(sql: &'a [u8], word: &str) -> Option<&'a [u8]> {
    let sql = sql.trim_ascii_start();
    let (head, rest) = sql.split_at_checked(word.len())?;
    let ends = rest.first().is_none_or(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b'$'));
    (head.eq_ignore_ascii_case(word.as_bytes()) && ends).then_some(rest)
}

/// The identifier at the start of `sql` (after whitespace).
fn identifier(sql: &[u8]) -> Option<String> {
    let sql = sql.trim_ascii_start();
    if let Some(quoted) = sql.strip_prefix(b"\"") {
        let mut name = Vec::new();
        let mut i = 0;
        while i < quoted.len() {
            if quoted[i] == b'"' {
                if quoted.get(i + 1) == Some(&b'"') {
                    name.push(b'"');
                    i += 2;
                    continue;
                }
                return String::from_utf8(name).ok();
            }
            name.push(quoted[i]);
            i += 1;
        }
        return None;
    }
    let end = sql.iter().position(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b'$' || *b >= 0x80));
    let word = &sql[..end.unwrap_or(sql.len())];
    if word.is_empty() {
        return None;
    }
    String::from_utf8(word.to_ascii_lowercase()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_dropped_databases() {
        assert_eq!(dropped_database(b"DROP DATABASE testdb").as_deref(), Some("testdb"));
        assert_eq!(dropped_database(b"  drop   database if exists MyDb;").as_deref(), Some("mydb"));
        assert_eq!(dropped_database(b"DROP DATABASE \"My\"\"Db\" WITH (FORCE)").as_deref(), Some("My\"Db"));
        assert_eq!(dropped_database(b"drop database\nx_1$"), Some("x_1$".to_string()));
        assert_eq!(dropped_database(b"DROP DATABASES x"), None);
        assert_eq!(dropped_database(b"DROP TABLE x"), None);
        assert_eq!(dropped_database(b"SELECT 'DROP DATABASE x'"), None);
        assert_eq!(dropped_database(b"DROP DATABASE \"open"), None);
        assert_eq!(dropped_database(b"DROP DATABASE"), None);
    }
}
