//! Table-driven tests of the classifier's rules, effects and cache.

use std::sync::Arc;

use super::*;

fn table() -> FunctionTable {
    use Volatility::*;
    let mut table = FunctionTable::from_functions([
        ("pg_catalog", "now", Stable),
        ("pg_catalog", "random", Volatile),
        ("pg_catalog", "lower", Immutable),
        ("pg_catalog", "upper", Immutable),
        ("pg_catalog", "count", Immutable),
        ("pg_catalog", "nextval", Volatile),
        ("pg_catalog", "setval", Volatile),
        ("pg_catalog", "pg_advisory_lock", Volatile),
        ("pg_catalog", "pg_advisory_lock_shared", Volatile),
        ("pg_catalog", "pg_try_advisory_lock", Volatile),
        ("pg_catalog", "pg_try_advisory_lock_shared", Volatile),
        ("pg_catalog", "pg_advisory_xact_lock", Volatile),
        ("pg_catalog", "generate_series", Immutable),
        ("pg_catalog", "set_config", Volatile),
        ("pg_catalog", "current_setting", Stable),
        ("pg_catalog", "extract", Stable),
        ("public", "my_stable", Stable),
        ("public", "my_volatile", Volatile),
        ("public", "my_immutable", Immutable),
    ]);
    table.insert_operator("=", Immutable);
    table.insert_operator("+", Immutable);
    table.insert_operator("@@@", Volatile);
    table
}

fn classifier() -> Classifier {
    Classifier::new(Arc::new(table()), 1024)
}

const READS: &[&str] = &[
    "SELECT 1",
    "select * from t where id = $1",
    "SELECT now(), lower('X'), upper(name) FROM users",
    "SELECT count(*) FROM t GROUP BY a HAVING count(*) > 1",
    "VALUES (1), (2)",
    "TABLE t",
    "SHOW search_path",
    "SHOW ALL",
    "EXPLAIN SELECT * FROM t",
    "EXPLAIN INSERT INTO t VALUES (1)",
    "EXPLAIN (ANALYZE false) DELETE FROM t",
    "EXPLAIN ANALYZE SELECT * FROM t",
    "EXPLAIN (ANALYZE, VERBOSE, BUFFERS) SELECT now()",
    "EXPLAIN SELECT nextval('s')",
    "COPY t TO STDOUT",
    "COPY (SELECT 1) TO STDOUT WITH (FORMAT csv)",
    "BEGIN READ ONLY",
    "START TRANSACTION READ ONLY",
    "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE",
    "BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY",
    "BEGIN READ ONLY; SELECT 1;",
    "WITH x AS (SELECT 1) SELECT * FROM x",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r",
    "SELECT * FROM generate_series(1, 10) AS g(i)",
    "SELECT pg_catalog.now()",
    "SELECT public.my_stable(), my_immutable(1)",
    "SELECT CASE WHEN a THEN my_stable() ELSE 1 END FROM t",
    "SELECT extract(year FROM now())",
    "SELECT 1 UNION SELECT 2 EXCEPT SELECT 3",
    "SELECT 'é' AS ünïcode, \"Ünï\" FROM \"日本\"",
    "SELECT current_setting('work_mem')",
    "SELECT a = b, a + 1 FROM t",
    "SELECT * FROM t WHERE x IN (SELECT y FROM u WHERE u.z = t.z)",
    "SELECT CURRENT_TIMESTAMP, CURRENT_USER, coalesce(a, 1), greatest(1, 2)",
    "SELECT $$DELETE FROM t$$, E'\\' INSERT', 'UPDATE t'",
    "SELECT 1 -- DELETE FROM t",
    "",
    ";",
    "/* only a comment */",
    "SELECT * FROM t TABLESAMPLE SYSTEM (10)",
    "SELECT x FROM t WHERE a LIKE 'x%' AND b BETWEEN 1 AND 2 AND c IS DISTINCT FROM d",
    "SELECT xmlelement(name foo), lower(x) COLLATE \"C\" FROM t",
    "SELECT * FROM ROWS FROM (generate_series(1, 2))",
    "SELECT a::text FROM t GROUP BY ROLLUP (a)",
    "SELECT * FROM t, LATERAL (SELECT now()) r",
    "SELECT JSON_OBJECT('a': 1), t.a IS JSON FROM t",
    "FETCH 10 FROM c",
    "CLOSE c",
    "DECLARE c CURSOR FOR SELECT * FROM t",
];

