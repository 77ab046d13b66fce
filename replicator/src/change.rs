//! Decoded transactions: the unit that flows slot → decoder → change log → applier.
//!
//! The decoder (`decoder/`) turns pgoutput messages into [`Transaction`]s; the
//! source loop stores each one in the change log as [`encode`]d bytes keyed by
//! its commit LSN; every applier reads them back with [`decode`] and replays
//! them on its replica. The encoding is self-contained: each transaction
//! carries the relations it touches, so a reader can start at any record
//! without having seen earlier ones (pgoutput only sends a relation once per
//! stream, the change log must not depend on that).
//!
//! Binary layout (all integers big-endian), hand-written because it is small,
//! versioned and must never panic on a corrupt record:
//!
//! ```text
//! u8 version(=1) | u32 xid | u64 commit_lsn | u64 end_lsn | i64 commit_time_us | str database
//! u32 n_relations, each: u32 oid | str schema | str name | u8 identity | u16 n_cols,
//!                        each: str name | u32 type_oid | i32 type_modifier | u8 is_key
//! u32 n_changes, each: u8 tag then
//!   'I' u32 rel | tuple            'U' u32 rel | u8 has_old | [tuple] | tuple
//!   'D' u32 rel | tuple            'T' u8 flags(1=cascade,2=restart identity) | u32 n | u32 rel...
//!   'M' str prefix | bytes content
//! tuple: u16 n, each: 'n' | 'u' | 't' u32 len bytes        str/bytes: u32 len + bytes
//! ```

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tandem_core::Lsn;

/// One committed transaction of one database, in the primary's commit order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    /// Transaction id on the primary (for logs and reports only).
    pub xid: u32,
    /// LSN of the commit record: the change log key and the progress row value.
    pub commit_lsn: Lsn,
    /// LSN just past the commit record: what may be confirmed to the slot once durable.
    pub end_lsn: Lsn,
    /// Commit time in microseconds since 2000-01-01 UTC, as pgoutput sends it (for lag in seconds).
    pub commit_time_us: i64,
    /// Database the transaction ran in (each database has its own slot and stream).
    pub database: String,
    /// The row changes, truncates and logical messages, in the order they happened.
    pub changes: Vec<Change>,
}

/// One change inside a [`Transaction`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new row.
    Insert {
        /// Table the row went into.
        rel: Arc<Relation>,
        /// The row as inserted.
        new: Tuple,
    },
    /// A changed row.
    Update {
        /// Table of the row.
        rel: Arc<Relation>,
        /// The old key (identity DEFAULT/INDEX, only when the key changed) or the
        /// full old row (identity FULL); `None` when the key is unchanged, in
        /// which case the key is taken from `new`.
        old: Option<Tuple>,
        /// The row after the update; may hold [`Datum::Unchanged`] TOAST columns.
        new: Tuple,
    },
    /// A removed row.
    Delete {
        /// Table of the row.
        rel: Arc<Relation>,
        /// The key columns (other columns [`Datum::Null`]) or the full old row
        /// (identity FULL).
        old: Tuple,
    },
    /// TRUNCATE of one or more tables in one statement.
    Truncate {
        /// The tables truncated together.
        rels: Vec<Arc<Relation>>,
        /// `TRUNCATE ... CASCADE`.
        cascade: bool,
        /// `TRUNCATE ... RESTART IDENTITY`.
        restart_identity: bool,
    },
    /// A transactional logical message (`pg_logical_emit_message(true, prefix, content)`);
    /// Tandem's DDL capture uses these.
    Message {
        /// The message prefix (e.g. `tandem`), says who the message is for.
        prefix: String,
        /// The message payload, opaque here.
        content: Bytes,
    },
}

impl Change {
    /// The relation(s) the change touches (empty for messages).
    pub fn relations(&self) -> &[Arc<Relation>] {
        match self {
            Change::Insert { rel, .. } | Change::Update { rel, .. } | Change::Delete { rel, .. } => {
                std::slice::from_ref(rel)
            }
            Change::Truncate { rels, .. } => rels,
            Change::Message { .. } => &[],
        }
    }
}

/// A table as pgoutput describes it (its `Relation` message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    /// OID of the table on the primary (the key pgoutput uses to refer to it).
    pub oid: u32,
    /// Schema (namespace) name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// How old rows are identified in UPDATE/DELETE.
    pub replica_identity: ReplicaIdentity,
    /// The published columns, in the order tuples carry them.
    pub columns: Vec<Column>,
}

