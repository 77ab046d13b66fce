//! Messages the proxy writes itself.
//!
//! Startup, authentication and error messages are encoded with pgwire's
//! message types. The rewrites of client messages that transaction pooling
//! needs (a `Parse`/`Bind`/`Describe`/`Close` with a server-side statement
//! name) are built by hand: they copy the client's bytes verbatim around the
//! one changed field.

use bytes::{BufMut, BytesMut};
use pgwire::messages::data::{DataRow, FieldDescription, RowDescription};
use pgwire::messages::response::{CommandComplete, ErrorResponse, NoticeResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{Authentication, BackendKeyData, NegotiateProtocolVersion, ParameterStatus, SecretKey};
use pgwire::messages::Message;

use super::fields::TxStatus;

/// SQLSTATE codes the proxy itself reports.
pub mod sqlstate {
    /// Client sent something that is not valid protocol.
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    /// Could not reach or log in to a server.
    pub const CONNECTION_FAILURE: &str = "08006";
    /// read_only_sql_transaction: no write lease (the cluster is read-only for now).
    pub const READ_ONLY_SQL_TRANSACTION: &str = "25006";
    /// Server refused the connection.
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    /// The client's credentials were wrong.
    pub const INVALID_PASSWORD: &str = "28P01";
    /// Authorization failed for another reason.
    pub const INVALID_AUTHORIZATION: &str = "28000";
    /// The proxy is full.
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    /// A message exceeded the configured size.
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    /// The proxy is shutting down.
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    /// The request is understood but not supported through the proxy.
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    /// A statement the admin console does not know.
    pub const SYNTAX_ERROR: &str = "42601";
    /// Unnamed-but-referenced statement or portal.
    pub const INVALID_SQL_STATEMENT_NAME: &str = "26000";
    /// The query was cancelled.
    pub const QUERY_CANCELED: &str = "57014";
    /// A named prepared statement of that name already exists.
    pub const DUPLICATE_PREPARED_STATEMENT: &str = "42P05";
}

/// Error severity as PostgreSQL names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session continues.
    Error,
    /// The session ends after this message.
    Fatal,
}

fn encode<M: Message>(buf: &mut BytesMut, msg: M) {
    // Encoding into a BytesMut only fails for messages over 1 GiB, which the
    // proxy never builds; a failure here would leave `buf` unchanged.
    if let Err(e) = msg.encode(buf) {
        tracing::error!(error = %e, "could not encode a protocol message");
    }
}

/// Appends an `ErrorResponse`.
pub fn error(buf: &mut BytesMut, severity: Severity, code: &str, message: &str) {
    let sev = match severity {
        Severity::Error => "ERROR",
        Severity::Fatal => "FATAL",
    };
    let fields =
        vec![(b'S', sev.to_owned()), (b'V', sev.to_owned()), (b'C', code.to_owned()), (b'M', message.to_owned())];
    encode(buf, ErrorResponse::new(fields));
}

/// Appends a `NoticeResponse` with severity NOTICE.
pub fn notice(buf: &mut BytesMut, message: &str) {
    let fields = vec![
        (b'S', "NOTICE".to_owned()),
        (b'V', "NOTICE".to_owned()),
        (b'C', "00000".to_owned()),
        (b'M', message.to_owned()),
    ];
    encode(buf, NoticeResponse::new(fields));
}

/// Appends a `ReadyForQuery`.
pub fn ready_for_query(buf: &mut BytesMut, status: TxStatus) {
    let status = match status {
        TxStatus::Idle => TransactionStatus::Idle,
        TxStatus::InTransaction => TransactionStatus::Transaction,
        TxStatus::Failed => TransactionStatus::Error,
    };
    encode(buf, ReadyForQuery::new(status));
}

/// Appends a `ParameterStatus`.
pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    encode(buf, ParameterStatus::new(name.to_owned(), value.to_owned()));
}

/// Appends a `BackendKeyData` with a protocol-3.0 (4-byte) secret.
pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    encode(buf, BackendKeyData::new(pid, SecretKey::I32(secret)));
}

/// Appends `AuthenticationOk`.
pub fn auth_ok(buf: &mut BytesMut) {
    encode(buf, Authentication::Ok);
}

/// Appends `AuthenticationCleartextPassword`.
pub fn auth_cleartext(buf: &mut BytesMut) {
    encode(buf, Authentication::CleartextPassword);
}

/// Appends `AuthenticationMD5Password` with its salt.
pub fn auth_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    encode(buf, Authentication::MD5Password(salt.to_vec()));
}

/// Appends `AuthenticationSASL` offering the given mechanisms.
pub fn auth_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    encode(buf, Authentication::SASL(mechanisms.iter().map(|m| (*m).to_owned()).collect()));
}

/// Appends `AuthenticationSASLContinue`.
pub fn auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    encode(buf, Authentication::SASLContinue(bytes::Bytes::copy_from_slice(data)));
}

/// Appends `AuthenticationSASLFinal`.
pub fn auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    encode(buf, Authentication::SASLFinal(bytes::Bytes::copy_from_slice(data)));
}

