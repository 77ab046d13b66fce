//! Real PostgreSQL servers for tests: primaries and physical streaming standbys.
//!
//! Every database Tandem's proxy and replicator talk to in a test is a [`PgServer`]: a copy
//! of the initdb template (see `template.rs`) plus the kit's common settings, in its own
//! temporary directory, on a free loopback port, driven by `pg_ctl`, and stopped and
//! deleted on `Drop`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use super::bin::{pg_bin_dir, pg_tool};
use super::port::free_port;
use super::procs::{children_of, is_alive};
use super::run::{chown_for_server, pg_command, run_capture, run_to_file, tail};
use super::template::{append_settings, template_dir, write_hba, COMMON_SETTINGS};

/// How long pg_ctl may wait for a start or stop.
const PG_CTL_WAIT: Duration = Duration::from_secs(60);
/// How many times a fresh server retries on a new port when its port was taken meanwhile.
const PORT_ATTEMPTS: usize = 3;
/// Lines of the server log quoted in errors.
const LOG_TAIL_LINES: usize = 40;

/// How a new primary is configured.
///
/// `Default::default()` gives a server ready to be a Tandem primary: logical WAL, room for
/// replication slots and WAL senders, trust auth on loopback.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `wal_level=logical`, `max_replication_slots=20`, `max_wal_senders=20` (the replicator
    /// needs logical decoding). `false` keeps PostgreSQL's defaults (`wal_level=replica`).
    pub wal_level_logical: bool,
    /// Extra `pg_hba.conf` lines placed before the default trust lines, so tests of
    /// authentication (e.g. `host all alice 127.0.0.1/32 scram-sha-256`) take precedence.
    pub hba: Vec<String>,
    /// Extra `postgresql.conf` settings as `(name, value)`; values are quoted for you.
    pub settings: Vec<(String, String)>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions { wal_level_logical: true, hba: Vec::new(), settings: Vec::new() }
    }
}

impl PgOptions {
    /// A server with `ssl = on` (certificate and key as [`crate::cluster::server_cert`]
    /// writes them) whose pg_hba accepts TCP logins over TLS only: plain TCP is rejected
    /// with "no encryption", as production servers that require TLS do.
    pub fn tls_only(cert: &Path, key: &Path) -> PgOptions {
        PgOptions {
            hba: vec!["hostssl all all 127.0.0.1/32 trust".into(), "host all all 127.0.0.1/32 reject".into()],
            settings: vec![
                ("ssl".into(), "on".into()),
                ("ssl_cert_file".into(), cert.display().to_string()),
                ("ssl_key_file".into(), key.display().to_string()),
            ],
            ..PgOptions::default()
        }
    }
}

/// One running (or stopped) PostgreSQL server owned by a test.
///
/// Layout: `<tempdir>/data` is the data directory, `<tempdir>` holds the Unix socket and
/// pg_ctl output, `<data>/postgres.log` is the server log. `Drop` stops the server with
/// `pg_ctl stop -m immediate` and deletes the temp dir, also when the test panicked.
#[derive(Debug)]
pub struct PgServer {
    /// Label used in the temp dir name, `cluster_name` and logs.
    name: String,
    /// Loopback port the server listens on; kept across restarts.
    port: u16,
    /// PostgreSQL binaries this server runs with.
    bin: PathBuf,
    /// `<dir>/data`.
    data: PathBuf,
    /// `<data>/postgres.log`, given to `pg_ctl -l`.
    log: PathBuf,
    /// Whether we believe a postmaster is up (set by start, cleared by stop/kill9).
    running: bool,
    /// Declared last so it is deleted after `Drop::drop` stopped the server.
    dir: TempDir,
}

