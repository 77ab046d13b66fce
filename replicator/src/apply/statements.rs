//! The writer session's prepared row statements, found by shape, not by text.
//!
//! Place in the data flow: between planning a row change ([`super::sql::shape`])
//! and sending it ([`super::applier`]). Building the SQL text of every change
//! only to look up its prepared statement cost a string format and several
//! allocations per row; here the lookup key is the relation's OID plus the
//! change's shape bytes, and the text is rendered only when a shape is new.
//!
//! A relation can change under the same OID (ALTER TABLE): each OID's entry
//! remembers the relation its statements were prepared for and drops them when
//! a change arrives with a different description. Changes of one decoded
//! transaction share one `Arc<Relation>`, so the comparison is a pointer check
//! for all but the first change of a table in each transaction.
//!
//! Statements live on the server under their names until closed: whatever
//! the cache forgets (a changed relation, a full cache, [`StatementCache::clear`])
//! is kept in a list the applier takes with [`StatementCache::take_evicted`]
//! and sends Close messages for.

use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};

use super::sql::RowKind;
use crate::change::Relation;

/// A prepared row statement and what error messages need to name it.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The server-side statement's name.
    pub name: Box<str>,
    /// Its SQL text, for logs and errors.
    pub sql: Arc<str>,
    /// INSERT, UPDATE or DELETE (an UPDATE/DELETE hitting no row means divergence).
    pub kind: RowKind,
}

struct RelStatements {
    rel: Arc<Relation>,
    shapes: HashMap<Vec<u8>, Prepared>,
}

/// Prepared statements per (relation, shape), bounded in number.
pub struct StatementCache {
    rels: HashMap<u32, RelStatements>,
    len: usize,
    max: usize,
    evicted: Vec<Box<str>>,
}

impl StatementCache {
    /// An empty cache that forgets everything once it holds `max` statements
    /// (a bound on server memory for tables with many shapes).
    pub fn new(max: usize) -> StatementCache {
        StatementCache { rels: HashMap::new(), len: 0, max: max.max(1), evicted: Vec::new() }
    }

    /// The statement for `key` on `rel`, if prepared for this very description of `rel`.
    pub fn get(&mut self, rel: &Arc<Relation>, key: &[u8]) -> Option<&Prepared> {
        let entry = self.rels.get_mut(&rel.oid)?;
        if !Arc::ptr_eq(&entry.rel, rel) {
            if *entry.rel != **rel {
                self.len -= entry.shapes.len();
                self.evicted.extend(entry.shapes.drain().map(|(_, p)| p.name));
            }
            entry.rel = rel.clone();
        }
        entry.shapes.get(key)
    }

    /// Remembers a statement prepared for `key` on `rel`.
    pub fn insert(&mut self, rel: &Arc<Relation>, key: Vec<u8>, prepared: Prepared) {
        if self.len >= self.max {
            self.clear();
        }
        let entry =
            self.rels.entry(rel.oid).or_insert_with(|| RelStatements { rel: rel.clone(), shapes: HashMap::new() });
        if *entry.rel != **rel {
            self.len -= entry.shapes.len();
            self.evicted.extend(entry.shapes.drain().map(|(_, p)| p.name));
            entry.rel = rel.clone();
        }
        match entry.shapes.insert(key, prepared) {
            None => self.len += 1,
            Some(old) => self.evicted.push(old.name),
        }
    }

    /// Forgets every statement (after DDL: the tables may have changed); they are to be closed.
    pub fn clear(&mut self) {
        for (_, entry) in self.rels.drain() {
            self.evicted.extend(entry.shapes.into_values().map(|p| p.name));
        }
        self.len = 0;
    }

    /// Forgets every statement without closing any (the server dropped them all).
    pub fn forget(&mut self) {
        self.rels.clear();
        self.evicted.clear();
        self.len = 0;
    }

    /// Names of the statements forgotten since the last call, to be closed on the server.
    pub fn take_evicted(&mut self) -> Vec<Box<str>> {
        std::mem::take(&mut self.evicted)
    }

    /// Statements held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no statement is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
