//! A session's statement memo: the classifier's shortcut for a statement that repeats one the
//! session sent recently, with other literal values.
//!
//! Data flow: session → [`super::Classifier::classify_memo`] → [`StatementMemo::lookup`]; on a
//! miss the fingerprint lexer runs (recording where the literals are, see
//! [`super::fingerprint::LiteralSpan`]), then the route cache or the parser decides, and the
//! verdict is remembered here.
//!
//! Why: the fingerprint lexer was the largest single cost of a simple query on the proxy's
//! path (about 1.9k instructions for pgbench's 56-byte `SELECT`). Clients that inline values
//! into SQL (pgbench `-M simple`, drivers and ORMs without server-side prepare) mostly repeat a
//! few shapes with new numbers and strings; comparing with the remembered text is a few
//! `memcmp`s and a scan over the literals.
//!
//! Why the shortcut is exact: the new text must equal the remembered one byte for byte outside
//! the recorded literals, and each literal must be the same kind of token in the new text: a
//! non-empty run of ASCII digits where the old one was (the byte after it, shared, cannot
//! continue a number), or a `'...'` string ending by the same quoting rule the lexer uses. The
//! lexer then produces the same token stream for both texts (it keeps no state across tokens
//! but its position, and literal contents are not part of the stream), so both have the same
//! fingerprint, and the remembered verdict is the one the cache would give.

use super::fingerprint::{LiteralKind, LiteralSpan};
use super::Route;

/// Statements remembered per session: enough for a transaction of several statements that
/// a client repeats (pgbench's TPC-B sends 7).
const ENTRIES: usize = 8;
/// Longer statements are not remembered (bounds a session's memo to a few kB).
const MAX_TEXT: usize = 512;
/// Statements with more literals than this are not remembered.
const MAX_LITERALS: usize = 32;

/// One remembered statement and its verdict.
#[derive(Debug)]
struct Entry {
    text: Vec<u8>,
    literals: Vec<LiteralSpan>,
    route: Route,
    /// Function-table generation the verdict was computed under.
    generation: u64,
}

/// Recently classified statements of one session (empty, and unallocated, until the session
/// sends a statement).
#[derive(Debug, Default)]
pub struct StatementMemo {
    entries: Vec<Entry>,
    /// The entry the next new statement replaces, once `entries` is full.
    next: usize,
    /// Reused buffer for the lexer's literal positions.
    scratch: Vec<LiteralSpan>,
}

impl StatementMemo {
    /// The remembered route of a statement with `sql`'s shape, if its verdict still holds
    /// under function-table `generation`.
    pub(super) fn lookup(&self, sql: &[u8], generation: u64) -> Option<Route> {
        self.entries
            .iter()
            .find(|e| e.generation == generation && same_shape(&e.text, &e.literals, sql))
            .map(|e| e.route)
    }

    /// The buffer the lexer records literal positions into, handed back by
    /// [`StatementMemo::remember`] or [`StatementMemo::give_back`].
    pub(super) fn take_scratch(&mut self) -> Vec<LiteralSpan> {
        std::mem::take(&mut self.scratch)
    }

    /// Returns the scratch buffer without remembering anything.
    pub(super) fn give_back(&mut self, scratch: Vec<LiteralSpan>) {
        self.scratch = scratch;
    }

    /// Remembers `sql` (with its literals at `literals`) and its cacheable verdict.
    pub(super) fn remember(&mut self, sql: &[u8], mut literals: Vec<LiteralSpan>, route: Route, generation: u64) {
        if sql.len() > MAX_TEXT || literals.len() > MAX_LITERALS {
            self.scratch = literals;
            return;
        }
        if self.entries.len() < ENTRIES {
            self.entries.push(Entry { text: Vec::new(), literals: Vec::new(), route: Route::Write, generation: 0 });
            self.next = self.entries.len() - 1;
        }
        let Some(entry) = self.entries.get_mut(self.next) else { return };
        self.next = (self.next + 1) % ENTRIES;
        entry.text.clear();
        entry.text.extend_from_slice(sql);
        std::mem::swap(&mut entry.literals, &mut literals);
        entry.route = route;
        entry.generation = generation;
        literals.clear();
        self.scratch = literals;
    }
}

