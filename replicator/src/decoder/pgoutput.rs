//! pgoutput protocol version 1: one `XLogData` payload → one [`PgOutputMessage`].
//!
//! Sits between the replication stream (`source/`) and the transaction
//! assembler in `decoder/mod.rs`. Pure parsing, no state: every length and tag
//! is checked, so a malformed payload is an error, never a panic. Hand-written
//! because `postgres-protocol` (upstream) has no pgoutput parser.

use bytes::{Buf, Bytes};

use crate::change::{Datum, ReplicaIdentity, Tuple};

/// One pgoutput message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PgOutputMessage {
    /// Start of a transaction.
    Begin {
        /// LSN of the commit record (known up front: pgoutput sends whole transactions).
        final_lsn: u64,
        /// Commit time, µs since 2000-01-01.
        commit_time_us: i64,
        /// Transaction id.
        xid: u32,
    },
    /// End of a transaction.
    Commit {
        /// LSN of the commit record.
        commit_lsn: u64,
        /// LSN just past the commit record.
        end_lsn: u64,
        /// Commit time, µs since 2000-01-01.
        commit_time_us: i64,
    },
    /// Replication origin of the transaction (ignored: Tandem replicates everything).
    Origin {
        /// Commit LSN on the origin server.
        lsn: u64,
        /// Origin name.
        name: String,
    },
    /// Schema of a table, sent before its first change in a stream and after it changes.
    Relation(RelationBody),
    /// A type referenced by a relation (ignored: values travel as text).
    Type {
        /// Type OID.
        oid: u32,
        /// Schema of the type.
        schema: String,
        /// Type name.
        name: String,
    },
    /// A new row.
    Insert {
        /// Table OID.
        oid: u32,
        /// The row.
        new: Tuple,
    },
    /// A changed row.
    Update {
        /// Table OID.
        oid: u32,
        /// `'K'` key or `'O'` full old row, when sent.
        old: Option<Tuple>,
        /// The new row.
        new: Tuple,
    },
    /// A removed row.
    Delete {
        /// Table OID.
        oid: u32,
        /// The key (`'K'`) or full old row (`'O'`).
        old: Tuple,
    },
    /// TRUNCATE of some tables.
    Truncate {
        /// The tables' OIDs.
        oids: Vec<u32>,
        /// CASCADE.
        cascade: bool,
        /// RESTART IDENTITY.
        restart_identity: bool,
    },
    /// A logical decoding message (`pg_logical_emit_message`).
    Message {
        /// Part of the enclosing transaction (true) or sent immediately (false).
        transactional: bool,
        /// LSN of the message.
        lsn: u64,
        /// Prefix.
        prefix: String,
        /// Payload.
        content: Bytes,
    },
}

/// The body of a `Relation` message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationBody {
    /// Table OID.
    pub oid: u32,
    /// Schema (pgoutput sends `""` for `pg_catalog`; mapped back here).
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Replica identity.
    pub replica_identity: ReplicaIdentity,
    /// Columns: (is_key, name, type oid, type modifier).
    pub columns: Vec<(bool, String, u32, i32)>,
}

/// Why a pgoutput payload cannot be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PgOutputError {
    /// The payload was empty.
    #[error("empty pgoutput message")]
    Empty,
    /// The payload ends before a field.
    #[error("pgoutput {msg} message truncated")]
    Truncated {
        /// Message kind being parsed.
        msg: &'static str,
    },
    /// Unknown message or field tag.
    #[error("unexpected byte {tag:#04x} in pgoutput {msg} message")]
    BadTag {
        /// Message kind being parsed.
        msg: &'static str,
        /// The byte found.
        tag: u8,
    },
    /// A name is not valid UTF-8 or not NUL-terminated.
    #[error("bad string in pgoutput {msg} message")]
    BadString {
        /// Message kind being parsed.
        msg: &'static str,
    },
    /// Bytes left after the message.
    #[error("{extra} trailing bytes after pgoutput {msg} message")]
    Trailing {
        /// Message kind parsed.
        msg: &'static str,
        /// How many bytes were left.
        extra: usize,
    },
}