impl PgServer {
    /// Starts a new server: copy of the template, `opts` applied, `pg_ctl start`, ready.
    pub fn start(name: &str, opts: PgOptions) -> anyhow::Result<PgServer> {
        let mut settings: Vec<(String, String)> =
            COMMON_SETTINGS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        if opts.wal_level_logical {
            for (k, v) in [("wal_level", "logical"), ("max_replication_slots", "20"), ("max_wal_senders", "20")] {
                settings.push((k.into(), v.into()));
            }
        }
        settings.extend(opts.settings.iter().cloned());
        let template = template_dir()?;
        Self::launch(name, |dir, data, _port| {
            let mut cp = std::process::Command::new("cp");
            cp.arg("-a").arg(&template).arg(data);
            run_to_file(cp, &dir.join("cp.out"), Duration::from_secs(60), "copying template")?;
            write_hba(&data.join("pg_hba.conf"), &opts.hba)?;
            append_settings(&data.join("postgresql.conf"), settings.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        })
    }

    /// Starts a physical streaming standby of `self` (`pg_basebackup -R -X stream`) and waits
    /// until it accepts connections. Useful wherever a test needs replicas.
    pub fn start_standby(&self, name: &str) -> anyhow::Result<PgServer> {
        let basebackup = self.bin.join("pg_basebackup");
        let primary_port = self.port.to_string();
        Self::launch(name, |dir, data, _port| {
            let mut cmd = pg_command(&basebackup, dir, true)?;
            cmd.args(["-h", "127.0.0.1", "-p", &primary_port, "-U", "postgres", "-D"]).arg(data).args([
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ]);
            run_to_file(cmd, &dir.join("pg_basebackup.out"), Duration::from_secs(120), "pg_basebackup")
                .map_err(|e| e.context(format!("standby of {}", self.name)))?;
            // The primary's log came along with the copy; the standby starts its own.
            let _ = std::fs::remove_file(data.join("postgres.log"));
            Ok(())
        })
    }

    /// Starts a physical standby of `self` made the way an operator makes one:
    /// `tandem replica add NAME --from PRIMARY --relay RELAY` (its own slot on the primary,
    /// `cluster_name` NAME, `restore_command` reading the WAL relay at `relay`, a directory or
    /// `http://HOST:PORT`), then waits until it accepts connections.
    pub fn start_tandem_standby(&self, name: &str, relay: &str) -> anyhow::Result<PgServer> {
        let from = self.url("postgres", "postgres");
        Self::launch(name, |dir, data, port| {
            let mut cmd = std::process::Command::new(super::bin::require_tandem_bin()?);
            cmd.args(["replica", "add", name, "--from", &from, "--relay", relay, "--no-start", "--port"])
                .arg(port.to_string())
                .arg("--data-dir")
                .arg(data);
            run_to_file(cmd, &dir.join("replica-add.out"), Duration::from_secs(120), "tandem replica add")
                .map_err(|e| e.context(format!("standby {name} of {}", self.name)))?;
            let _ = std::fs::remove_file(data.join("postgres.log"));
            Ok(())
        })
    }

    /// Shared start sequence: temp dir, `prepare` fills `<dir>/data` (told the port the
    /// server will listen on), per-server settings, start, wait ready. Retries with a new
    /// port when the chosen one got taken.
    fn launch(name: &str, prepare: impl Fn(&Path, &Path, u16) -> anyhow::Result<()>) -> anyhow::Result<PgServer> {
        let bin = pg_bin_dir()?;
        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix(&format!("tandem-pg-{}-", short_label(name)))
                .tempdir()
                .context("creating server temp dir")?;
            chown_for_server(dir.path())?;
            let data = dir.path().join("data");
            let port = free_port();
            prepare(dir.path(), &data, port)?;
            let socket_dir = dir.path().to_string_lossy().into_owned();
            let port_s = port.to_string();
            append_settings(
                &data.join("postgresql.conf"),
                [("port", port_s.as_str()), ("unix_socket_directories", socket_dir.as_str()), ("cluster_name", name)],
            )?;
            let mut server = PgServer {
                name: name.to_string(),
                port,
                bin: bin.clone(),
                log: data.join("postgres.log"),
                data,
                running: false,
                dir,
            };
            match server.pg_ctl_start() {
                Ok(()) => {
                    server.wait_ready(PG_CTL_WAIT)?;
                    tracing::debug!(name, port, "postgres started");
                    return Ok(server);
                }
                Err(e) if server.log_tail().contains("could not bind") => {
                    tracing::warn!(name, port, "port taken, retrying on another one");
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("no port attempts made")))
    }

    /// Loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Host to connect to: always `127.0.0.1`.
    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    /// `127.0.0.1:PORT`, the form the proxy and replicator configs take.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The name given at start (also the server's `cluster_name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The data directory (e.g. for pg_rewind or checking files after a crash).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The server log file, for tests that look for a log line.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last lines of the server log, for error messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log, LOG_TAIL_LINES)
    }

