//! SQL text building for the applier: quoting and per-relation statements.
//!
//! Place in the data flow: between a decoded change and the replica. Each
//! relation and change shape (which columns are sent, which are unchanged
//! TOAST, which identify the row) maps to one statement text, prepared once
//! per writer session and reused.

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