/// Parses one pgoutput message (the payload of an `XLogData`).
pub fn parse(mut buf: Bytes) -> Result<PgOutputMessage, PgOutputError> {
    if buf.is_empty() {
        return Err(PgOutputError::Empty);
    }
    let tag = buf.get_u8();
    let (msg, name) = {
        let mut r = Cur { b: &mut buf, msg: msg_name(tag) };
        let m = match tag {
            b'B' => PgOutputMessage::Begin { final_lsn: r.u64()?, commit_time_us: r.i64()?, xid: r.u32()? },
            b'C' => {
                let _flags = r.u8()?;
                PgOutputMessage::Commit { commit_lsn: r.u64()?, end_lsn: r.u64()?, commit_time_us: r.i64()? }
            }
            b'O' => PgOutputMessage::Origin { lsn: r.u64()?, name: r.cstr()? },
            b'R' => {
                let oid = r.u32()?;
                let mut schema = r.cstr()?;
                if schema.is_empty() {
                    schema = "pg_catalog".into();
                }
                let name = r.cstr()?;
                let ident = r.u8()?;
                let replica_identity =
                    ReplicaIdentity::from_byte(ident).ok_or(PgOutputError::BadTag { msg: r.msg, tag: ident })?;
                let n = r.u16()?;
                let mut columns = Vec::with_capacity(usize::from(n).min(1600));
                for _ in 0..n {
                    let flags = r.u8()?;
                    let cname = r.cstr()?;
                    let type_oid = r.u32()?;
                    let typmod = r.i32()?;
                    columns.push((flags & 1 != 0, cname, type_oid, typmod));
                }
                PgOutputMessage::Relation(RelationBody { oid, schema, name, replica_identity, columns })
            }
            b'Y' => PgOutputMessage::Type { oid: r.u32()?, schema: r.cstr()?, name: r.cstr()? },
            b'I' => {
                let oid = r.u32()?;
                r.expect(b'N')?;
                PgOutputMessage::Insert { oid, new: r.tuple()? }
            }
            b'U' => {
                let oid = r.u32()?;
                let mut old = None;
                let mut kind = r.u8()?;
                if kind == b'K' || kind == b'O' {
                    old = Some(r.tuple()?);
                    kind = r.u8()?;
                }
                if kind != b'N' {
                    return Err(PgOutputError::BadTag { msg: r.msg, tag: kind });
                }
                PgOutputMessage::Update { oid, old, new: r.tuple()? }
            }
            b'D' => {
                let oid = r.u32()?;
                let kind = r.u8()?;
                if kind != b'K' && kind != b'O' {
                    return Err(PgOutputError::BadTag { msg: r.msg, tag: kind });
                }
                PgOutputMessage::Delete { oid, old: r.tuple()? }
            }
            b'T' => {
                let n = r.u32()?;
                let options = r.u8()?;
                let mut oids = Vec::with_capacity(n.min(1024) as usize);
                for _ in 0..n {
                    oids.push(r.u32()?);
                }
                PgOutputMessage::Truncate { oids, cascade: options & 1 != 0, restart_identity: options & 2 != 0 }
            }
            b'M' => {
                let flags = r.u8()?;
                let lsn = r.u64()?;
                let prefix = r.cstr()?;
                let len = r.u32()? as usize;
                let content = r.take(len)?;
                PgOutputMessage::Message { transactional: flags & 1 != 0, lsn, prefix, content }
            }
            tag => return Err(PgOutputError::BadTag { msg: "pgoutput", tag }),
        };
        (m, r.msg)
    };
    if !buf.is_empty() {
        return Err(PgOutputError::Trailing { msg: name, extra: buf.len() });
    }
    Ok(msg)
}

fn msg_name(tag: u8) -> &'static str {
    match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        _ => "unknown",
    }
}

/// Bounds-checked reader over one message.
struct Cur<'a> {
    b: &'a mut Bytes,
    msg: &'static str,
}