/// `pg_class.relreplident`: which old-row columns UPDATE/DELETE carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// `d`: the primary key.
    Default,
    /// `n`: nothing; UPDATE/DELETE cannot be replicated for such a table.
    Nothing,
    /// `f`: the whole old row.
    Full,
    /// `i`: the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    /// Maps pgoutput's identity byte; `None` for an unknown byte.
    pub fn from_byte(b: u8) -> Option<ReplicaIdentity> {
        match b {
            b'd' => Some(ReplicaIdentity::Default),
            b'n' => Some(ReplicaIdentity::Nothing),
            b'f' => Some(ReplicaIdentity::Full),
            b'i' => Some(ReplicaIdentity::Index),
            _ => None,
        }
    }

    /// The byte pgoutput (and the change log) uses for this identity.
    pub fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }
}

/// One published column of a [`Relation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// OID of the column's type on the primary.
    pub type_oid: u32,
    /// `atttypmod` (e.g. varchar length), -1 when none.
    pub type_modifier: i32,
    /// Part of the replica identity key (what WHERE clauses match on).
    pub is_key: bool,
}

/// A row: one [`Datum`] per column of the relation, in column order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tuple(pub Vec<Datum>);

/// One column value as pgoutput sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Datum {
    /// SQL NULL.
    Null,
    /// An unchanged TOASTed value that pgoutput did not resend: keep the replica's value.
    Unchanged,
    /// The value in PostgreSQL's text output format.
    Text(Bytes),
}

/// Why bytes from the change log are not a valid encoded [`Transaction`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChangeDecodeError {
    /// The record ends before a field it announces.
    #[error("encoded transaction truncated while reading {0}")]
    Truncated(&'static str),
    /// The record was written by an unknown encoding version.
    #[error("unknown change encoding version {0}")]
    Version(u8),
    /// A byte that must be one of a few tags is not.
    #[error("invalid {what} tag {tag:#04x} in encoded transaction")]
    BadTag {
        /// Which field held the tag.
        what: &'static str,
        /// The byte found.
        tag: u8,
    },
    /// A change refers to a relation index the record does not contain.
    #[error("change refers to relation #{0}, which the record does not carry")]
    BadRelation(u32),
    /// A name field is not UTF-8.
    #[error("non-UTF-8 text in encoded transaction ({0})")]
    Utf8(&'static str),
    /// Bytes are left after the last change.
    #[error("{0} trailing bytes after encoded transaction")]
    Trailing(usize),
}

const VERSION: u8 = 1;

/// Encodes a transaction for the change log (see the module doc for the layout).
pub fn encode(txn: &Transaction) -> Bytes {
    let mut out = BytesMut::with_capacity(64 + txn.changes.len() * 32);
    out.put_u8(VERSION);
    out.put_u32(txn.xid);
    out.put_u64(txn.commit_lsn.0);
    out.put_u64(txn.end_lsn.0);
    out.put_i64(txn.commit_time_us);
    put_str(&mut out, &txn.database);

    // Relations are deduplicated by identity of the Arc, not by OID: a table
    // altered mid-transaction arrives as a second Relation with the same OID.
    let mut rels: Vec<&Arc<Relation>> = Vec::new();
    let mut body = BytesMut::new();
    for change in &txn.changes {
        match change {
            Change::Insert { rel, new } => {
                body.put_u8(b'I');
                body.put_u32(index_of(rel, &mut rels));
                put_tuple(&mut body, new);
            }
            Change::Update { rel, old, new } => {
                body.put_u8(b'U');
                body.put_u32(index_of(rel, &mut rels));
                match old {
                    Some(old) => {
                        body.put_u8(1);
                        put_tuple(&mut body, old);
                    }
                    None => body.put_u8(0),
                }
                put_tuple(&mut body, new);
            }
            Change::Delete { rel, old } => {
                body.put_u8(b'D');
                body.put_u32(index_of(rel, &mut rels));
                put_tuple(&mut body, old);
            }
            Change::Truncate { rels: trels, cascade, restart_identity } => {
                body.put_u8(b'T');
                body.put_u8(u8::from(*cascade) | (u8::from(*restart_identity) << 1));
                body.put_u32(trels.len() as u32);
                for rel in trels {
                    body.put_u32(index_of(rel, &mut rels));
                }
            }
            Change::Message { prefix, content } => {
                body.put_u8(b'M');
                put_str(&mut body, prefix);
                put_bytes(&mut body, content);
            }
        }
    }

    out.put_u32(rels.len() as u32);
    for rel in rels {
        out.put_u32(rel.oid);
        put_str(&mut out, &rel.schema);
        put_str(&mut out, &rel.name);
        out.put_u8(rel.replica_identity.as_byte());
        out.put_u16(rel.columns.len() as u16);
        for col in &rel.columns {
            put_str(&mut out, &col.name);
            out.put_u32(col.type_oid);
            out.put_i32(col.type_modifier);
            out.put_u8(u8::from(col.is_key));
        }
    }
    out.put_u32(txn.changes.len() as u32);
    out.put_slice(&body);
    out.freeze()
}

/// Index of `rel` in `rels`, appending it if new.
fn index_of<'a>(rel: &'a Arc<Relation>, rels: &mut Vec<&'a Arc<Relation>>) -> u32 {
    match rels.iter().position(|r| Arc::ptr_eq(r, rel)) {
        Some(i) => i as u32,
        None => {
            rels.push(rel);
            (rels.len() - 1) as u32
        }
    }
}

