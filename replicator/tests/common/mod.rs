//! Minimal real-PostgreSQL server for the replicator's integration tests.
//!
//! Starts `initdb` + `pg_ctl` as the `postgres` OS user (PostgreSQL refuses
//! root) in a temporary directory, on a free loopback port, with
//! `wal_level = logical`; stops it (`-m immediate`) on drop.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use tokio_postgres::{Client, Config, NoTls};

pub struct Pg {
    _dir: tempfile::TempDir,
    data: PathBuf,
    bin: PathBuf,
    pub port: u16,
}

fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p).unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

fn postgres_ids() -> Result<(u32, u32)> {
    let id = |flag: &str| -> Result<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output()?;
        Ok(String::from_utf8(out.stdout)?.trim().parse()?)
    };
    Ok((id("-u")?, id("-g")?))
}

fn as_postgres(bin: &Path, program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join(program))
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("{program} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl Pg {
    /// Starts a fresh server; `password` is set for the `postgres` superuser.
    pub fn start(password: &str) -> Result<Pg> {
        let bin = pg_bin();
        let dir = tempfile::Builder::new().prefix("tandem-apply-test").tempdir()?;
        let (uid, gid) = postgres_ids()?;
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, password)?;
        std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid))?;
        as_postgres(
            &bin,
            "initdb",
            &[
                "-D",
                data.to_str().context("path")?,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                &format!("--pwfile={}", pwfile.display()),
            ],
        )?;
        let port = {
            let l = TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n\
             wal_level = logical\nmax_wal_senders = 10\nmax_replication_slots = 10\n\
             fsync = off\nshared_buffers = 16MB\n"
        );
        let conf_path = data.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path)?;
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing)?;
        let log = dir.path().join("log");
        as_postgres(
            &bin,
            "pg_ctl",
            &["-D", data.to_str().context("path")?, "-l", log.to_str().context("path")?, "-w", "-t", "60", "start"],
        )?;
        Ok(Pg { _dir: dir, data, bin, port })
    }

    /// DSN-style config for the `postgres` superuser (database `postgres`).
    pub fn config(&self) -> Config {
        let mut cfg = Config::new();
        cfg.host("127.0.0.1").port(self.port).user("postgres").dbname("postgres");
        cfg
    }

    /// A plain session on `db` as `postgres`.
    pub async fn connect(&self, db: &str) -> Result<Client> {
        let mut cfg = self.config();
        cfg.dbname(db);
        let (client, conn) = cfg.connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D"])
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// Order-independent checksum of a table's rows.
pub async fn table_checksum(client: &Client, table: &str) -> Result<(i64, String)> {
    let row = client
        .query_one(
            &format!("SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM {table} t"),
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}