const WRITES: &[&str] = &[
    "INSERT INTO t VALUES (1)",
    "INSERT INTO t SELECT * FROM u",
    "UPDATE t SET a = 1",
    "DELETE FROM t",
    "MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE",
    "CREATE TABLE t (a int)",
    "ALTER TABLE t ADD b int",
    "DROP TABLE t",
    "TRUNCATE t",
    "CREATE INDEX ON t (a)",
    "CREATE VIEW v AS SELECT 1",
    "CREATE MATERIALIZED VIEW mv AS SELECT 1",
    "REFRESH MATERIALIZED VIEW mv",
    "GRANT SELECT ON t TO bob",
    "COPY t FROM STDIN",
    "COPY t TO '/tmp/x'",
    "COPY t TO PROGRAM 'cat'",
    "COPY (DELETE FROM t RETURNING *) TO STDOUT",
    "CALL p()",
    "LOCK TABLE t",
    "VACUUM t",
    "ANALYZE t",
    "CHECKPOINT",
    "BEGIN",
    "START TRANSACTION",
    "BEGIN READ WRITE",
    "BEGIN ISOLATION LEVEL SERIALIZABLE",
    "COMMIT",
    "ROLLBACK",
    "END",
    "SAVEPOINT a",
    "RELEASE a",
    "ROLLBACK TO a",
    "PREPARE TRANSACTION 'x'",
    "COMMIT PREPARED 'x'",
    "SELECT * INTO new_t FROM t",
    "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
    "WITH i AS (INSERT INTO t VALUES (1) RETURNING id) SELECT id FROM i",
    "WITH u AS (UPDATE t SET a = 1 RETURNING *) SELECT 1",
    "WITH r AS (SELECT 1), m AS (MERGE INTO t USING u ON true WHEN MATCHED THEN DELETE) SELECT 1",
    "SELECT * FROM (WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d) s",
    "SELECT * FROM t FOR UPDATE",
    "SELECT * FROM t FOR NO KEY UPDATE",
    "SELECT * FROM t FOR SHARE",
    "SELECT * FROM t FOR KEY SHARE",
    "SELECT * FROM t FOR UPDATE SKIP LOCKED",
    "SELECT * FROM (SELECT * FROM t FOR UPDATE) s",
    "SELECT nextval('s')",
    "SELECT setval('s', 1)",
    "SELECT random()",
    "SELECT my_volatile()",
    "SELECT public.my_volatile()",
    "SELECT other.my_stable()",
    "SELECT unknown_fn()",
    "SELECT pg_advisory_xact_lock(1)",
    "SELECT a @@@ b FROM t",
    "SELECT CASE WHEN x THEN random() END",
    "SELECT coalesce(a, nextval('s')) FROM t",
    "SELECT * FROM t WHERE a = (SELECT random())",
    "SELECT * FROM t ORDER BY random() LIMIT 1",
    "SELECT count(*) FILTER (WHERE random() > 0.5) FROM t",
    "SELECT ARRAY[random()]",
    "SELECT ROW(1, my_volatile())",
    "SELECT * FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.a = my_volatile())",
    "SELECT * FROM t, LATERAL (SELECT random()) r",
    "SELECT a, rank() OVER w FROM t WINDOW w AS (ORDER BY random())",
    "INSERT INTO t DEFAULT VALUES",
    "SELECT array_agg(x ORDER BY random()) FROM t",
    "SELECT (SELECT nextval('s'))",
    "SELECT * FROM t WHERE a = ANY (SELECT my_volatile())",
    "SELECT JSON_OBJECT('a': random())",
    "SELECT CAST(random() AS int)",
    "SELECT * FROM t TABLESAMPLE SYSTEM (10) REPEATABLE (random())",
    "SELECT * FROM XMLTABLE('/r' PASSING my_volatile() COLUMNS a int)",
    "SELECT a FROM t WHERE a IN (1, my_volatile())",
    "SELECT GREATEST(1, random())",
    "VALUES (nextval('s'))",
    "EXPLAIN ANALYZE INSERT INTO t VALUES (1)",
    "EXPLAIN (ANALYZE, BUFFERS) DELETE FROM t",
    "EXPLAIN (ANALYZE true) UPDATE t SET a = 1",
    "EXPLAIN ANALYZE SELECT nextval('s')",
    "EXPLAIN ANALYZE SELECT * FROM t FOR UPDATE",
    "/* tandem:primary */ SELECT 1",
    "SELECT 1 /* TANDEM:PRIMARY */",
    "SELECT 1 -- tandem:primary",
    "SELECT /*+ Tandem:Primary */ * FROM t",
    "UNLISTEN x",
    "NOTIFY x",
    "SET TRANSACTION READ ONLY",
    "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SET LOCAL x = 1",
    "SELECT 1; INSERT INTO t VALUES (1)",
    "BEGIN READ ONLY; SELECT 1; COMMIT",
    "SELECT set_config('a', 'b', true)",
    "CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql",
    "DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE",
    "REINDEX TABLE t",
    "CLUSTER t",
    "SECURITY LABEL ON TABLE t IS 'x'",
    "IMPORT FOREIGN SCHEMA s FROM SERVER srv INTO public",
    // Unparsable or unknown to the grammar.
    "SELEC 1",
    "SELECT * FROM",
    "SELECT 'unterminated",
    "SELECT ((((",
    "1",
    "é",
    "💥💥 ☃",
    "SELECT 1 \u{0} ; DELETE FROM t",
    "\u{feff}SELECT 1",
];

