//! pgoutput → [`Transaction`]: the step between the replication stream
//! (`source/`) and the change log.
//!
//! [`Decoder`] keeps the per-stream state pgoutput relies on (the relation
//! cache, the transaction being assembled) and hands out one complete
//! [`Transaction`] per `Commit`. It never panics on what the server sends:
//! unknown relations, changes outside a transaction or tuples of the wrong
//! width are [`DecodeError`]s, which end the stream (the slot re-sends from the
//! last confirmed position on reconnect).

pub mod pgoutput;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tandem_core::Lsn;

use crate::change::{Change, Column, Relation, Transaction, Tuple};
use pgoutput::{PgOutputError, PgOutputMessage};

/// Why the stream cannot be turned into transactions.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The payload is not a valid pgoutput message.
    #[error(transparent)]
    Parse(#[from] PgOutputError),
    /// A change names a relation the stream has not described.
    #[error("pgoutput change for unknown relation oid {0}")]
    UnknownRelation(u32),
    /// A change, or a Commit, arrived outside Begin … Commit.
    #[error("pgoutput {0} outside a transaction")]
    OutsideTransaction(&'static str),
    /// A Begin arrived inside a transaction.
    #[error("pgoutput Begin inside a transaction (xid {0})")]
    NestedBegin(u32),
    /// A tuple's width differs from its relation's.
    #[error("tuple for {relation} has {got} columns, relation has {expected}")]
    TupleWidth {
        /// `schema.table`.
        relation: String,
        /// Columns in the relation.
        expected: usize,
        /// Columns in the tuple.
        got: usize,
    },
    /// Commit LSN differs from the one announced by Begin.
    #[error("pgoutput Commit at {commit} but Begin announced {begin}")]
    CommitMismatch {
        /// Begin's final LSN.
        begin: Lsn,
        /// Commit's commit LSN.
        commit: Lsn,
    },
}

/// What one pgoutput message produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Nothing complete yet (inside a transaction, or a schema message).
    Nothing,
    /// A transaction committed.
    Transaction(Transaction),
    /// A non-transactional logical message (not part of the change log).
    Message {
        /// Message prefix.
        prefix: String,
        /// Payload.
        content: Bytes,
    },
}

/// Assembles transactions from one database's pgoutput stream.
#[derive(Debug)]
pub struct Decoder {
    database: String,
    relations: HashMap<u32, Arc<Relation>>,
    current: Option<Transaction>,
}

impl Decoder {
    /// A decoder for the stream of `database` (the name is stamped on each transaction).
    pub fn new(database: impl Into<String>) -> Self {
        Decoder { database: database.into(), relations: HashMap::new(), current: None }
    }

    /// True between a Begin and its Commit (positions from keepalives must not be
    /// confirmed then: the open transaction commits before them).
    pub fn in_transaction(&self) -> bool {
        self.current.is_some()
    }

    /// Feeds one `XLogData` payload.
    pub fn feed(&mut self, payload: Bytes) -> Result<Decoded, DecodeError> {
        match pgoutput::parse(payload)? {
            PgOutputMessage::Begin { final_lsn, commit_time_us, xid } => {
                if let Some(t) = &self.current {
                    return Err(DecodeError::NestedBegin(t.xid));
                }
                self.current = Some(Transaction {
                    xid,
                    commit_lsn: Lsn(final_lsn),
                    end_lsn: Lsn::ZERO,
                    commit_time_us,
                    database: self.database.clone(),
                    changes: Vec::new(),
                });
            }
            PgOutputMessage::Commit { commit_lsn, end_lsn, commit_time_us } => {
                let mut txn = self.current.take().ok_or(DecodeError::OutsideTransaction("Commit"))?;
                if txn.commit_lsn != Lsn(commit_lsn) {
                    return Err(DecodeError::CommitMismatch { begin: txn.commit_lsn, commit: Lsn(commit_lsn) });
                }
                txn.end_lsn = Lsn(end_lsn);
                txn.commit_time_us = commit_time_us;
                return Ok(Decoded::Transaction(txn));
            }
            PgOutputMessage::Origin { .. } | PgOutputMessage::Type { .. } => {}
            PgOutputMessage::Relation(body) => {
                let rel = Relation {
                    oid: body.oid,
                    schema: body.schema,
                    name: body.name,
                    replica_identity: body.replica_identity,
                    columns: body
                        .columns
                        .into_iter()
                        .map(|(is_key, name, type_oid, type_modifier)| Column { name, type_oid, type_modifier, is_key })
                        .collect(),
                };
                self.relations.insert(rel.oid, Arc::new(rel));
            }
            PgOutputMessage::Insert { oid, new } => {
                let rel = self.relation(oid)?;
                check_width(&rel, &new)?;
                self.push("Insert", Change::Insert { rel, new })?;
            }
            PgOutputMessage::Update { oid, old, new } => {
                let rel = self.relation(oid)?;
                check_width(&rel, &new)?;
                if let Some(old) = &old {
                    check_width(&rel, old)?;
                }
                self.push("Update", Change::Update { rel, old, new })?;
            }
            PgOutputMessage::Delete { oid, old } => {
                let rel = self.relation(oid)?;
                check_width(&rel, &old)?;
                self.push("Delete", Change::Delete { rel, old })?;
            }
            PgOutputMessage::Truncate { oids, cascade, restart_identity } => {
                let rels = oids.into_iter().map(|o| self.relation(o)).collect::<Result<Vec<_>, _>>()?;
                self.push("Truncate", Change::Truncate { rels, cascade, restart_identity })?;
            }
            PgOutputMessage::Message { transactional, prefix, content, .. } => {
                if !transactional {
                    return Ok(Decoded::Message { prefix, content });
                }
                self.push("Message", Change::Message { prefix, content })?;
            }
        }
        Ok(Decoded::Nothing)
    }

