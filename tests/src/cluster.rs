//! A whole proxied cluster for end-to-end tests: a primary, physical standbys, and a
//! `tandem proxy` in front of them.
//!
//! Data flow: the test talks to [`Cluster::proxy_port`] (tokio-postgres, psql, pgbench or
//! raw bytes); the proxy routes to [`Cluster::primary`] and [`Cluster::replicas`], which are
//! real PostgreSQL servers from the kit. Everything is stopped on `Drop` (the proxy first).
//! Proxy suites, the demo and later failover suites share this so that "start three servers
//! and a proxy" is written once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};

use crate::kit::bin::pg_tool;
use crate::kit::run::{pg_command, run_capture};
use crate::{free_port, wait_until, PgOptions, PgServer, TandemProcess};

/// How long a proxy may take to start listening.
const PROXY_START: Duration = Duration::from_secs(20);

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Number of physical standbys, each given to the proxy as a replica.
    pub replicas: usize,
    /// `transaction` or `session`.
    pub pool_mode: &'static str,
    /// Serve `/metrics` on a free port (see [`Cluster::metrics_port`]).
    pub metrics: bool,
    /// Further `tandem proxy` flags, e.g. `["--pool-size", "2"]`.
    pub proxy_args: Vec<String>,
    /// Options of the primary (standbys copy its configuration).
    pub pg: PgOptions,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            replicas: 2,
            pool_mode: "transaction",
            metrics: false,
            proxy_args: Vec::new(),
            pg: PgOptions::default(),
        }
    }
}

impl ClusterOptions {
    /// A primary without standbys behind a proxy in `pool_mode` with one server connection
    /// (`--pool-size 1`): every client of the proxy runs on the same backend.
    pub fn one_backend(pool_mode: &'static str) -> ClusterOptions {
        ClusterOptions {
            replicas: 0,
            pool_mode,
            proxy_args: vec!["--pool-size".into(), "1".into()],
            ..Default::default()
        }
    }
}

/// A running primary, its standbys and a proxy in front of them.
///
/// Field order matters: the proxy is dropped (killed) before the servers stop.
pub struct Cluster {
    /// The proxy process.
    pub proxy: TandemProcess,
    /// Port the proxy accepts clients on.
    pub proxy_port: u16,
    /// Port of `/metrics`, when [`ClusterOptions::metrics`] was set.
    pub metrics_port: Option<u16>,
    /// The primary.
    pub primary: PgServer,
    /// The standbys, in the order given to the proxy (`replica1`, `replica2`, ...).
    pub replicas: Vec<PgServer>,
    /// The arguments the proxy was started with, for [`Cluster::restart_proxy`].
    proxy_argv: Vec<String>,
}

impl Cluster {
    /// Starts the servers, waits for the standbys to stream, then starts the proxy with a
    /// 100 ms health interval and waits until it listens and sees every replica healthy.
    pub fn start(opts: ClusterOptions) -> anyhow::Result<Cluster> {
        let primary = PgServer::start("primary", opts.pg.clone())?;
        let mut replicas = Vec::new();
        for i in 0..opts.replicas {
            replicas.push(primary.start_standby(&format!("replica{}", i + 1))?);
        }
        let mut argv = vec![
            "proxy".to_string(),
            "--primary".into(),
            format!("primary={}", primary.addr()),
            "--pool-mode".into(),
            opts.pool_mode.into(),
            "--health-interval-ms".into(),
            "100".into(),
        ];
        for (i, r) in replicas.iter().enumerate() {
            argv.push("--replica".into());
            argv.push(format!("replica{}={}", i + 1, r.addr()));
        }
        let metrics_port = opts.metrics.then(free_port);
        if let Some(p) = metrics_port {
            argv.push("--metrics-listen".into());
            argv.push(format!("127.0.0.1:{p}"));
        }
        argv.extend(opts.proxy_args.iter().cloned());
        let (proxy, proxy_port) = spawn_proxy(&argv)?;
        let cluster = Cluster { proxy, proxy_port, metrics_port, primary, replicas, proxy_argv: argv };
        cluster.wait_replicated()?;
        Ok(cluster)
    }