/// Decodes a change-log record produced by [`encode`]. Never panics on bad bytes.
pub fn decode(buf: &[u8]) -> Result<Transaction, ChangeDecodeError> {
    decode_bytes(Bytes::copy_from_slice(buf))
}

/// Like [`decode`], but takes ownership so column values are slices of `buf`, not copies.
pub fn decode_bytes(buf: Bytes) -> Result<Transaction, ChangeDecodeError> {
    decode_with(buf, None)
}

/// Relation descriptions decoded from earlier records, for a reader of many
/// records (the applier): every record carries the descriptions of its
/// relations, and decoding them (a string per column) was most of the
/// decoding cost. A description whose encoded bytes equal the cached ones
/// is the cached `Arc`, which also turns later comparisons into pointer checks.
#[derive(Debug, Default)]
pub struct RelationCache {
    rels: std::collections::HashMap<u32, (Bytes, Arc<Relation>)>,
}

/// Like [`decode_bytes`], reusing relations from `cache` (and adding new ones).
pub fn decode_cached(buf: Bytes, cache: &mut RelationCache) -> Result<Transaction, ChangeDecodeError> {
    decode_with(buf, Some(cache))
}

/// Length of a relation's encoding after its OID, if `buf` holds all of it.
fn relation_len(buf: &[u8]) -> Option<usize> {
    let mut at = 0usize;
    let u32_at = |at: usize| -> Option<usize> {
        let b = buf.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    at += 4 + u32_at(at)?; // schema
    at += 4 + u32_at(at)?; // name
    at += 1; // identity
    let cols = buf.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]))?;
    at += 2;
    for _ in 0..cols {
        at += 4 + u32_at(at)? + 4 + 4 + 1;
    }
    (at <= buf.len()).then_some(at)
}