#[test]
fn reads_route_to_replicas() {
    let classifier = classifier();
    for sql in READS {
        let classification = classifier.classify(sql);
        assert_eq!(classification, Classification { route: Route::Read, effects: vec![] }, "{sql:?}");
    }
}

#[test]
fn writes_route_to_the_primary_without_effects() {
    let classifier = classifier();
    for sql in WRITES {
        let classification = classifier.classify(sql);
        assert_eq!(classification, Classification { route: Route::Write, effects: vec![] }, "{sql:?}");
    }
}

#[test]
fn text_that_is_not_utf8_goes_to_the_primary_uncached() {
    let classifier = classifier();
    let bad: &[u8] = b"SELECT '\xff\xfe' FROM t";
    for _ in 0..2 {
        assert_eq!(classifier.classify(bad), Classification { route: Route::Write, effects: vec![] });
    }
    assert_eq!(classifier.cached_routes(), 0);
    // The same statement as valid text is a read and is cached as usual.
    assert_eq!(classifier.classify("SELECT 'ok' FROM t").route, Route::Read);
    assert_eq!(classifier.cached_routes(), 1);
}

fn set(name: &str, statement: &str) -> SessionEffect {
    SessionEffect::Set { name: name.into(), statement: statement.into() }
}

fn reset(name: &str) -> SessionEffect {
    SessionEffect::Reset { name: name.into() }
}

