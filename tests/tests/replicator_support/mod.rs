//! Shared pieces of the `tandem replicator` end-to-end suites
//! (`tests/tests/replicator_*.rs`): a primary with a pgbench database, replica
//! servers, the real `tandem replicator` process pointed at them, pgbench load
//! in the background, and the checks that prove replicas equal the primary.
//!
//! Everything goes through real PostgreSQL 15 servers from the kit and the
//! real binary; nothing is mocked. Equality is table-by-table: row count plus
//! md5 over every row's text in text order, so a lost row, a duplicated row
//! (pgbench_history has no key) or a changed value all show.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tandem_tests::{free_port, PgOptions, PgServer, TandemProcess};

/// The database pgbench works in.
pub const BENCH_DB: &str = "bench";

/// A primary server with `bench` initialised by pgbench (scale 1).
pub fn bench_primary() -> Result<PgServer> {
    let primary = PgServer::start("primary", PgOptions::default())?;
    primary.psql("postgres", "CREATE DATABASE bench")?;
    pgbench(&primary, &["-i", "-s", "1", "-q"])?;
    Ok(primary)
}

/// An empty replica server (plain PostgreSQL; Tandem copies everything into it).
pub fn replica(name: &str) -> Result<PgServer> {
    PgServer::start(name, PgOptions::default())
}