fn decode_with(buf: Bytes, mut cache: Option<&mut RelationCache>) -> Result<Transaction, ChangeDecodeError> {
    let mut r = Reader(buf);
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(ChangeDecodeError::Version(version));
    }
    let xid = r.u32("xid")?;
    let commit_lsn = Lsn(r.u64("commit_lsn")?);
    let end_lsn = Lsn(r.u64("end_lsn")?);
    let commit_time_us = r.i64("commit_time")?;
    let database = r.string("database")?;

    let n_rels = r.u32("relation count")?;
    let mut rels = Vec::with_capacity(n_rels.min(1024) as usize);
    for _ in 0..n_rels {
        let oid = r.u32("relation oid")?;
        let raw = match (&mut cache, relation_len(&r.0)) {
            (Some(cache), Some(len)) => {
                let raw = &r.0[..len];
                if let Some((_, rel)) = cache.rels.get(&oid).filter(|(bytes, _)| bytes[..] == *raw) {
                    rels.push(rel.clone());
                    r.0.advance(len);
                    continue;
                }
                Some(Bytes::copy_from_slice(raw))
            }
            _ => None,
        };
        let schema = r.string("schema")?;
        let name = r.string("relation name")?;
        let ident = r.u8("replica identity")?;
        let replica_identity = ReplicaIdentity::from_byte(ident)
            .ok_or(ChangeDecodeError::BadTag { what: "replica identity", tag: ident })?;
        let n_cols = r.u16("column count")?;
        let mut columns = Vec::with_capacity(usize::from(n_cols).min(1600));
        for _ in 0..n_cols {
            let name = r.string("column name")?;
            let type_oid = r.u32("type oid")?;
            let type_modifier = r.i32("type modifier")?;
            let is_key = r.u8("key flag")? != 0;
            columns.push(Column { name, type_oid, type_modifier, is_key });
        }
        let rel = Arc::new(Relation { oid, schema, name, replica_identity, columns });
        if let (Some(cache), Some(raw)) = (&mut cache, raw) {
            cache.rels.insert(oid, (raw, rel.clone()));
        }
        rels.push(rel);
    }
    let rel = |i: u32| -> Result<Arc<Relation>, ChangeDecodeError> {
        rels.get(i as usize).cloned().ok_or(ChangeDecodeError::BadRelation(i))
    };

    let n_changes = r.u32("change count")?;
    let mut changes = Vec::with_capacity(n_changes.min(4096) as usize);
    for _ in 0..n_changes {
        let tag = r.u8("change tag")?;
        let change = match tag {
            b'I' => Change::Insert { rel: rel(r.u32("relation index")?)?, new: r.tuple()? },
            b'U' => {
                let rel = rel(r.u32("relation index")?)?;
                let old = match r.u8("old flag")? {
                    0 => None,
                    _ => Some(r.tuple()?),
                };
                Change::Update { rel, old, new: r.tuple()? }
            }
            b'D' => Change::Delete { rel: rel(r.u32("relation index")?)?, old: r.tuple()? },
            b'T' => {
                let flags = r.u8("truncate flags")?;
                let n = r.u32("truncate count")?;
                let mut trels = Vec::with_capacity(n.min(1024) as usize);
                for _ in 0..n {
                    trels.push(rel(r.u32("relation index")?)?);
                }
                Change::Truncate { rels: trels, cascade: flags & 1 != 0, restart_identity: flags & 2 != 0 }
            }
            b'M' => Change::Message { prefix: r.string("message prefix")?, content: r.bytes("message")? },
            tag => return Err(ChangeDecodeError::BadTag { what: "change", tag }),
        };
        changes.push(change);
    }
    if !r.0.is_empty() {
        return Err(ChangeDecodeError::Trailing(r.0.len()));
    }
    Ok(Transaction { xid, commit_lsn, end_lsn, commit_time_us, database, changes })
}

fn put_str(out: &mut BytesMut, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}

fn put_tuple(out: &mut BytesMut, tuple: &Tuple) {
    out.put_u16(tuple.0.len() as u16);
    for datum in &tuple.0 {
        match datum {
            Datum::Null => out.put_u8(b'n'),
            Datum::Unchanged => out.put_u8(b'u'),
            Datum::Text(v) => {
                out.put_u8(b't');
                put_bytes(out, v);
            }
        }
    }
}