#[test]
fn session_effects_are_reported_with_exact_text() {
    use PinReason::*;
    use SessionEffect::*;
    let cases: Vec<(&str, Vec<SessionEffect>)> = vec![
        ("SET search_path TO a, b", vec![set("search_path", "SET search_path TO a, b")]),
        ("set TIME ZONE 'UTC'", vec![set("timezone", "set TIME ZONE 'UTC'")]),
        ("SET NAMES 'UTF8'", vec![set("client_encoding", "SET NAMES 'UTF8'")]),
        ("SET ROLE admin", vec![set("role", "SET ROLE admin")]),
        ("SET SESSION AUTHORIZATION bob", vec![set("session_authorization", "SET SESSION AUTHORIZATION bob")]),
        ("SET SESSION statement_timeout = 5", vec![set("statement_timeout", "SET SESSION statement_timeout = 5")]),
        ("SET Statement_Timeout = '5s'", vec![set("statement_timeout", "SET Statement_Timeout = '5s'")]),
        ("  SET application_name = 'ünï';  ", vec![set("application_name", "SET application_name = 'ünï'")]),
        ("SET work_mem TO DEFAULT", vec![reset("work_mem")]),
        ("RESET work_mem", vec![reset("work_mem")]),
        ("RESET ROLE", vec![reset("role")]),
        ("RESET ALL", vec![ResetAll]),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            vec![set("default_transaction_read_only", "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")],
        ),
        ("DISCARD ALL", vec![DiscardAll]),
        ("DISCARD PLANS", vec![DiscardPlans]),
        ("DISCARD TEMP", vec![DiscardTemp]),
        ("DISCARD SEQUENCES", vec![DiscardSequences]),
        ("DEALLOCATE p", vec![Deallocate { name: Some("p".into()) }]),
        ("DEALLOCATE PREPARE q", vec![Deallocate { name: Some("q".into()) }]),
        ("DEALLOCATE ALL", vec![Deallocate { name: None }]),
        ("DROP DATABASE testdb", vec![ExclusiveDatabase { name: "testdb".into() }]),
        ("/* c */ drop database if exists MyDb;", vec![ExclusiveDatabase { name: "mydb".into() }]),
        ("DROP DATABASE \"My\"\"Db\" WITH (FORCE)", vec![ExclusiveDatabase { name: "My\"Db".into() }]),
        ("CREATE DATABASE copy TEMPLATE Tpl", vec![ExclusiveDatabase { name: "tpl".into() }]),
        ("CREATE DATABASE copy WITH TEMPLATE = 'Tpl' OWNER x", vec![ExclusiveDatabase { name: "Tpl".into() }]),
        ("CREATE DATABASE copy", vec![ExclusiveDatabase { name: "template1".into() }]),
        ("CREATE DATABASE copy TEMPLATE DEFAULT", vec![ExclusiveDatabase { name: "template1".into() }]),
        ("ALTER DATABASE old RENAME TO new", vec![ExclusiveDatabase { name: "old".into() }]),
        ("ALTER DATABASE d SET TABLESPACE t", vec![ExclusiveDatabase { name: "d".into() }]),
        ("ALTER DATABASE d SET work_mem = '1MB'", vec![]),
        ("ALTER TABLE t RENAME TO u", vec![]),
        ("LISTEN ch", vec![Pin(Listen)]),
        ("CREATE TEMP TABLE x (a int)", vec![Pin(TempObject)]),
        ("CREATE TEMPORARY VIEW v AS SELECT 1", vec![Pin(TempObject)]),
        ("CREATE TEMP SEQUENCE s", vec![Pin(TempObject)]),
        ("CREATE TABLE pg_temp.x (a int)", vec![Pin(TempObject)]),
        ("CREATE TEMP TABLE x AS SELECT 1", vec![Pin(TempObject)]),
        ("SELECT 1 INTO TEMP x", vec![Pin(TempObject)]),
        ("SELECT * FROM pg_temp.x", vec![Pin(TempObject)]),
        ("CREATE FUNCTION pg_temp.f() RETURNS int AS 'select 1' LANGUAGE sql", vec![Pin(TempObject)]),
        // Objects named by a qualified name list (tokio-postgres: custom_range, custom_domain, enum_).
        ("CREATE TYPE pg_temp.fr AS RANGE (subtype = float8)", vec![Pin(TempObject)]),
        ("CREATE TYPE pg_temp.e AS ENUM ('a')", vec![Pin(TempObject)]),
        ("CREATE DOMAIN pg_temp.d AS int", vec![Pin(TempObject)]),
        ("CREATE TYPE pg_temp.c AS (x int)", vec![Pin(TempObject)]),
        ("CREATE TYPE pg_temp.shell", vec![Pin(TempObject)]),
        ("CREATE AGGREGATE pg_temp.a (int) (sfunc = int4pl, stype = int)", vec![Pin(TempObject)]),
        ("CREATE OPERATOR pg_temp.=== (leftarg = int, rightarg = int, function = int4eq)", vec![Pin(TempObject)]),
        ("CREATE COLLATION pg_temp.coll (locale = 'C')", vec![Pin(TempObject)]),
        ("ALTER TYPE e SET SCHEMA pg_temp", vec![Pin(TempObject)]),
        ("CREATE TYPE public.e AS ENUM ('a')", vec![]),
        ("CREATE DOMAIN d AS int", vec![]),
        ("PREPARE p AS SELECT 1", vec![Pin(SqlPrepare)]),
        ("SELECT pg_advisory_lock(1)", vec![Pin(SessionAdvisoryLock)]),
        ("SELECT pg_advisory_lock_shared(1)", vec![Pin(SessionAdvisoryLock)]),
        ("SELECT pg_try_advisory_lock(1, 2)", vec![Pin(SessionAdvisoryLock)]),
        ("SELECT pg_try_advisory_lock_shared(1)", vec![Pin(SessionAdvisoryLock)]),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", vec![Pin(HoldCursor)]),
        ("LOAD 'auto_explain'", vec![Pin(Load)]),
        ("SELECT set_config('a', 'b', false)", vec![Pin(Other)]),
        ("SELECT set_config('a', 'b', 't')", vec![Pin(Other)]),
        ("DO $$ BEGIN EXECUTE 'SET ROLE r1'; END $$", vec![Pin(Other)]),
        ("EXECUTE p(1)", vec![ExecutePrepared]),
        ("EXPLAIN (VERBOSE, FORMAT JSON) EXECUTE sqlx_s_1", vec![ExecutePrepared]),
        ("SET a = 1; SET b = 2", vec![set("a", "SET a = 1"), set("b", "SET b = 2")]),
        ("BEGIN; SET LOCAL a = 1; SET b TO 'x; y'; COMMIT", vec![set("b", "SET b TO 'x; y'")]),
        (
            "SELECT 1;\n  /* c */ SET x = 1;",
            // The parser starts a statement at its first token.
            vec![set("x", "SET x = 1")],
        ),
        ("/* tandem:primary */ SET x = 1", vec![set("x", "SET x = 1")]),
        ("LISTEN a; SELECT pg_advisory_lock(1); DISCARD ALL", vec![Pin(Listen), Pin(SessionAdvisoryLock), DiscardAll]),
    ];
    let classifier = classifier();
    for (sql, effects) in cases {
        for _ in 0..2 {
            let classification = classifier.classify(sql);
            assert_eq!(classification, Classification { route: Route::Write, effects: effects.clone() }, "{sql:?}");
        }
    }
    // The words inside a literal are not a statement.
    assert_eq!(classifier.classify("SELECT 'DROP DATABASE x'").effects, vec![]);
}