/// Whether `new` is `old` with other values in the literals at `literals` (see the module
/// documentation for why that means the same fingerprint).
fn same_shape(old: &[u8], literals: &[LiteralSpan], new: &[u8]) -> bool {
    let mut old_pos = 0usize;
    let mut new_pos = 0usize;
    for lit in literals {
        let (start, end) = (lit.start as usize, lit.end as usize);
        let Some(between) = old.get(old_pos..start) else { return false };
        if new.get(new_pos..new_pos + between.len()) != Some(between) {
            return false;
        }
        new_pos += between.len();
        let rest = new.get(new_pos..).unwrap_or_default();
        let len = match lit.kind {
            LiteralKind::Digits => rest.iter().take_while(|b| b.is_ascii_digit()).count(),
            LiteralKind::String => string_len(rest),
        };
        if len == 0 {
            return false;
        }
        new_pos += len;
        old_pos = end;
    }
    old.get(old_pos..) == new.get(new_pos..)
}

/// Length of the `'...'` string token at the start of `text` (0 if it does not start with a
/// quote), with the lexer's rule: `''` is a quote inside the string, an unterminated string
/// runs to the end.
fn string_len(text: &[u8]) -> usize {
    if text.first() != Some(&b'\'') {
        return 0;
    }
    let mut i = 1;
    while let Some(q) = text.get(i..).and_then(|rest| memchr::memchr(b'\'', rest)) {
        let quote = i + q;
        if text.get(quote + 1) == Some(&b'\'') {
            i = quote + 2;
        } else {
            return quote + 1;
        }
    }
    text.len()
}

#[cfg(test)]
mod tests {
    use super::super::fingerprint::Fingerprinter;
    use super::*;

    /// Remembers `old`, then checks that the memo's answer for `new` agrees with comparing
    /// fingerprints: a hit only if they are equal.
    fn check(old: &str, new: &str, expect_hit: bool) {
        let f = Fingerprinter::new();
        let mut memo = StatementMemo::default();
        let mut spans = memo.take_scratch();
        f.fingerprint_recording(old.as_bytes(), &mut spans);
        memo.remember(old.as_bytes(), spans, Route::Read, 7);
        let hit = memo.lookup(new.as_bytes(), 7) == Some(Route::Read);
        assert_eq!(hit, expect_hit, "{old:?} then {new:?}");
        if hit {
            assert_eq!(f.fingerprint(old), f.fingerprint(new), "{old:?} then {new:?}");
        }
        assert_eq!(memo.lookup(old.as_bytes(), 8), None, "another function-table generation");
    }

    #[test]
    fn other_values_of_the_same_shape_hit() {
        for (old, new) in [
            (
                "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
                "SELECT abalance FROM pgbench_accounts WHERE aid = 7;",
            ),
            ("SELECT 1", "SELECT 1"),
            ("SELECT 1", "SELECT 900"),
            ("UPDATE t SET a = a + 5 WHERE id = 9", "UPDATE t SET a = a + 17 WHERE id = 123"),
            ("SELECT 'a' AS x", "SELECT 'a''' AS x"),
            ("SELECT * FROM t WHERE s = 'abc' AND n = 4", "SELECT * FROM t WHERE s = 'it''s' AND n = 55"),
            ("SELECT 'x'", "SELECT ''"),
            ("SELECT 'unterminated", "SELECT 'also unterminated"),
            ("SELECT 1, 2, 3", "SELECT 10, 20, 30"),
            ("BEGIN;", "BEGIN;"),
        ] {
            check(old, new, true);
        }
    }