    fn relation(&self, oid: u32) -> Result<Arc<Relation>, DecodeError> {
        self.relations.get(&oid).cloned().ok_or(DecodeError::UnknownRelation(oid))
    }

    fn push(&mut self, what: &'static str, change: Change) -> Result<(), DecodeError> {
        let txn = self.current.as_mut().ok_or(DecodeError::OutsideTransaction(what))?;
        txn.changes.push(change);
        Ok(())
    }
}

fn check_width(rel: &Relation, tuple: &Tuple) -> Result<(), DecodeError> {
    if tuple.0.len() != rel.columns.len() {
        return Err(DecodeError::TupleWidth {
            relation: format!("{}.{}", rel.schema, rel.name),
            expected: rel.columns.len(),
            got: tuple.0.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::pgoutput::build::*;
    use super::*;
    use crate::change::{Datum, ReplicaIdentity};

    fn t(s: &'static str) -> Datum {
        Datum::Text(Bytes::from_static(s.as_bytes()))
    }

    #[test]
    fn assembles_a_transaction() {
        let mut d = Decoder::new("app");
        let cols = [(true, "id", 23), (false, "v", 25)];
        assert_eq!(d.feed(begin(0x200, 10, 99)).unwrap(), Decoded::Nothing);
        assert!(d.in_transaction());
        d.feed(relation(16384, "public", "t", b'd', &cols)).unwrap();
        d.feed(insert(16384, &[Some(Some("1")), Some(Some("a"))])).unwrap();
        d.feed(update(16384, None, &[Some(Some("1")), Some(None)])).unwrap();
        d.feed(delete(16384, b'K', &[Some(Some("1")), None])).unwrap();
        d.feed(truncate(&[16384], 1)).unwrap();
        d.feed(message(true, 0x1F0, "tandem", b"x")).unwrap();
        let Decoded::Transaction(txn) = d.feed(commit(0x200, 0x230, 11)).unwrap() else { panic!("no txn") };
        assert!(!d.in_transaction());
        assert_eq!(txn.xid, 99);
        assert_eq!((txn.commit_lsn, txn.end_lsn, txn.commit_time_us), (Lsn(0x200), Lsn(0x230), 11));
        assert_eq!(txn.database, "app");
        let rel = txn.changes[0].relations()[0].clone();
        assert_eq!((rel.schema.as_str(), rel.name.as_str()), ("public", "t"));
        assert_eq!(rel.replica_identity, ReplicaIdentity::Default);
        assert!(rel.columns[0].is_key && !rel.columns[1].is_key);
        assert_eq!(
            txn.changes[1..],
            [
                Change::Update { rel: rel.clone(), old: None, new: Tuple(vec![t("1"), Datum::Unchanged]) },
                Change::Delete { rel: rel.clone(), old: Tuple(vec![t("1"), Datum::Null]) },
                Change::Truncate { rels: vec![rel.clone()], cascade: true, restart_identity: false },
                Change::Message { prefix: "tandem".into(), content: Bytes::from_static(b"x") },
            ]
        );
        // The relation cache survives across transactions (pgoutput sends it once).
        d.feed(begin(0x300, 12, 100)).unwrap();
        d.feed(insert(16384, &[Some(Some("2")), None])).unwrap();
        assert!(matches!(d.feed(commit(0x300, 0x330, 12)).unwrap(), Decoded::Transaction(t) if t.changes.len() == 1));
    }

    #[test]
    fn rejects_protocol_violations() {
        let mut d = Decoder::new("app");
        assert_eq!(d.feed(insert(1, &[])), Err(DecodeError::UnknownRelation(1)));
        d.feed(relation(1, "public", "t", b'd', &[(true, "id", 23)])).unwrap();
        assert_eq!(d.feed(insert(1, &[None])), Err(DecodeError::OutsideTransaction("Insert")));
        assert_eq!(d.feed(commit(1, 2, 3)), Err(DecodeError::OutsideTransaction("Commit")));
        d.feed(begin(5, 0, 1)).unwrap();
        assert_eq!(d.feed(begin(6, 0, 2)), Err(DecodeError::NestedBegin(1)));
        assert!(matches!(d.feed(insert(1, &[None, None])), Err(DecodeError::TupleWidth { .. })));
        assert!(matches!(d.feed(commit(6, 7, 0)), Err(DecodeError::CommitMismatch { .. })));
        assert_eq!(
            d.feed(message(false, 1, "p", b"c")).unwrap(),
            Decoded::Message { prefix: "p".into(), content: Bytes::from_static(b"c") }
        );
    }
}