#[test]
fn cache_hit_returns_the_same_as_a_miss() {
    let classifier = classifier();
    let all: Vec<&str> = READS.iter().chain(WRITES.iter()).copied().collect();
    let first: Vec<Classification> = all.iter().map(|sql| classifier.classify(sql)).collect();
    let misses = classifier.stats().misses;
    let second: Vec<Classification> = all.iter().map(|sql| classifier.classify(sql)).collect();
    assert_eq!(first, second);
    // The second pass parses only what may not be cached (unparsable text, unknown functions,
    // literal-dependent EXPLAIN).
    let uncached = all
        .iter()
        .filter(|sql| {
            let analysis = analyze::analyze(sql, &classifier.functions().view());
            !analysis.cacheable
        })
        .count() as u64;
    assert_eq!(classifier.stats().misses, misses + uncached);
    // Literal-only differences hit the entry of the first statement.
    let hits = classifier.stats().hits;
    assert_eq!(classifier.classify("SELECT 42").route, Route::Read);
    assert_eq!(classifier.classify("select * from t where id = $7").route, Route::Read);
    assert_eq!(classifier.classify("INSERT INTO t VALUES (99)").route, Route::Write);
    assert_eq!(classifier.stats().hits, hits + 3);
}

#[test]
fn hint_and_literals_do_not_leak_through_the_cache() {
    let classifier = classifier();
    assert_eq!(classifier.classify("SELECT 1").route, Route::Read);
    assert_eq!(classifier.classify("/* tandem:primary */ SELECT 1").route, Route::Write);
    assert_eq!(classifier.classify("SELECT 2").route, Route::Read);
    assert_eq!(classifier.classify("/* tandem:primary */ SELECT 3").route, Route::Write);
    // EXPLAIN's ANALYZE option spelled as a literal must not be cached.
    assert_eq!(classifier.classify("EXPLAIN (ANALYZE 'off') DELETE FROM t").route, Route::Read);
    assert_eq!(classifier.classify("EXPLAIN (ANALYZE 'on') DELETE FROM t").route, Route::Write);
    assert_eq!(classifier.classify("EXPLAIN (ANALYZE 0) DELETE FROM t").route, Route::Read);
    assert_eq!(classifier.classify("EXPLAIN (ANALYZE 1) DELETE FROM t").route, Route::Write);
    // Effects are never served from the cache.
    for _ in 0..3 {
        assert_eq!(classifier.classify("SET a = 1").effects.len(), 1);
        assert_eq!(classifier.classify("SELECT pg_advisory_lock(7)").effects.len(), 1);
    }
    // set_config's is_local as a literal keeps the pin.
    assert_eq!(classifier.classify("SELECT set_config('a', 'b', true)").effects, vec![]);
    assert_eq!(
        classifier.classify("SELECT set_config('a', 'b', false)").effects,
        vec![SessionEffect::Pin(PinReason::Other)]
    );
}