    #[test]
    fn anything_that_could_lex_differently_misses() {
        for (old, new) in [
            ("SELECT 1", "SELECT 1.5"),
            ("SELECT 1", "SELECT 1e5"),
            ("SELECT 1", "SELECT a"),
            ("SELECT 5", "SELECT -5"),
            ("SELECT 1", "SELECT 1 "),
            ("SELECT 1", "SELECT '1'"),
            ("SELECT 'a'", "SELECT 'a' || 'b'"),
            ("SELECT 'a'", "SELECT 1"),
            ("SELECT 1 FROM t", "SELECT 1 FROM u"),
            ("SELECT \"1\"()", "SELECT \"2\"()"),
            ("SELECT $1", "SELECT $2"),
            ("SELECT 1.5", "SELECT 1.7"),
            ("SELECT 10x", "SELECT 0x1"),
            ("SELECT 1 /* tandem:primary */", "SELECT 1 /* tandem:secondary */"),
            ("SELECT E'a'", "SELECT E'\\''"),
            ("SELECT 5", "SELECT "),
        ] {
            check(old, new, false);
        }
    }

    /// Random edits of statements with literals: whenever the memo says "same shape", the
    /// fingerprints must agree (a wrong hit could send a write to a replica).
    #[test]
    fn a_hit_always_means_the_same_fingerprint() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let f = Fingerprinter::new();
        let alphabet = b"0123456789'.eE_x$-+ a\"";
        let bases = [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
            "UPDATE t SET a = 'x''y' || 'z', b = 10 WHERE id = 0",
            "SELECT 1, '2', 3 FROM t WHERE s = ''",
        ];
        let (mut hits, mut misses) = (0, 0);
        for _ in 0..20_000 {
            let old = bases[rng.gen_range(0..bases.len())].as_bytes();
            let mut new = old.to_vec();
            for _ in 0..rng.gen_range(1..4) {
                let at = rng.gen_range(0..=new.len());
                let byte = alphabet[rng.gen_range(0..alphabet.len())];
                match rng.gen_range(0..3) {
                    0 => new.insert(at, byte),
                    1 if at < new.len() => {
                        new.remove(at);
                    }
                    _ if at < new.len() => new[at] = byte,
                    _ => {}
                }
            }
            let mut memo = StatementMemo::default();
            let mut spans = memo.take_scratch();
            f.fingerprint_recording(old, &mut spans);
            memo.remember(old, spans, Route::Read, 0);
            if memo.lookup(&new, 0).is_some() {
                hits += 1;
                let shown = String::from_utf8_lossy(&new);
                assert_eq!(f.fingerprint(old), f.fingerprint(&new), "{shown}");
            } else {
                misses += 1;
            }
        }
        assert!(hits > 500 && misses > 500, "the edits exercise both outcomes ({hits} hits, {misses} misses)");
    }

    #[test]
    fn eviction_and_limits() {
        let f = Fingerprinter::new();
        let mut memo = StatementMemo::default();
        for i in 0..=ENTRIES {
            let sql = format!("SELECT c{i} FROM t WHERE id = 1");
            let mut spans = memo.take_scratch();
            f.fingerprint_recording(sql.as_bytes(), &mut spans);
            memo.remember(sql.as_bytes(), spans, Route::Write, 0);
        }
        assert_eq!(memo.lookup(b"SELECT c0 FROM t WHERE id = 2", 0), None, "the oldest entry went");
        assert_eq!(memo.lookup(b"SELECT c1 FROM t WHERE id = 2", 0), Some(Route::Write));
        assert_eq!(memo.lookup(format!("SELECT c{ENTRIES} FROM t WHERE id = 3").as_bytes(), 0), Some(Route::Write));

        let long = format!("SELECT '{}'", "x".repeat(MAX_TEXT));
        let mut spans = memo.take_scratch();
        f.fingerprint_recording(long.as_bytes(), &mut spans);
        memo.remember(long.as_bytes(), spans, Route::Read, 0);
        assert_eq!(memo.lookup(long.as_bytes(), 0), None, "too long to remember");
    }
}
