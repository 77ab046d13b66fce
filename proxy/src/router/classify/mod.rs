//! Read/write classification of SQL: decides whether a statement may run on a replica.
//!
//! Data flow: the session hands each simple-Query string or Parse'd statement text to
//! [`Classifier::classify`] and gets a [`Route`] plus the [`SessionEffect`]s it must track for
//! transaction pooling (SETs to replay, pins to a server connection, DISCARD/DEALLOCATE).
//!
//! Inside: [`fingerprint`] lexes the text into a literal-blind 128-bit key; the [`cache`] maps
//! keys to routes, so a repeated statement shape costs one lexer pass and one hash probe. On a
//! miss, [`analyze`] parses with pg_query and [`walk`] scans the tree, consulting the shared
//! [`FunctionTable`] for function volatility. Anything unsure goes to the primary.

mod analyze;
mod cache;
pub mod fingerprint;
mod functions;
mod memo;
mod walk;

#[cfg(test)]
mod tests;

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache::RouteCache;
use fingerprint::{Fingerprint, Fingerprinter};

pub use functions::{ClassifyError, FunctionTable, Volatility};
pub use memo::StatementMemo;

/// Upper bound on remembered unknown function names (so that a client sending ever-new
/// garbage names cannot grow memory); the set is cleared when it fills up.
const MAX_REMEMBERED_UNKNOWN: usize = 4096;

/// Where a statement may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// May run on a replica.
    Read,
    /// Must run on the primary.
    Write,
}

/// A statement's route and the session state it changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classification {
    /// Where the statement (string) may run.
    pub route: Route,
    /// Session state changes, in statement order; empty for most statements. Non-empty
    /// effects always come with [`Route::Write`].
    pub effects: Vec<SessionEffect>,
}

/// A change to session state that transaction pooling must track.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEffect {
    /// Session-level SET / SET ROLE / SET SESSION AUTHORIZATION / SET TIME ZONE / SET NAMES
    /// ...: `name` is the lower-case parameter name (role, session_authorization, timezone,
    /// client_encoding, ...), `statement` the exact statement text to replay on another
    /// connection.
    Set {
        /// Lower-case parameter name.
        name: String,
        /// Exact statement text (sliced from the input, trimmed, without the `;`).
        statement: String,
    },
    /// RESET name (also `SET name TO DEFAULT`).
    Reset {
        /// Lower-case parameter name.
        name: String,
    },
    /// RESET ALL
    ResetAll,
    /// DISCARD ALL (also forgets prepared statements).
    DiscardAll,
    /// DISCARD PLANS
    DiscardPlans,
    /// DISCARD TEMP (drops the session's temporary objects)
    DiscardTemp,
    /// DISCARD SEQUENCES
    DiscardSequences,
    /// SQL-level DEALLOCATE name / DEALLOCATE ALL (None)
    Deallocate {
        /// The prepared statement, or None for ALL.
        name: Option<String>,
    },
    /// SQL `EXECUTE name` (also inside `EXPLAIN`): under transaction pooling a name the
    /// client prepared with the protocol's Parse is the server's under another name.
    ExecutePrepared,
    /// Statement that ties the session to its server connection for the rest of the session.
    Pin(PinReason),
    /// A statement PostgreSQL refuses while anyone else is connected to database `name`
    /// (SQLSTATE 55006): `DROP DATABASE name`, `CREATE DATABASE ... TEMPLATE name` (template1
    /// when none is named), `ALTER DATABASE name RENAME TO ...` and `ALTER DATABASE name SET
    /// TABLESPACE ...`. The proxy first closes its own idle pooled connections to `name`.
    ExclusiveDatabase {
        /// The database, as the parser folded it.
        name: String,
    },
}

/// Why a session must stay on its server connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PinReason {
    /// LISTEN: notifications arrive on that connection.
    Listen,
    /// CREATE TEMP TABLE/VIEW/SEQUENCE, objects in pg_temp.
    TempObject,
    /// SQL-level PREPARE: the statement exists on that connection only.
    SqlPrepare,
    /// pg_advisory_lock & co. (session-level, not the _xact_ variants).
    SessionAdvisoryLock,
    /// DECLARE ... WITH HOLD: the cursor outlives the transaction.
    HoldCursor,
    /// LOAD: a library loaded into that backend.
    Load,
    /// Other session state we cannot replay (set_config(..., false)).
    Other,
}

/// Cache effectiveness counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassifierStats {
    /// Classifications answered from the cache.
    pub hits: u64,
    /// Classifications that needed the parser.
    pub misses: u64,
}

/// How long an unknown function name stays quiet after it asked for a refresh: a misspelt
/// name must not reload the table on every call, while a function created behind the proxy's
/// back becomes known after at most one more reload.
const UNKNOWN_RETRY: Duration = Duration::from_secs(30);