/// Bounds-checked cursor over an encoded record.
struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize, what: &'static str) -> Result<(), ChangeDecodeError> {
        if self.0.remaining() < n {
            Err(ChangeDecodeError::Truncated(what))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, ChangeDecodeError> {
        self.need(1, what)?;
        Ok(self.0.get_u8())
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, ChangeDecodeError> {
        self.need(2, what)?;
        Ok(self.0.get_u16())
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, ChangeDecodeError> {
        self.need(4, what)?;
        Ok(self.0.get_u32())
    }
    fn i32(&mut self, what: &'static str) -> Result<i32, ChangeDecodeError> {
        self.need(4, what)?;
        Ok(self.0.get_i32())
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, ChangeDecodeError> {
        self.need(8, what)?;
        Ok(self.0.get_u64())
    }
    fn i64(&mut self, what: &'static str) -> Result<i64, ChangeDecodeError> {
        self.need(8, what)?;
        Ok(self.0.get_i64())
    }
    fn bytes(&mut self, what: &'static str) -> Result<Bytes, ChangeDecodeError> {
        let len = self.u32(what)? as usize;
        self.need(len, what)?;
        Ok(self.0.split_to(len))
    }
    fn string(&mut self, what: &'static str) -> Result<String, ChangeDecodeError> {
        let b = self.bytes(what)?;
        String::from_utf8(b.to_vec()).map_err(|_| ChangeDecodeError::Utf8(what))
    }
    fn tuple(&mut self) -> Result<Tuple, ChangeDecodeError> {
        let n = self.u16("tuple column count")?;
        let mut datums = Vec::with_capacity(usize::from(n).min(1600));
        for _ in 0..n {
            let datum = match self.u8("datum tag")? {
                b'n' => Datum::Null,
                b'u' => Datum::Unchanged,
                b't' => Datum::Text(self.bytes("datum")?),
                tag => return Err(ChangeDecodeError::BadTag { what: "datum", tag }),
            };
            datums.push(datum);
        }
        Ok(Tuple(datums))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(oid: u32, name: &str, ident: ReplicaIdentity) -> Arc<Relation> {
        Arc::new(Relation {
            oid,
            schema: "public".into(),
            name: name.into(),
            replica_identity: ident,
            columns: vec![
                Column { name: "id".into(), type_oid: 23, type_modifier: -1, is_key: true },
                Column { name: "v".into(), type_oid: 1043, type_modifier: 14, is_key: false },
            ],
        })
    }

    fn text(s: &str) -> Datum {
        Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn sample() -> Transaction {
        let a = rel(16384, "a", ReplicaIdentity::Default);
        let b = rel(16390, "b", ReplicaIdentity::Full);
        // Same OID as `a`, altered mid-transaction: must survive as its own relation.
        let a2 = Arc::new(Relation { name: "a".into(), columns: vec![], ..(*a).clone() });
        Transaction {
            xid: 742,
            commit_lsn: Lsn(0x1_0000_0A00),
            end_lsn: Lsn(0x1_0000_0A30),
            commit_time_us: 760_000_000_123_456,
            database: "app".into(),
            changes: vec![
                Change::Insert { rel: a.clone(), new: Tuple(vec![text("1"), text("héllo")]) },
                Change::Update { rel: a.clone(), old: None, new: Tuple(vec![text("1"), Datum::Unchanged]) },
                Change::Update {
                    rel: b.clone(),
                    old: Some(Tuple(vec![text("2"), Datum::Null])),
                    new: Tuple(vec![text("3"), text("")]),
                },
                Change::Delete { rel: a.clone(), old: Tuple(vec![text("1"), Datum::Null]) },
                Change::Truncate { rels: vec![a.clone(), b.clone()], cascade: true, restart_identity: false },
                Change::Message { prefix: "tandem".into(), content: Bytes::from_static(b"CREATE TABLE x()") },
                Change::Insert { rel: a2, new: Tuple(vec![]) },
            ],
        }
    }

    #[test]
    fn round_trips() {
        let txn = sample();
        let bytes = encode(&txn);
        let back = decode(&bytes).unwrap();
        assert_eq!(back, txn);
        // Shared relations come back shared; the altered one stays distinct.
        let rels: Vec<_> = back.changes.iter().flat_map(|c| c.relations().to_vec()).collect();
        assert!(Arc::ptr_eq(&rels[0], &rels[1]));
        assert_eq!(rels.last().unwrap().columns.len(), 0);
        assert_eq!(decode_bytes(bytes).unwrap(), txn);
    }

    #[test]
    fn cached_relations_are_shared_across_records() {
        let txn = sample();
        let bytes = encode(&txn);
        let mut cache = RelationCache::default();
        let first = decode_cached(bytes.clone(), &mut cache).unwrap();
        let second = decode_cached(bytes.clone(), &mut cache).unwrap();
        assert_eq!(first, txn);
        assert_eq!(second, txn);
        // `b` (not altered within the record) is the very same description both times.
        assert!(Arc::ptr_eq(
            first.changes[2].relations().first().unwrap(),
            second.changes[2].relations().first().unwrap()
        ));
        // A warm cache must not change what corrupt or truncated records do.
        for len in 0..bytes.len() {
            assert!(decode_cached(bytes.slice(..len), &mut cache).is_err(), "prefix of {len} bytes decoded");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.to_vec();
            b[i] ^= 0xFF;
            let _ = decode_cached(Bytes::from(b), &mut cache);
        }
    }

    #[test]
    fn round_trips_empty_transaction() {
        let txn = Transaction {
            xid: 0,
            commit_lsn: Lsn::ZERO,
            end_lsn: Lsn::ZERO,
            commit_time_us: -1,
            database: String::new(),
            changes: vec![],
        };
        assert_eq!(decode(&encode(&txn)).unwrap(), txn);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = encode(&sample());
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "prefix of {len} bytes decoded");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert_eq!(decode(&longer), Err(ChangeDecodeError::Trailing(1)));
    }

    #[test]
    fn corrupt_bytes_never_panic() {
        let bytes = encode(&sample()).to_vec();
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xFF] {
                let mut b = bytes.clone();
                b[i] ^= flip;
                let _ = decode(&b);
            }
        }
        assert_eq!(decode(&[9]), Err(ChangeDecodeError::Version(9)));
    }
}
