//! Splitting SQL scripts into single statements.
//!
//! Place in the data flow: used where the replicator runs SQL text it did not
//! write itself — the `pg_dumpall --globals-only` script applied to a new
//! replica (each statement on its own, so "role already exists" can be
//! tolerated one by one) and DDL captured on the primary (so that only the DDL
//! statements of a multi-statement query string are replayed). Hand-written
//! because it only needs to know where literals, quoted identifiers, comments
//! and dollar quotes begin and end; a full parser (pg_query) would bring a C
//! build for that.

/// Splits `script` at top-level semicolons.
///
/// Returns the statements trimmed, without their `;`, without comments-only
/// pieces, and without psql meta-command lines (a line starting with `\`
/// outside any literal, e.g. `\restrict` in recent dump output).
pub fn split_statements(script: &str) -> Vec<String> {
    let bytes = script.as_bytes();
    let mut out = Vec::new();
    let mut current = String::new();
    let mut has_code = false;
    let mut i = 0;
    let mut at_line_start = true;
    while i < bytes.len() {
        let c = bytes[i];
        // psql meta-command: a backslash as the first non-blank of a line.
        if at_line_start && c == b'\\' {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c == b'\n' {
            at_line_start = true;
            current.push('\n');
            i += 1;
            continue;
        }
        if at_line_start && (c == b' ' || c == b'\t' || c == b'\r') {
            current.push(c as char);
            i += 1;
            continue;
        }
        at_line_start = false;
        let start = i;
        match c {
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                // Comments are dropped; they never matter to the server.
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let mut depth = 0usize;
                while i < bytes.len() {
                    if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                current.push(' ');
                continue;
            }
            b'\'' => {
                let escapes = i > 0 && matches!(bytes[i - 1], b'E' | b'e') && (i < 2 || !is_ident_byte(bytes[i - 2]));
                i = skip_quoted(bytes, i, b'\'', escapes);
            }
            b'"' => i = skip_quoted(bytes, i, b'"', false),
            b'$' => match dollar_tag(bytes, i) {
                Some(tag_len) => {
                    let tag = &bytes[i..i + tag_len];
                    i += tag_len;
                    loop {
                        if i >= bytes.len() {
                            break;
                        }
                        if bytes[i..].starts_with(tag) {
                            i += tag_len;
                            break;
                        }
                        i += 1;
                    }
                }
                None => i += 1,
            },
            b';' => {
                let stmt = current.trim();
                if has_code && !stmt.is_empty() {
                    out.push(stmt.to_owned());
                }
                current.clear();
                has_code = false;
                i += 1;
                continue;
            }
            _ => {
                // Keep identifiers like `e1$x` whole: a `$` inside a word is no quote.
                i += 1;
                while i < bytes.len() && is_ident_byte(bytes[i]) && bytes[i] != b'$' {
                    i += 1;
                }
                if i < bytes.len() && bytes[i] == b'$' && is_ident_byte(c) {
                    while i < bytes.len() && is_ident_byte(bytes[i]) {
                        i += 1;
                    }
                }
            }
        }
        has_code = true;
        // All cut points are at ASCII bytes, so the slice is valid UTF-8.
        current.push_str(&script[start..i.min(bytes.len())]);
    }
    let stmt = current.trim();
    if has_code && !stmt.is_empty() {
        out.push(stmt.to_owned());
    }
    out
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Index just past the literal opened at `start` by `quote` (doubled quotes
/// stay inside; with `escapes`, so does a backslash-escaped character).
fn skip_quoted(bytes: &[u8], start: usize, quote: u8, escapes: bool) -> usize {
    let mut i = start + 1;
    while i < bytes.len() {
        if escapes && bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if bytes[i] == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    bytes.len()
}

/// Length of a dollar-quote opening tag (`$$` or `$tag$`) at `start`, if any.
fn dollar_tag(bytes: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'$' {
            return Some(i + 1 - start);
        }
        let ok = if i == start + 1 {
            b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
        } else {
            b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
        };
        if !ok {
            return None;
        }
        i += 1;
    }
    None
}

/// The first keyword of a statement, upper-cased (`"CREATE"`, `"INSERT"` ...).
pub fn first_keyword(stmt: &str) -> String {
    stmt.trim_start_matches(|c: char| c.is_whitespace() || c == '(')
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_plain_statements_and_drops_comments() {
        let s =
            "-- header\nSET a = 1;\n\nCREATE ROLE x; -- trailing\n/* block /* nested */ */ ALTER ROLE x WITH LOGIN;";
        assert_eq!(split_statements(s), vec!["SET a = 1", "CREATE ROLE x", "ALTER ROLE x WITH LOGIN"]);
    }

    #[test]
    fn keeps_semicolons_inside_literals() {
        let s = "SELECT 'a;b', \"we;ird\", E'x\\';y';\nCREATE FUNCTION f() RETURNS int LANGUAGE sql AS $body$ SELECT 1; $body$;\nSELECT $$;$$";
        let got = split_statements(s);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0], "SELECT 'a;b', \"we;ird\", E'x\\';y'");
        assert!(got[1].ends_with("$body$ SELECT 1; $body$"));
        assert_eq!(got[2], "SELECT $$;$$");
    }

    #[test]
    fn skips_meta_commands_and_keeps_positional_params() {
        let s = "\\restrict abc\nPREPARE p AS SELECT $1;\n\\unrestrict abc\n";
        assert_eq!(split_statements(s), vec!["PREPARE p AS SELECT $1"]);
    }

    #[test]
    fn unterminated_input_does_not_panic() {
        for s in ["'abc", "\"x", "$$ abc", "/* x", "E'\\", "$a", "é;ü"] {
            let _ = split_statements(s);
        }
    }

    #[test]
    fn first_keyword_is_uppercased() {
        assert_eq!(first_keyword("  create table t()"), "CREATE");
        assert_eq!(first_keyword("(select 1)"), "SELECT");
    }
}
