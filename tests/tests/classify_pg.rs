//! The classifier against a real PostgreSQL 15: the volatility table loaded from pg_proc, and
//! the classifier's verdicts cross-checked with what the server allows in a read-only
//! transaction (the restriction a hot-standby replica enforces).

use std::sync::Arc;

use tandem_proxy::router::classify::{Classifier, FunctionTable, Route, Volatility};
use tandem_tests::{PgOptions, PgServer};

type TestResult = anyhow::Result<()>;

#[tokio::test]
async fn function_table_loads_from_pg_proc_and_drives_routing() -> TestResult {
    let server = PgServer::start("classify", PgOptions::default())?;
    let client = server.connect("postgres", "postgres").await?;
    client
        .batch_execute(
            "CREATE FUNCTION my_stable_fn() RETURNS int LANGUAGE sql STABLE AS 'SELECT 1';
             CREATE FUNCTION my_volatile_fn() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT 1';
             CREATE FUNCTION mixed(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 1';
             CREATE FUNCTION mixed(text) RETURNS int LANGUAGE sql VOLATILE AS 'SELECT 1';",
        )
        .await?;

    let table = FunctionTable::load(&client).await?;
    assert_eq!(table.volatility(None, "now"), Some(Volatility::Stable));
    assert_eq!(table.volatility(Some("pg_catalog"), "now"), Some(Volatility::Stable));
    assert_eq!(table.volatility(None, "random"), Some(Volatility::Volatile));
    assert_eq!(table.volatility(None, "lower"), Some(Volatility::Immutable));
    assert_eq!(table.volatility(None, "nextval"), Some(Volatility::Volatile));
    assert_eq!(table.volatility(None, "my_stable_fn"), Some(Volatility::Stable));
    assert_eq!(table.volatility(Some("public"), "my_volatile_fn"), Some(Volatility::Volatile));
    assert_eq!(table.volatility(None, "mixed"), Some(Volatility::Volatile));
    assert_eq!(table.volatility(None, "no_such_function"), None);
    assert!(table.len() > 1000, "pg_proc has thousands of functions");

    let functions = Arc::new(table);
    let classifier = Classifier::new(Arc::clone(&functions), 1024);
    assert_eq!(classifier.classify("SELECT my_stable_fn()").route, Route::Read);
    assert_eq!(classifier.classify("SELECT my_volatile_fn()").route, Route::Write);
    assert_eq!(classifier.classify("SELECT now(), lower('A'), 1 + 2").route, Route::Read);
    assert_eq!(classifier.classify("SELECT random()").route, Route::Write);
    assert!(!classifier.take_refresh_request());

    // A function created after the load: unknown → primary and a refresh request; after the
    // refresh it routes by its real volatility.
    client.batch_execute("CREATE FUNCTION late_fn() RETURNS int LANGUAGE sql STABLE AS 'SELECT 2'").await?;
    assert_eq!(classifier.classify("SELECT late_fn()").route, Route::Write);
    assert!(classifier.take_refresh_request());
    functions.replace(FunctionTable::load(&client).await?);
    assert_eq!(classifier.classify("SELECT late_fn()").route, Route::Read);
    Ok(())
}

/// Every statement classified Read must run on a real hot standby; the statements the write
/// rules catch must be refused there.
#[tokio::test]
async fn verdicts_agree_with_a_hot_standby() -> TestResult {
    let primary = PgServer::start("classify-primary", PgOptions::default())?;
    let client = primary.connect("postgres", "postgres").await?;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, a int);
             INSERT INTO t VALUES (1, 1), (2, 2);
             CREATE SEQUENCE s;
             CREATE FUNCTION bump() RETURNS bigint LANGUAGE sql VOLATILE AS $$SELECT nextval('s')$$;
             CREATE FUNCTION peek() RETURNS int LANGUAGE sql STABLE AS 'SELECT count(*)::int FROM t';",
        )
        .await?;
    let classifier = Classifier::new(Arc::new(FunctionTable::load(&client).await?), 1024);
    let standby = primary.start_standby("classify-standby")?;
    let replica = standby.connect("postgres", "postgres").await?;
    let in_recovery: bool = replica.query_one("SELECT pg_is_in_recovery()", &[]).await?.try_get(0)?;
    assert!(in_recovery);

    let reads = [
        "SELECT * FROM t WHERE id = 1",
        "SELECT peek(), now(), lower('X'), upper(a::text) FROM t",
        "WITH x AS (SELECT a FROM t) SELECT sum(a) FROM x",
        "SELECT * FROM generate_series(1, 3) g(i) JOIN t ON t.id = g.i",
        "SHOW work_mem",
        "VALUES (1), (2)",
        "TABLE t",
        "EXPLAIN SELECT * FROM t",
        "EXPLAIN INSERT INTO t VALUES (3, 3)",
        "EXPLAIN ANALYZE SELECT * FROM t",
        "SELECT current_setting('work_mem'), CURRENT_USER",
        "COPY t TO STDOUT",
        "BEGIN READ ONLY; SELECT * FROM t; COMMIT",
    ];
    let writes = [
        "INSERT INTO t VALUES (3, 3)",
        "UPDATE t SET a = 5",
        "DELETE FROM t",
        "SELECT nextval('s')",
        "SELECT setval('s', 10)",
        "SELECT bump()",
        "SELECT * FROM t FOR UPDATE",
        "SELECT * FROM t FOR SHARE",
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        "SELECT * INTO t2 FROM t",
        "EXPLAIN ANALYZE INSERT INTO t VALUES (4, 4)",
        "CREATE TABLE t3 (a int)",
        "CREATE TEMP TABLE t4 (a int)",
        "COPY t FROM STDIN",
        "LISTEN ch",
        "NOTIFY ch",
        "BEGIN READ WRITE",
    ];
    for sql in reads {
        // The multi-statement string ends in COMMIT, which routes to the primary on its own.
        if !sql.contains("COMMIT") {
            assert_eq!(classifier.classify(sql).route, Route::Read, "{sql}");
        }
        if sql.starts_with("COPY") {
            let rows = replica.copy_out(sql).await;
            assert!(rows.is_ok(), "{sql}: {:?}", rows.err());
            continue;
        }
        let outcome = replica.simple_query(sql).await;
        assert!(outcome.is_ok(), "{sql}: {outcome:?}");
    }
    for sql in writes {
        assert_eq!(classifier.classify(sql).route, Route::Write, "{sql}");
        let outcome = if sql.starts_with("COPY") {
            replica.copy_in::<_, bytes::Bytes>(sql).await.map(|_| ())
        } else {
            replica.simple_query(sql).await.map(|_| ())
        };
        assert!(outcome.is_err(), "{sql} should be refused by a standby");
    }
    Ok(())
}
