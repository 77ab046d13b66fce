//! Column values passed to the replica in PostgreSQL's text format.
//!
//! Place in the data flow: the last conversion a value goes through. pgoutput
//! hands the replicator every value in the type's text output form; the
//! replica parses the same form with the type's input function. Sending the
//! bytes through untouched, as text-format bind parameters, works for every
//! type (including extension and user types) without the replicator knowing
//! any of them, and needs no SQL-level casts.

use bytes::Bytes;

/// One bind parameter: NULL or a value in text format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TextParam {
    /// SQL NULL.
    Null,
    /// The value's text representation, as the primary printed it.
    Text(Bytes),
}

impl TextParam {
    /// The value's bytes, `None` for NULL (what a text-format Bind carries).
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            TextParam::Null => None,
            TextParam::Text(v) => Some(v),
        }
    }
}