/// Runs pgbench against `bench` on `pg` to completion.
pub fn pgbench(pg: &PgServer, args: &[&str]) -> Result<()> {
    let out = pgbench_command(pg, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .context("running pgbench (is it on PATH?)")?;
    if !out.status.success() {
        bail!(
            "pgbench {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn pgbench_command(pg: &PgServer, args: &[&str]) -> Command {
    let mut cmd = Command::new("pgbench");
    cmd.args(["-h", "127.0.0.1", "-p", &pg.port().to_string(), "-U", "postgres"])
        .args(args)
        .arg(BENCH_DB)
        .stdin(Stdio::null())
        .env_remove("PGDATABASE")
        .env_remove("PGUSER");
    cmd
}

/// A pgbench TPC-B run in the background (`-c 4 -T secs`), killed on drop.
pub struct Load {
    child: Option<Child>,
    out: tempfile::NamedTempFile,
    started: Instant,
    secs: u32,
}

impl Load {
    /// Starts `pgbench -n -c 4 -j 2 -T secs` on `pg`.
    pub fn start(pg: &PgServer, secs: u32) -> Result<Load> {
        let out = tempfile::NamedTempFile::new()?;
        let child = pgbench_command(pg, &["-n", "-c", "4", "-j", "2", "-T", &secs.to_string()])
            .stdout(out.reopen()?)
            .stderr(out.reopen()?)
            .spawn()
            .context("starting pgbench")?;
        Ok(Load { child: Some(child), out, started: Instant::now(), secs })
    }

    /// Waits for pgbench to finish and returns how many transactions it committed.
    pub fn finish(mut self) -> Result<u64> {
        let mut child = self.child.take().context("load already finished")?;
        // pgbench -T stops starting transactions on time but waits for open
        // ones; a commit stuck on the primary must fail the test, not hang it.
        let deadline = self.started + Duration::from_secs(u64::from(self.secs) + 120);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let text = std::fs::read_to_string(self.out.path()).unwrap_or_default();
                bail!("pgbench -T {} still running 120 s after its end:\n{text}", self.secs);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let text = std::fs::read_to_string(self.out.path()).unwrap_or_default();
        if !status.success() {
            bail!("pgbench failed ({status}):\n{text}");
        }
        text.lines()
            .find_map(|l| {
                l.strip_prefix("number of transactions actually processed: ")
                    .and_then(|rest| rest.split('/').next())
                    .and_then(|n| n.trim().parse().ok())
            })
            .ok_or_else(|| anyhow!("no transaction count in pgbench output:\n{text}"))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// How a test runs `tandem replicator`.
pub struct Replicator {
    /// The command-line arguments (after `tandem`).
    pub args: Vec<String>,
    /// `--data-dir` (kept across restarts: the change log lives there).
    pub data_dir: PathBuf,
    /// `--status-listen` port.
    pub status_port: u16,
    /// The running process, if any.
    pub proc: Option<TandemProcess>,
}

impl Replicator {
    /// Arguments for `primary` → `replicas` in `mode`, databases `dbs` (empty = all);
    /// `--replication logical` unless `extra` names a replication.
    pub fn new(
        data_dir: &Path,
        primary: &PgServer,
        replicas: &[(&str, &PgServer)],
        mode: &str,
        dbs: &[&str],
        extra: &[&str],
    ) -> Replicator {
        let status_port = free_port();
        let mut args: Vec<String> = vec![
            "replicator".into(),
            "--primary".into(),
            primary.url("postgres", "postgres"),
            "--mode".into(),
            mode.into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--status-listen".into(),
            format!("127.0.0.1:{status_port}"),
        ];
        for (name, r) in replicas {
            args.push("--replica".into());
            args.push(format!("{name}={}", r.url("postgres", "postgres")));
        }
        for db in dbs {
            args.push("--database".into());
            args.push((*db).into());
        }
        // These suites test the logical mode unless they ask for another.
        if !extra.contains(&"--replication") {
            args.extend(["--replication".into(), "logical".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Replicator { args, data_dir: data_dir.to_path_buf(), status_port, proc: None }
    }

    /// Adds a `--replica NAME=URL` for the next start.
    pub fn add_replica(&mut self, name: &str, r: &PgServer) {
        self.args.push("--replica".into());
        self.args.push(format!("{name}={}", r.url("postgres", "postgres")));
    }

    /// Starts the process and waits for its status endpoint.
    pub fn start(&mut self) -> Result<()> {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let p = TandemProcess::spawn_with_env(&args, &[("TANDEM_LOG", "info,tandem_replicator=debug")])?;
        p.wait_for_port(self.status_port, Duration::from_secs(30))?;
        self.proc = Some(p);
        Ok(())
    }

    /// SIGKILL: a crash at whatever point it is.
    pub fn kill9(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.kill9();
        }
    }

    /// SIGTERM and wait for a clean exit (status 0).
    pub fn stop(&mut self) -> Result<()> {
        if let Some(p) = self.proc.as_mut() {
            p.terminate();
            let status = p.wait_exit(Duration::from_secs(30))?;
            if !status.success() {
                bail!("replicator exited with {status} on SIGTERM\n{}", p.log_tail());
            }
        }
        Ok(())
    }

    /// Fails with the log if the process has exited.
    pub fn check_alive(&self) -> Result<()> {
        if let Some(p) = &self.proc {
            if let Some(status) = p.try_status()? {
                bail!("replicator exited ({status})\n--- log ---\n{}", p.log_tail());
            }
        }
        Ok(())
    }

    /// The last lines of the process log (empty if never started).
    pub fn log_tail(&self) -> String {
        self.proc.as_ref().map(|p| p.log_tail()).unwrap_or_default()
    }

    /// The whole process log.
    pub fn log(&self) -> String {
        self.proc.as_ref().map(|p| p.log()).unwrap_or_default()
    }

    /// `GET path` on the status endpoint: (status code, body).
    pub fn http_get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.status_port, path)
    }

    /// `GET /status` parsed.
    pub fn status(&self) -> Result<serde_json::Value> {
        let (code, body) = self.http_get("/status")?;
        if code != 200 {
            bail!("GET /status answered {code}: {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("status is not JSON: {body}"))
    }
}

/// Minimal HTTP/1.1 GET on loopback (the status endpoint is plain HTTP).
pub fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").ok_or_else(|| anyhow!("malformed HTTP answer: {raw}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no status code in {head}"))?;
    Ok((code, body.to_string()))
}

/// Whether `db` on `replica` has finished its initial copy (Tandem's progress row exists).
pub fn is_copied(replica: &PgServer, db: &str) -> bool {
    replica.psql(db, "SELECT count(*) FROM tandem.applied WHERE source = 'tandem'").map(|v| v == "1").unwrap_or(false)
}

/// Waits until every replica has finished the initial copy of `db`.
pub fn wait_copied(rep: &Replicator, replicas: &[&PgServer], db: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    for r in replicas {
        while !is_copied(r, db) {
            rep.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "initial copy of {db} to {} not done after {timeout:?}\n--- replicator log ---\n{}",
                    r.name(),
                    rep.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(())
}

/// The user tables of `db` on `pg` (schema-qualified), Tandem's own excluded.
pub fn user_tables(pg: &PgServer, db: &str) -> Result<Vec<String>> {
    let out = pg.psql(
        db,
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
         WHERE schemaname NOT IN ('pg_catalog', 'information_schema', 'tandem') ORDER BY 1",
    )?;
    Ok(out.lines().map(str::to_owned).filter(|l| !l.is_empty()).collect())
}

/// `count:md5` of every row's text in text order, per table (one psql call).
pub fn checksums(pg: &PgServer, db: &str, tables: &[String]) -> Result<Vec<(String, String)>> {
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let sql: Vec<String> = tables
        .iter()
        .map(|t| {
            format!(
                "SELECT '{t}', count(*) || ':' || coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), '-') FROM {t} x;"
            )
        })
        .collect();
    let out = pg.psql(db, &sql.join("\n"))?;
    Ok(out.lines().filter_map(|l| l.split_once('|')).map(|(t, c)| (t.to_owned(), c.to_owned())).collect())
}

/// Waits until every replica has every user table of `db` with the primary's
/// checksum; returns the primary's checksums. Call once the primary is idle.
pub fn wait_converged(
    rep: &Replicator,
    primary: &PgServer,
    replicas: &[&PgServer],
    db: &str,
    timeout: Duration,
) -> Result<Vec<(String, String)>> {
    let tables = user_tables(primary, db)?;
    let want = checksums(primary, db, &tables)?;
    let deadline = Instant::now() + timeout;
    for r in replicas {
        loop {
            let got = checksums(r, db, &tables).unwrap_or_default();
            if got == want {
                break;
            }
            rep.check_alive()?;
            if Instant::now() > deadline {
                let diff: Vec<String> = want
                    .iter()
                    .map(|(t, w)| {
                        let g = got.iter().find(|(gt, _)| gt == t).map(|(_, c)| c.as_str());
                        format!("{t}: primary {w}, {} {}", r.name(), g.unwrap_or("(missing)"))
                    })
                    .collect();
                bail!(
                    "{} did not converge to the primary within {timeout:?}:\n{}\n--- replicator log ---\n{}",
                    r.name(),
                    diff.join("\n"),
                    rep.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    Ok(want)
}

/// The number of rows in `pgbench_history` on `pg` (one per committed pgbench transaction).
pub fn history_rows(pg: &PgServer) -> Result<u64> {
    Ok(pg.psql(BENCH_DB, "SELECT count(*) FROM pgbench_history")?.parse()?)
}

/// The segment files of `db`'s change log under `data_dir`, oldest first.
pub fn segments(data_dir: &Path, db: &str) -> Result<Vec<PathBuf>> {
    let dir = tandem_replicator::changelog_dir(data_dir, db);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    Ok(v)
}