/// Appends `NegotiateProtocolVersion`: the proxy speaks 3.0 and no `_pq_` options.
pub fn negotiate_protocol_version(buf: &mut BytesMut, unsupported_options: Vec<String>) {
    encode(buf, NegotiateProtocolVersion::new(0, unsupported_options));
}

/// Appends a `CommandComplete` with the given tag.
pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    encode(buf, CommandComplete::new(tag.to_owned()));
}

/// Appends `EmptyQueryResponse`.
pub fn empty_query(buf: &mut BytesMut) {
    buf.put_u8(b'I');
    buf.put_u32(4);
}

/// Appends a `RowDescription` of text columns.
pub fn row_description(buf: &mut BytesMut, columns: &[&str]) {
    const TEXT_OID: u32 = 25;
    let fields =
        columns.iter().map(|name| FieldDescription::new((*name).to_owned(), 0, 0, TEXT_OID, -1, -1, 0)).collect();
    encode(buf, RowDescription::new(fields));
}

/// Appends a `DataRow` of text values (`None` is SQL NULL).
pub fn data_row<S: AsRef<str>>(buf: &mut BytesMut, values: &[Option<S>]) {
    let mut data = BytesMut::new();
    for v in values {
        match v {
            Some(v) => {
                let v = v.as_ref().as_bytes();
                data.put_i32(v.len() as i32);
                data.put_slice(v);
            }
            None => data.put_i32(-1),
        }
    }
    encode(buf, DataRow::new(data, values.len() as i16));
}

fn finish(buf: &mut BytesMut, start: usize) {
    let len = (buf.len() - start - 1) as u32;
    buf[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// Appends a `Parse` naming the statement `name` on the server.
pub fn parse(buf: &mut BytesMut, name: &[u8], query: &[u8], param_types: &[u8]) {
    let start = buf.len();
    buf.put_u8(b'P');
    buf.put_u32(0);
    buf.put_slice(name);
    buf.put_u8(0);
    buf.put_slice(query);
    buf.put_u8(0);
    buf.put_slice(param_types);
    finish(buf, start);
}

/// Appends a `Bind` from server-side statement `statement`, the rest copied.
pub fn bind(buf: &mut BytesMut, portal: &[u8], statement: &[u8], rest: &[u8]) {
    let start = buf.len();
    buf.put_u8(b'B');
    buf.put_u32(0);
    buf.put_slice(portal);
    buf.put_u8(0);
    buf.put_slice(statement);
    buf.put_u8(0);
    buf.put_slice(rest);
    finish(buf, start);
}

/// Appends a `Describe` (`tag = b'D'`) or `Close` (`tag = b'C'`) of a statement or portal.
pub fn target(buf: &mut BytesMut, tag: u8, kind: u8, name: &[u8]) {
    let start = buf.len();
    buf.put_u8(tag);
    buf.put_u32(0);
    buf.put_u8(kind);
    buf.put_slice(name);
    buf.put_u8(0);
    finish(buf, start);
}

/// Appends a simple `Query`.
pub fn query(buf: &mut BytesMut, sql: &str) {
    let start = buf.len();
    buf.put_u8(b'Q');
    buf.put_u32(0);
    buf.put_slice(sql.as_bytes());
    buf.put_u8(0);
    finish(buf, start);
}

/// Appends a `Sync`.
pub fn sync(buf: &mut BytesMut) {
    buf.put_u8(b'S');
    buf.put_u32(4);
}

/// Appends a `Terminate`.
pub fn terminate(buf: &mut BytesMut) {
    buf.put_u8(b'X');
    buf.put_u32(4);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::fields;
    use crate::protocol::frame::split_message;

    #[test]
    fn rewritten_messages_parse_back() {
        let mut buf = BytesMut::new();
        parse(&mut buf, b"srv1", b"select $1", b"\x00\x01\x00\x00\x00\x17");
        bind(&mut buf, b"", b"srv1", b"\x00\x00\x00\x00\x00\x00");
        target(&mut buf, b'D', b'S', b"srv1");
        let p = split_message(&mut buf, 1 << 20).unwrap().unwrap();
        let p = fields::parse(p.body()).unwrap();
        assert_eq!((p.name, p.query), (&b"srv1"[..], &b"select $1"[..]));
        let b = split_message(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(fields::bind(b.body()).unwrap().statement, b"srv1");
        let d = split_message(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(fields::target(d.body(), "Describe").unwrap(), fields::Target::Statement(b"srv1"));
        assert!(buf.is_empty());
    }

    #[test]
    fn error_carries_sqlstate() {
        let mut buf = BytesMut::new();
        error(&mut buf, Severity::Fatal, sqlstate::TOO_MANY_CONNECTIONS, "too many");
        let f = split_message(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(f.tag(), b'E');
        let e = fields::error_fields(f.body()).unwrap();
        assert_eq!((e.severity, e.code), (&b"FATAL"[..], &b"53300"[..]));
    }

    #[test]
    fn rfq_round_trips() {
        let mut buf = BytesMut::new();
        ready_for_query(&mut buf, TxStatus::Failed);
        let f = split_message(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(fields::ready_for_query(f.body()).unwrap(), TxStatus::Failed);
    }
}