/// Classifies statements for routing; one per proxy, shared by all sessions.
#[derive(Debug)]
pub struct Classifier {
    /// Function volatility, shared with the task that refreshes it.
    functions: Arc<FunctionTable>,
    /// Fingerprint → route.
    cache: RouteCache,
    /// Keyed hashing of statements.
    fingerprinter: Fingerprinter,
    /// Set when the function table should be reloaded.
    refresh_requested: AtomicBool,
    /// Unknown names → when they last asked for a refresh.
    unknown: Mutex<HashMap<String, Instant>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Classifier {
    /// A classifier using `functions` for volatility, caching up to `cache_capacity` routes.
    pub fn new(functions: Arc<FunctionTable>, cache_capacity: usize) -> Classifier {
        Classifier {
            functions,
            cache: RouteCache::new(cache_capacity),
            fingerprinter: Fingerprinter::new(),
            refresh_requested: AtomicBool::new(false),
            unknown: Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Classifies one simple-Query string or one Parse'd statement text. Cheap on a cache hit.
    /// Never panics; unparsable → Route::Write with no effects.
    ///
    /// Takes bytes: the cache is consulted before the text is checked to be UTF-8, so a hit
    /// costs no validation pass. Text that is not UTF-8 cannot be parsed and goes to the
    /// primary (uncached); the server rejects it there with its own error.
    pub fn classify(&self, sql: &(impl AsRef<[u8]> + ?Sized)) -> Classification {
        let sql = sql.as_ref();
        let fingerprint = self.fingerprinter.fingerprint(sql);
        self.classify_fingerprinted(sql, fingerprint, self.functions.generation()).0
    }

    /// [`Classifier::classify`] for a session, which first asks the session's `memo` whether
    /// the statement repeats a recent one with other literal values (then the lexer, the
    /// cache and the parser are all skipped), and remembers cacheable verdicts there.
    pub fn classify_memo(&self, sql: &[u8], memo: &mut StatementMemo) -> Classification {
        let generation = self.functions.generation();
        if let Some(route) = memo.lookup(sql, generation) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Classification { route, effects: Vec::new() };
        }
        let mut literals = memo.take_scratch();
        let fingerprint = self.fingerprinter.fingerprint_recording(sql, &mut literals);
        let (class, cacheable) = self.classify_fingerprinted(sql, fingerprint, generation);
        if cacheable {
            memo.remember(sql, literals, class.route, generation);
        } else {
            memo.give_back(literals);
        }
        class
    }

    /// The verdict for `sql` with `fingerprint`, and whether it may be cached.
    fn classify_fingerprinted(&self, sql: &[u8], fingerprint: Fingerprint, generation: u64) -> (Classification, bool) {
        if let Some(route) = self.cache.get(fingerprint.hash, generation) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return (Classification { route, effects: Vec::new() }, true);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let Ok(sql) = std::str::from_utf8(sql) else {
            return (Classification { route: Route::Write, effects: Vec::new() }, false);
        };
        let analysis = analyze::analyze(sql, &self.functions.view());
        let route = if fingerprint.hint { Route::Write } else { analysis.route };
        if analysis.functions_changed {
            self.refresh_requested.store(true, Ordering::Release);
        }
        if !analysis.unknown_functions.is_empty() {
            self.note_unknown(analysis.unknown_functions);
        }
        if analysis.cacheable {
            self.cache.put(fingerprint.hash, route, generation);
        }
        tracing::trace!(?route, effects = analysis.effects.len(), "classified statement");
        (Classification { route, effects: analysis.effects }, analysis.cacheable)
    }

    /// Requests a table refresh for unknown function names that have not asked recently.
    fn note_unknown(&self, names: Vec<String>) {
        let now = Instant::now();
        let mut unknown = self.unknown.lock().unwrap_or_else(|p| p.into_inner());
        if unknown.len() >= MAX_REMEMBERED_UNKNOWN {
            unknown.clear();
        }
        let mut fresh = false;
        for name in names {
            match unknown.entry(name) {
                Entry::Vacant(slot) => {
                    slot.insert(now);
                    fresh = true;
                }
                Entry::Occupied(mut slot) => {
                    if now.duration_since(*slot.get()) >= UNKNOWN_RETRY {
                        slot.insert(now);
                        fresh = true;
                    }
                }
            }
        }
        drop(unknown);
        if fresh {
            self.refresh_requested.store(true, Ordering::Release);
        }
    }

    /// True once if a statement named a function the table does not know (or created or
    /// altered a function); the proxy then reloads the table.
    pub fn take_refresh_request(&self) -> bool {
        self.refresh_requested.swap(false, Ordering::AcqRel)
    }

    /// The function table this classifier consults.
    pub fn functions(&self) -> &Arc<FunctionTable> {
        &self.functions
    }

    /// Cache hit/miss counters since creation.
    pub fn stats(&self) -> ClassifierStats {
        ClassifierStats { hits: self.hits.load(Ordering::Relaxed), misses: self.misses.load(Ordering::Relaxed) }
    }

    /// Number of cached routes.
    pub fn cached_routes(&self) -> usize {
        self.cache.len()
    }
}