#[test]
fn unknown_functions_request_a_refresh_and_are_not_cached() {
    let functions = Arc::new(table());
    let classifier = Classifier::new(Arc::clone(&functions), 64);
    assert!(!classifier.take_refresh_request());
    assert_eq!(classifier.classify("SELECT fresh_fn(1)").route, Route::Write);
    assert!(classifier.take_refresh_request());
    assert!(!classifier.take_refresh_request(), "true only once");
    // The same unknown name does not ask again right away.
    assert_eq!(classifier.classify("SELECT fresh_fn(2)").route, Route::Write);
    assert!(!classifier.take_refresh_request());
    assert_eq!(classifier.stats().hits, 0, "unknown-function verdicts are not cached");
    // After the refresh the function is known and the statement reads.
    functions.replace(FunctionTable::from_functions([("public", "fresh_fn", Volatility::Stable)]));
    assert_eq!(classifier.classify("SELECT fresh_fn(3)").route, Route::Read);
    // CREATE FUNCTION also asks for a refresh.
    classifier.classify("CREATE OR REPLACE FUNCTION g() RETURNS int AS 'select 1' LANGUAGE sql");
    assert!(classifier.take_refresh_request());
}

#[test]
fn a_replaced_table_invalidates_cached_routes() {
    let functions = Arc::new(FunctionTable::from_functions([("public", "f", Volatility::Stable)]));
    let classifier = Classifier::new(Arc::clone(&functions), 64);
    assert_eq!(classifier.classify("SELECT f()").route, Route::Read);
    assert_eq!(classifier.classify("SELECT f()").route, Route::Read);
    assert_eq!(classifier.stats().hits, 1);
    functions.replace(FunctionTable::from_functions([("public", "f", Volatility::Volatile)]));
    assert_eq!(classifier.classify("SELECT f()").route, Route::Write);
}

#[test]
fn empty_table_makes_every_function_call_a_write() {
    let classifier = Classifier::new(Arc::new(FunctionTable::empty()), 16);
    assert_eq!(classifier.classify("SELECT now()").route, Route::Write);
    assert_eq!(classifier.classify("SELECT 1 + 1").route, Route::Read);
}