impl Cur<'_> {
    fn need(&self, n: usize) -> Result<(), PgOutputError> {
        if self.b.remaining() < n {
            Err(PgOutputError::Truncated { msg: self.msg })
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, PgOutputError> {
        self.need(1)?;
        Ok(self.b.get_u8())
    }
    fn expect(&mut self, tag: u8) -> Result<(), PgOutputError> {
        match self.u8()? {
            t if t == tag => Ok(()),
            t => Err(PgOutputError::BadTag { msg: self.msg, tag: t }),
        }
    }
    fn u16(&mut self) -> Result<u16, PgOutputError> {
        self.need(2)?;
        Ok(self.b.get_u16())
    }
    fn u32(&mut self) -> Result<u32, PgOutputError> {
        self.need(4)?;
        Ok(self.b.get_u32())
    }
    fn i32(&mut self) -> Result<i32, PgOutputError> {
        self.need(4)?;
        Ok(self.b.get_i32())
    }
    fn u64(&mut self) -> Result<u64, PgOutputError> {
        self.need(8)?;
        Ok(self.b.get_u64())
    }
    fn i64(&mut self) -> Result<i64, PgOutputError> {
        self.need(8)?;
        Ok(self.b.get_i64())
    }
    fn take(&mut self, n: usize) -> Result<Bytes, PgOutputError> {
        self.need(n)?;
        Ok(self.b.split_to(n))
    }
    fn cstr(&mut self) -> Result<String, PgOutputError> {
        let end = self.b.iter().position(|&c| c == 0).ok_or(PgOutputError::BadString { msg: self.msg })?;
        let s = self.b.split_to(end);
        self.b.advance(1);
        String::from_utf8(s.to_vec()).map_err(|_| PgOutputError::BadString { msg: self.msg })
    }
    fn tuple(&mut self) -> Result<Tuple, PgOutputError> {
        let n = self.u16()?;
        let mut datums = Vec::with_capacity(usize::from(n).min(1600));
        for _ in 0..n {
            let d = match self.u8()? {
                b'n' => Datum::Null,
                b'u' => Datum::Unchanged,
                b't' => {
                    let len = self.u32()? as usize;
                    Datum::Text(self.take(len)?)
                }
                // 'b' (binary) is only sent when the `binary` option is on; Tandem never asks for it.
                tag => return Err(PgOutputError::BadTag { msg: self.msg, tag }),
            };
            datums.push(d);
        }
        Ok(Tuple(datums))
    }
}

/// Builders of pgoutput payloads, for tests of this module and of the assembler.
#[cfg(test)]
pub(crate) mod build {
    use bytes::{BufMut, Bytes, BytesMut};

    pub fn begin(final_lsn: u64, ts: i64, xid: u32) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'B');
        b.put_u64(final_lsn);
        b.put_i64(ts);
        b.put_u32(xid);
        b.freeze()
    }
    pub fn commit(commit_lsn: u64, end_lsn: u64, ts: i64) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'C');
        b.put_u8(0);
        b.put_u64(commit_lsn);
        b.put_u64(end_lsn);
        b.put_i64(ts);
        b.freeze()
    }
    pub fn relation(oid: u32, schema: &str, name: &str, ident: u8, cols: &[(bool, &str, u32)]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'R');
        b.put_u32(oid);
        cstr(&mut b, schema);
        cstr(&mut b, name);
        b.put_u8(ident);
        b.put_u16(cols.len() as u16);
        for (key, n, t) in cols {
            b.put_u8(u8::from(*key));
            cstr(&mut b, n);
            b.put_u32(*t);
            b.put_i32(-1);
        }
        b.freeze()
    }
    /// `cols`: None = null, Some(None) = unchanged TOAST, Some(Some(v)) = text.
    pub fn tuple(b: &mut BytesMut, cols: &[Option<Option<&str>>]) {
        b.put_u16(cols.len() as u16);
        for c in cols {
            match c {
                None => b.put_u8(b'n'),
                Some(None) => b.put_u8(b'u'),
                Some(Some(v)) => {
                    b.put_u8(b't');
                    b.put_u32(v.len() as u32);
                    b.put_slice(v.as_bytes());
                }
            }
        }
    }
    pub fn insert(oid: u32, cols: &[Option<Option<&str>>]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'I');
        b.put_u32(oid);
        b.put_u8(b'N');
        tuple(&mut b, cols);
        b.freeze()
    }
    pub fn update(oid: u32, old: Option<(u8, &[Option<Option<&str>>])>, new: &[Option<Option<&str>>]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'U');
        b.put_u32(oid);
        if let Some((kind, cols)) = old {
            b.put_u8(kind);
            tuple(&mut b, cols);
        }
        b.put_u8(b'N');
        tuple(&mut b, new);
        b.freeze()
    }
    pub fn delete(oid: u32, kind: u8, old: &[Option<Option<&str>>]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'D');
        b.put_u32(oid);
        b.put_u8(kind);
        tuple(&mut b, old);
        b.freeze()
    }
    pub fn truncate(oids: &[u32], options: u8) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'T');
        b.put_u32(oids.len() as u32);
        b.put_u8(options);
        for o in oids {
            b.put_u32(*o);
        }
        b.freeze()
    }
    pub fn message(transactional: bool, lsn: u64, prefix: &str, content: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'M');
        b.put_u8(u8::from(transactional));
        b.put_u64(lsn);
        cstr(&mut b, prefix);
        b.put_u32(content.len() as u32);
        b.put_slice(content);
        b.freeze()
    }
    fn cstr(b: &mut BytesMut, s: &str) {
        b.put_slice(s.as_bytes());
        b.put_u8(0);
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    #[test]
    fn parses_each_message() {
        assert_eq!(
            parse(begin(0x100, 5, 7)).unwrap(),
            PgOutputMessage::Begin { final_lsn: 0x100, commit_time_us: 5, xid: 7 }
        );
        assert_eq!(
            parse(commit(0x100, 0x130, 5)).unwrap(),
            PgOutputMessage::Commit { commit_lsn: 0x100, end_lsn: 0x130, commit_time_us: 5 }
        );
        let PgOutputMessage::Relation(r) =
            parse(relation(16384, "", "t", b'f', &[(true, "id", 23), (false, "v", 25)])).unwrap()
        else {
            panic!("not a relation")
        };
        assert_eq!(r.schema, "pg_catalog");
        assert_eq!(r.replica_identity, ReplicaIdentity::Full);
        assert_eq!(r.columns[0], (true, "id".to_string(), 23, -1));
        assert_eq!(
            parse(update(1, Some((b'K', &[Some(Some("1")), None])), &[Some(Some("2")), Some(None)])).unwrap(),
            PgOutputMessage::Update {
                oid: 1,
                old: Some(Tuple(vec![Datum::Text(Bytes::from_static(b"1")), Datum::Null])),
                new: Tuple(vec![Datum::Text(Bytes::from_static(b"2")), Datum::Unchanged]),
            }
        );
        assert!(matches!(parse(update(1, None, &[])).unwrap(), PgOutputMessage::Update { old: None, .. }));
        assert!(matches!(parse(delete(1, b'O', &[None])).unwrap(), PgOutputMessage::Delete { oid: 1, .. }));
        assert_eq!(
            parse(truncate(&[1, 2], 3)).unwrap(),
            PgOutputMessage::Truncate { oids: vec![1, 2], cascade: true, restart_identity: true }
        );
        assert_eq!(
            parse(message(true, 9, "tandem", b"x")).unwrap(),
            PgOutputMessage::Message {
                transactional: true,
                lsn: 9,
                prefix: "tandem".into(),
                content: Bytes::from_static(b"x")
            }
        );
    }

    #[test]
    fn malformed_payloads_are_errors() {
        let samples = [
            begin(1, 2, 3),
            commit(1, 2, 3),
            relation(1, "public", "t", b'd', &[(true, "id", 23)]),
            insert(1, &[Some(Some("abc")), None, Some(None)]),
            update(1, Some((b'O', &[Some(Some("a"))])), &[Some(Some("b"))]),
            delete(1, b'K', &[Some(Some("a"))]),
            truncate(&[1], 0),
            message(false, 1, "p", b"payload"),
        ];
        for s in samples {
            parse(s.clone()).unwrap();
            for len in 0..s.len() {
                assert!(parse(s.slice(..len)).is_err(), "{:?} cut at {len} parsed", s);
            }
            let mut longer = s.to_vec();
            longer.push(0);
            assert!(parse(Bytes::from(longer)).is_err());
            for i in 0..s.len() {
                let mut b = s.to_vec();
                b[i] ^= 0xFF;
                let _ = parse(Bytes::from(b));
            }
        }
        assert_eq!(parse(Bytes::from_static(b"Z")), Err(PgOutputError::BadTag { msg: "pgoutput", tag: b'Z' }));
        assert!(parse(insert(1, &[])).is_ok());
        let mut bad = insert(1, &[]).to_vec();
        bad[5] = b'X';
        assert!(parse(Bytes::from(bad)).is_err());
    }
}
