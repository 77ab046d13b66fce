//! Statements known to parse on the servers, shared by all sessions.
//!
//! `frontend → pool`: in transaction mode a client's `Parse` + `Sync` outside a transaction
//! (libpq's `PQprepare`, pgbench `-M prepared`) would need a server connection only to be
//! told "ParseComplete". A client program that holds a server connection in one transaction
//! and synchronously prepares on another of its connections then deadlocks against itself
//! once the pool is full. When the same statement text has already been prepared
//! successfully in the same database, the session answers such a `Parse` itself and
//! prepares the statement on a server connection when it is first bound or described.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::sync::Mutex;

use lru::LruCache;

/// How many (database, statement) pairs are remembered.
const CAPACITY: usize = 10_000;

/// A bounded set of (database, statement hash) pairs that parsed on some server.
#[derive(Debug)]
pub struct KnownStatements {
    set: Mutex<LruCache<u64, ()>>,
}

impl Default for KnownStatements {
    fn default() -> Self {
        let cap = NonZeroUsize::new(CAPACITY).unwrap_or(NonZeroUsize::MIN);
        KnownStatements { set: Mutex::new(LruCache::new(cap)) }
    }
}

fn key(database: &str, hash: u64) -> u64 {
    let mut h = DefaultHasher::new();
    database.hash(&mut h);
    hash.hash(&mut h);
    h.finish()
}

impl KnownStatements {
    /// Records that the statement was sent to a server of `database` to be prepared.
    pub fn note(&self, database: &str, hash: u64) {
        if let Ok(mut s) = self.set.lock() {
            s.put(key(database, hash), ());
        }
    }

    /// Forgets a statement whose preparation failed.
    pub fn forget(&self, database: &str, hash: u64) {
        if let Ok(mut s) = self.set.lock() {
            s.pop(&key(database, hash));
        }
    }

    /// Whether the statement was prepared in `database` before.
    pub fn contains(&self, database: &str, hash: u64) -> bool {
        self.set.lock().map(|mut s| s.get(&key(database, hash)).is_some()).unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_database_and_forgettable() {
        let k = KnownStatements::default();
        k.note("a", 1);
        assert!(k.contains("a", 1));
        assert!(!k.contains("b", 1));
        k.forget("a", 1);
        assert!(!k.contains("a", 1));
    }
}