#[test]
fn concurrent_classification_is_consistent() {
    let classifier = Arc::new(classifier());
    let threads: Vec<_> = (0..4)
        .map(|n| {
            let classifier = Arc::clone(&classifier);
            std::thread::spawn(move || {
                for i in 0..200 {
                    let read = classifier.classify(&format!("SELECT {i}, {n} FROM t"));
                    let write = classifier.classify(&format!("UPDATE t SET a = {i}"));
                    if read.route != Route::Read || write.route != Route::Write {
                        return false;
                    }
                }
                true
            })
        })
        .collect();
    for thread in threads {
        assert!(thread.join().unwrap_or(false));
    }
    assert!(classifier.cached_routes() <= 2);
}

#[test]
fn garbage_never_panics() {
    let classifier = Classifier::new(Arc::new(table()), 64);
    let alphabet: Vec<char> = "'\"$-/*eEbBxXuU&0123456789._ \n\\;:()abcSELECTé日💥\u{0}".chars().collect();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..300 {
        let len = (state % 30) as usize;
        let mut text = String::new();
        for _ in 0..len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            text.push(alphabet[(state % alphabet.len() as u64) as usize]);
        }
        let classification = classifier.classify(&text);
        if classification.route == Route::Read {
            assert!(classification.effects.is_empty(), "{text:?}");
        }
    }
}

#[test]
fn deep_and_long_statements_are_handled() {
    let classifier = classifier();
    // Redundant parentheses leave no nodes behind.
    let parens = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
    assert_eq!(classifier.classify(&parens).route, Route::Read);
    // Thousands of nested nodes exceed the tree decoder's depth limit: primary, no crash.
    let deep = format!("SELECT {}1", "1 + ".repeat(5000));
    assert_eq!(classifier.classify(&deep).route, Route::Write);
    let calls = format!("SELECT {}'x'{}", "lower(".repeat(3000), ")".repeat(3000));
    assert_eq!(classifier.classify(&calls).route, Route::Write);
    let nested = format!("SELECT {}'x'{}", "lower(".repeat(20), ")".repeat(20));
    assert_eq!(classifier.classify(&nested).route, Route::Read);
    let rows: Vec<String> = (0..5000).map(|i| format!("({i}, 'row {i}')")).collect();
    let insert = format!("INSERT INTO t VALUES {}", rows.join(", "));
    assert_eq!(classifier.classify(&insert).route, Route::Write);
    let select = format!("SELECT * FROM t WHERE id IN ({})", vec!["1"; 10_000].join(","));
    assert_eq!(classifier.classify(&select).route, Route::Read);
}

#[test]
#[ignore = "debug helper: prints the serde form of a statement"]
fn print_tree() {
    let sql = std::env::var("SQL").unwrap_or_else(|_| "SELECT 1".into());
    println!("{:#}", analyze::tree_of(&sql).unwrap_or_default());
}

#[test]
#[ignore = "timing helper: cargo test -p tandem-proxy --lib classify::tests::timing -- --ignored --nocapture"]
fn timing() {
    let classifier = classifier();
    let sql = "SELECT u.id, u.name, lower(u.email) FROM users u JOIN orders o ON o.user_id = u.id \
               WHERE u.id = $1 AND o.created_at > now() - interval '1 day' ORDER BY o.id LIMIT 10";
    let rounds = 20_000u32;
    let started = std::time::Instant::now();
    for _ in 0..rounds {
        assert_eq!(classifier.classify(sql).route, Route::Read);
    }
    let hit = started.elapsed() / rounds;
    let started = std::time::Instant::now();
    for i in 0..200 {
        let sql = format!("SELECT a{i}, lower(b) FROM t{i} WHERE c = $1 AND d > now()");
        assert_eq!(classifier.classify(&sql).route, Route::Read);
    }
    let miss = started.elapsed() / 200;
    println!("hit: {hit:?} per statement, miss: {miss:?} per statement");
}

#[test]
fn classifier_is_shareable_across_tasks() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Classifier>();
    assert_send_sync::<FunctionTable>();
}