    /// Kills the proxy and starts a new one with the same arguments on a new port.
    pub fn restart_proxy(&mut self) -> anyhow::Result<()> {
        self.restart_proxy_with(&[])
    }

    /// Kills the proxy and starts a new one with the same arguments plus `extra` (which
    /// stay for later restarts) on a new port.
    pub fn restart_proxy_with(&mut self, extra: &[&str]) -> anyhow::Result<()> {
        self.proxy.kill9();
        self.proxy_argv.extend(extra.iter().map(|s| s.to_string()));
        let (proxy, port) = spawn_proxy(&self.proxy_argv)?;
        self.proxy = proxy;
        self.proxy_port = port;
        Ok(())
    }

    /// libpq key/value string for connecting through the proxy.
    pub fn dsn(&self, user: &str, db: &str) -> String {
        format!("host=127.0.0.1 port={} user={user} dbname={db}", self.proxy_port)
    }

    /// Connects through the proxy with tokio-postgres (no TLS), spawning the connection
    /// task on the current runtime.
    pub async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        self.connect_as("postgres", "postgres").await
    }

    /// Like [`Cluster::connect`] with another user or database.
    pub async fn connect_as(&self, user: &str, db: &str) -> anyhow::Result<tokio_postgres::Client> {
        let dsn = self.dsn(user, db);
        let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await.with_context(|| {
            format!("connecting through the proxy ({dsn})\n--- proxy log ---\n{}", self.proxy.log_tail())
        })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "proxied test connection ended");
            }
        });
        Ok(client)
    }

    /// Runs SQL through the proxy with psql (same flags as [`PgServer::psql`]); `Err`
    /// carries psql's stderr.
    pub fn psql(&self, sql: &str) -> anyhow::Result<String> {
        let out = self.psql_raw(&self.dsn("postgres", "postgres"), &[], sql)?;
        if !out.status.success() {
            return Err(anyhow!(
                "psql through the proxy failed ({}): {}\nSQL: {sql}",
                out.status,
                out.stderr.trim_end()
            ));
        }
        Ok(out.stdout.trim_end_matches('\n').to_string())
    }

    /// Runs psql with connection string `conninfo`, extra arguments and `sql` on stdin,
    /// returning whatever happened (for tests that expect a failure).
    pub fn psql_raw(&self, conninfo: &str, args: &[&str], sql: &str) -> anyhow::Result<ClientOutput> {
        run_pg_client(
            "psql",
            |cmd| {
                cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
                    .args(args)
                    .args(["-d", conninfo, "-f", "-"]);
            },
            sql,
        )
    }

    /// Runs `pgbench ARGS` against the proxy (host, port and user are added), returning
    /// its output; `Err` when it exits non-zero.
    pub fn pgbench(&self, args: &[&str]) -> anyhow::Result<String> {
        let port = self.proxy_port.to_string();
        let out = run_pg_client(
            "pgbench",
            |cmd| {
                cmd.args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres"]).args(args);
            },
            "",
        )
        .with_context(|| format!("pgbench {args:?}\n--- proxy log ---\n{}", self.proxy.log_tail()))?;
        let text = format!("{}\n{}", out.stdout, out.stderr);
        if !out.status.success() {
            return Err(anyhow!(
                "pgbench {args:?} failed ({}):\n{text}\n--- proxy log ---\n{}",
                out.status,
                self.proxy.log_tail()
            ));
        }
        Ok(text)
    }

    /// Waits until every standby has replayed the primary's current WAL position, so that a
    /// read on any replica sees everything committed before the call.
    pub fn wait_replicated(&self) -> anyhow::Result<()> {
        let lsn = self.primary.psql("postgres", "SELECT pg_current_wal_lsn()")?;
        for r in &self.replicas {
            let sql = format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
            wait_until(&format!("{} to replay up to {lsn}", r.name()), Duration::from_secs(30), || {
                (r.psql("postgres", &sql).ok()? == "t").then_some(())
            })?;
        }
        Ok(())
    }

    /// The name (`primary`, `replica1`, ...) of the server listening on `port`.
    pub fn node_name(&self, port: u16) -> Option<&str> {
        std::iter::once(&self.primary).chain(self.replicas.iter()).find(|s| s.port() == port).map(|s| s.name())
    }

    /// Sessions on the primary in state `state` (e.g. `idle in transaction`) opened by the
    /// proxy's pools (see [`POOLED_SESSION`]).
    pub fn primary_sessions_in(&self, state: &str) -> anyhow::Result<u32> {
        let n = self.primary.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_stat_activity WHERE {POOLED_SESSION} AND state = '{state}'"),
        )?;
        n.parse().with_context(|| format!("count {n:?}"))
    }
}

