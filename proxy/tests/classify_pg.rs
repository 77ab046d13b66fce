//! The classifier against a real PostgreSQL 15: the volatility table loaded from pg_proc, and
//! the classifier's verdicts cross-checked with what the server allows in a read-only
//! transaction (the restriction a hot-standby replica enforces).

use std::error::Error;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tandem_proxy::router::classify::{Classifier, FunctionTable, Route, Volatility};

type TestResult = Result<(), Box<dyn Error>>;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Minimal local PostgreSQL runner (the shared test kit lives in another crate): initdb into a
/// fresh directory owned by `postgres`, start on a free loopback port, stop on Drop.
struct Postgres {
    dir: PathBuf,
    port: u16,
    uid: u32,
    gid: u32,
}

fn postgres_ids() -> Result<(u32, u32), Box<dyn Error>> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.first() == Some(&"postgres") && fields.len() > 3 {
            return Ok((fields[2].parse()?, fields[3].parse()?));
        }
    }
    Err("no postgres user".into())
}

fn free_port() -> Result<u16, Box<dyn Error>> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Postgres {
    /// A fresh primary.
    fn start() -> Result<Postgres, Box<dyn Error>> {
        let server = Postgres::empty()?;
        server.run("initdb", &["-D", &server.data(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])?;
        server.launch()
    }

    /// A hot standby streaming from `primary` (the restrictions a replica really enforces).
    fn standby_of(primary: &Postgres) -> Result<Postgres, Box<dyn Error>> {
        let server = Postgres::empty()?;
        let port = primary.port.to_string();
        server.run(
            "pg_basebackup",
            &[
                "-D",
                &server.data(),
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "--no-sync",
            ],
        )?;
        server.launch()
    }

    fn empty() -> Result<Postgres, Box<dyn Error>> {
        let (uid, gid) = postgres_ids()?;
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.subsec_nanos();
        let dir = std::env::temp_dir().join(format!("tandem-classify-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        Ok(Postgres { dir, port: 0, uid, gid })
    }

    fn launch(mut self) -> Result<Postgres, Box<dyn Error>> {
        self.port = free_port()?;
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, self.dir.display());
        let log = self.dir.join("log").display().to_string();
        self.run("pg_ctl", &["-D", &self.data(), "-o", &options, "-l", &log, "-w", "start"])?;
        Ok(self)
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn run(&self, binary: &str, args: &[&str]) -> Result<(), Box<dyn Error>> {
        let status = Command::new(Path::new(PG_BIN).join(binary))
            .args(args)
            .uid(self.uid)
            .gid(self.gid)
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{binary} failed: {status}").into())
        }
    }

    async fn connect(&self) -> Result<tokio_postgres::Client, Box<dyn Error>> {
        let config = format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.port);
        let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.port != 0 {
            let _ = self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "stop"]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn function_table_loads_from_pg_proc_and_drives_routing() -> TestResult {
    let server = Postgres::start()?;
    let client = server.connect().await?;
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
    let primary = Postgres::start()?;
    let client = primary.connect().await?;
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
    let standby = Postgres::standby_of(&primary)?;
    let replica = standby.connect().await?;
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
