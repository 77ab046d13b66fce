//! Column values passed to the replica in PostgreSQL's text format.
//!
//! Place in the data flow: the last conversion a value goes through. pgoutput
//! hands the replicator every value in the type's text output form; the
//! replica parses the same form with the type's input function. Sending the
//! bytes through untouched, as text-format bind parameters, works for every
//! type (including extension and user types) without the replicator knowing
//! any of them, and needs no SQL-level casts.

use std::error::Error;

use bytes::{BufMut, Bytes, BytesMut};
use tokio_postgres::types::{Format, IsNull, ToSql, Type};

/// One bind parameter: NULL or a value in text format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TextParam {
    /// SQL NULL.
    Null,
    /// The value's text representation, as the primary printed it.
    Text(Bytes),
}

impl ToSql for TextParam {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            TextParam::Null => Ok(IsNull::Yes),
            TextParam::Text(v) => {
                out.put_slice(v);
                Ok(IsNull::No)
            }
        }
    }

    /// Any type: the server parses the text with the parameter type's input function.
    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }

    tokio_postgres::types::to_sql_checked!();
}