/// First column of the first row of a simple query (`""` for NULL).
pub async fn one(client: &tokio_postgres::Client, sql: &str) -> anyhow::Result<String> {
    for m in client.simple_query(sql).await? {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            return Ok(r.get(0).unwrap_or("").to_owned());
        }
    }
    Err(anyhow!("no row from {sql}"))
}

/// A `pg_stat_activity` condition for the sessions of the proxy's pools, as seen by a psql
/// run with [`PgServer::psql`]: they log in as `tandem` and then carry their last client's
/// application_name, so they are the client backends other than that psql (`psql`) and the
/// proxy's control connections (`tandem-health`, `tandem-...`).
pub const POOLED_SESSION: &str = "backend_type = 'client backend' AND pid <> pg_backend_pid() \
     AND application_name <> 'psql' AND application_name NOT LIKE 'tandem-%'";

/// Starts `tandem ARGV --listen 127.0.0.1:PORT` on a free port and waits until it listens.
fn spawn_proxy(argv: &[String]) -> anyhow::Result<(TandemProcess, u16)> {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args: Vec<&str> = argv.iter().map(String::as_str).collect();
    args.extend(["--listen", &listen]);
    let proxy = TandemProcess::spawn(&args)?;
    proxy.wait_for_port(port, PROXY_START)?;
    Ok((proxy, port))
}

/// What a client program run by [`run_pg_client`] did.
#[derive(Debug)]
pub struct ClientOutput {
    /// Its exit status.
    pub status: std::process::ExitStatus,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
}

/// Runs a PostgreSQL client program (psql, pgbench) as the current user with a clean
/// environment, `configure` adding its arguments, `stdin` as input, for at most 2 minutes.
pub fn run_pg_client(
    program: &str,
    configure: impl FnOnce(&mut std::process::Command),
    stdin: &str,
) -> anyhow::Result<ClientOutput> {
    let path = pg_tool(program)?;
    let mut cmd = pg_command(&path, &std::env::temp_dir(), false)?;
    configure(&mut cmd);
    let out = run_capture(cmd, stdin, Duration::from_secs(120), program)?;
    Ok(ClientOutput { status: out.status, stdout: out.stdout, stderr: out.stderr })
}

/// Writes a self-signed certificate for `localhost`/`127.0.0.1` and its key as PEM files
/// into `dir`, returning (cert path, key path). For TLS tests of the proxy.
pub fn self_signed_cert(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .context("generating a self-signed certificate")?;
    let cert_path = dir.join("server.crt");
    let key_path = dir.join("server.key");
    std::fs::write(&cert_path, cert.cert.pem()).context("writing certificate")?;
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).context("writing key")?;
    Ok((cert_path, key_path))
}

/// Writes a self-signed certificate and key (as [`self_signed_cert`]) that a PostgreSQL server
/// started by the kit can use for `ssl = on`: owned by the server user, the key readable by
/// it alone (PostgreSQL refuses a key others can read). Returns (cert path, key path).
pub fn server_cert(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    let (cert, key) = self_signed_cert(dir)?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).context("chmod key")?;
    for path in [dir, cert.as_path(), key.as_path()] {
        crate::kit::run::chown_for_server(path)?;
    }
    Ok((cert, key))
}