    /// Whether the kit believes the server is up (started and not stopped or killed).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// libpq key/value connection string: `host=127.0.0.1 port=P user=U dbname=D`.
    pub fn dsn(&self, user: &str, db: &str) -> String {
        format!("host=127.0.0.1 port={} user={user} dbname={db}", self.port)
    }

    /// URL connection string: `postgres://U@127.0.0.1:P/D`.
    pub fn url(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{db}", self.port)
    }

    /// Connects with `tokio_postgres` (no TLS) and spawns the connection task on the current
    /// tokio runtime; the task ends when the client is dropped.
    pub async fn connect(&self, user: &str, db: &str) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(&self.dsn(user, db), tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connecting to {} ({})", self.name, self.dsn(user, db)))?;
        let name = self.name.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(server = %name, error = %e, "test connection ended");
            }
        });
        Ok(client)
    }

    /// Runs SQL through `psql -X -q -A -t -v ON_ERROR_STOP=1` as database user `postgres`
    /// and returns its output with trailing newlines removed (`SELECT 1` gives `"1"`; rows
    /// are lines, columns `|`-separated). Several statements may be given; each one's rows
    /// are printed. `Err` carries psql's stderr.
    pub fn psql(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let psql = pg_tool("psql")?;
        let mut cmd = pg_command(&psql, self.dir.path(), false)?;
        let port = self.port.to_string();
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]).args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            db,
            "-f",
            "-",
        ]);
        let out = run_capture(cmd, sql, Duration::from_secs(120), "psql")?;
        if !out.status.success() {
            return Err(anyhow!(
                "psql on {} failed ({}): {}\nSQL: {sql}",
                self.name,
                out.status,
                out.stderr.trim_end()
            ));
        }
        Ok(out.stdout.trim_end_matches('\n').to_string())
    }

    /// Stops the server with `pg_ctl stop -m fast` (clean shutdown). Does nothing if it is
    /// not running.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        // A frozen server could not act on pg_ctl's signal.
        self.thaw();
        if !self.postmaster_alive() {
            // Died on its own: pg_ctl would wait on a stale lock file; just clean up.
            self.kill9();
            return;
        }
        if let Err(e) = self.pg_ctl(&["stop", "-m", "fast"]) {
            tracing::warn!(server = %self.name, error = %format!("{e:#}"), "pg_ctl stop failed; killing");
            self.kill9();
        }
        self.running = false;
    }

    /// Simulates a crash: SIGKILL to the postmaster and all its child processes, then waits
    /// until they are gone. The data directory is left as a crash leaves it, so
    /// [`PgServer::restart`] runs crash recovery.
    pub fn kill9(&mut self) {
        if let Some(pid) = self.postmaster_pid() {
            // Children are collected first: once the postmaster dies they are re-parented.
            let children = children_of(pid);
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            for child in &children {
                let _ = kill(Pid::from_raw(*child as i32), Signal::SIGKILL);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while (is_alive(pid) || children.iter().any(|c| is_alive(*c))) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            // The dead postmaster may linger as an unreaped zombie that pg_ctl and a new
            // postmaster would mistake for a live one, so its stale lock files go.
            let _ = std::fs::remove_file(self.data.join("postmaster.pid"));
            let socket = format!(".s.PGSQL.{}", self.port);
            let _ = std::fs::remove_file(self.dir.path().join(format!("{socket}.lock")));
            let _ = std::fs::remove_file(self.dir.path().join(socket));
        }
        self.running = false;
    }

    /// Simulates a hung host: SIGSTOP to the postmaster and all its child processes. The
    /// server's sockets stay open and new TCP connections are still accepted by the kernel,
    /// but nothing answers until [`PgServer::thaw`] (which `stop` and `Drop` also do).
    pub fn freeze(&self) {
        self.signal_all(Signal::SIGSTOP);
    }

    /// Lets a [`PgServer::freeze`]d server run on (SIGCONT; harmless on a running one).
    pub fn thaw(&self) {
        self.signal_all(Signal::SIGCONT);
    }

    fn signal_all(&self, signal: Signal) {
        if let Some(pid) = self.postmaster_pid() {
            let _ = kill(Pid::from_raw(pid as i32), signal);
            for child in children_of(pid) {
                let _ = kill(Pid::from_raw(child as i32), signal);
            }
        }
    }

    /// Starts the server again on the same port and data directory after [`PgServer::stop`]
    /// or [`PgServer::kill9`] (stopping it first if it is running), and waits until ready.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.pg_ctl_start()?;
        self.wait_ready(PG_CTL_WAIT)
    }

    /// Follows a restart done by `tandem` itself: `tandem rejoin` stops this server and starts
    /// it again through `tandem_localpg::LocalServer`, which logs beside the data directory.
    /// From now on [`PgServer::log_tail`] reads that log, and `stop`/`Drop` stop that server.
    pub fn started_by_tandem(&mut self) {
        self.log = tandem_localpg::LocalServer::at(&self.data, self.port).log_path();
        self.running = true;
    }

    /// Promotes a standby to primary (`pg_ctl promote`, waits for the promotion).
    pub fn promote(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["promote"])
    }

    /// Waits until the server accepts connections (`pg_isready`), or fails with the log tail.
    pub fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let isready = self.bin.join("pg_isready");
        let port = self.port.to_string();
        let deadline = Instant::now() + timeout;
        loop {
            let mut cmd = pg_command(&isready, self.dir.path(), false)?;
            cmd.args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-d", "postgres"]).args(["-t", "2"]);
            let ready = run_capture(cmd, "", Duration::from_secs(10), "pg_isready")
                .map(|out| out.status.success())
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(anyhow!(
                    "{} not ready on port {} after {timeout:?}\n--- server log ---\n{}",
                    self.name,
                    self.port,
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The postmaster's pid from `postmaster.pid`, if the file exists.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Whether the pid in `postmaster.pid` is a live (non-zombie) process.
    fn postmaster_alive(&self) -> bool {
        self.postmaster_pid().is_some_and(is_alive)
    }

    /// `pg_ctl start -w` with the log file; marks the server running on success.
    fn pg_ctl_start(&mut self) -> anyhow::Result<()> {
        let log = self.log.to_string_lossy().into_owned();
        self.pg_ctl(&["start", "-l", &log])?;
        self.running = true;
        Ok(())
    }

    /// Runs `pg_ctl -D data -w -t 60 ARGS` as the server user; errors carry pg_ctl's output
    /// and the server log tail.
    fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut cmd = pg_command(&self.bin.join("pg_ctl"), self.dir.path(), true)?;
        cmd.arg("-D").arg(&self.data).args(["-w", "-t", &PG_CTL_WAIT.as_secs().to_string()]).args(args);
        let what = format!("pg_ctl {} ({})", args.first().unwrap_or(&""), self.name);
        run_to_file(cmd, &self.dir.path().join("pg_ctl.out"), PG_CTL_WAIT + Duration::from_secs(10), &what)
            .map_err(|e| anyhow!("{e:#}\n--- server log ---\n{}", self.log_tail()))
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.running && !self.postmaster_alive() {
            self.kill9();
        }
        if self.running {
            self.thaw();
            if let Err(e) = self.pg_ctl(&["stop", "-m", "immediate"]) {
                tracing::warn!(server = %self.name, error = %format!("{e:#}"), "immediate stop failed; killing");
                self.kill9();
            }
            self.running = false;
        }
        // `dir` (and with it the data directory) is removed when the field drops.
    }
}

/// A short, path-safe version of a server name for temp dir names (the Unix socket path
/// inside must stay under ~100 bytes).
fn short_label(name: &str) -> String {
    name.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').take(20).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_short_and_safe() {
        assert_eq!(short_label("primary/../x y"), "primaryxy");
        assert_eq!(short_label(&"a".repeat(50)).len(), 20);
    }
}
