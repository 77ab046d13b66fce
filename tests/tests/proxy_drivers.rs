//! Real client drivers through the proxy: psycopg 3, asyncpg and node-postgres run the
//! scripts in `tests/drivers/` against a primary + one standby + `tandem proxy` in
//! transaction mode. Each script runs every check twice, directly against the primary and
//! through the proxy, and exits non-zero when the results differ (rows, SQLSTATEs, hangs,
//! dropped connections); see the scripts' headers for what they exercise.
//!
//! The drivers are not Rust crates: `.ci/run` installs them (`pip install "psycopg[binary]"
//! asyncpg`, `npm install pg pg-cursor` into `/var/tmp/tandem-ci-node`). On a machine
//! without them a script exits 2 and the test says so on stderr and skips that driver.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tandem_tests::{init_tracing, Cluster, ClusterOptions, PgOptions};

/// Longest a driver script may run (each takes a few seconds).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// Where `.ci/run` installs node-postgres; `TANDEM_NODE_MODULES` overrides it.
const NODE_MODULES: &str = "/var/tmp/tandem-ci-node/node_modules";

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("drivers").join(name)
}

/// What a script did: `None` when its driver is not installed.
struct Run {
    status: Option<i32>,
    output: String,
}

/// Runs `program script --direct D --proxy P --mode transaction`, killing it after
/// [`SCRIPT_TIMEOUT`].
fn run_script(mut cmd: Command, direct: &str, proxy: &str) -> anyhow::Result<Run> {
    cmd.args(["--direct", direct, "--proxy", proxy, "--mode", "transaction"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Run { status: None, output: format!("{cmd:?}: not found") })
        }
        Err(e) => return Err(e).with_context(|| format!("starting {cmd:?}")),
    };
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if started.elapsed() > SCRIPT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not finish within {SCRIPT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = format!("{}{}", out_reader.join().unwrap_or_default(), err_reader.join().unwrap_or_default());
    Ok(Run { status: status.code(), output })
}

fn python(script_name: &str) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(script(script_name));
    cmd
}

fn node(script_name: &str) -> Command {
    let modules = std::env::var("TANDEM_NODE_MODULES").unwrap_or_else(|_| NODE_MODULES.to_string());
    let mut cmd = Command::new("node");
    cmd.arg(script(script_name)).env("NODE_PATH", modules);
    cmd
}

#[test]
fn drivers_through_the_proxy_behave_like_postgres() -> anyhow::Result<()> {
    init_tracing();
    // The scripts read through the proxy (so from the replica) what another of their
    // connections just wrote, as they may against PostgreSQL itself; a synchronous standby
    // that applies before the commit returns makes both runs see the same data.
    let mut pg = PgOptions::default();
    pg.settings.push(("synchronous_standby_names".into(), "*".into()));
    pg.settings.push(("synchronous_commit".into(), "remote_apply".into()));
    let c = Cluster::start(ClusterOptions { replicas: 1, pg, ..ClusterOptions::default() })?;
    let direct = c.primary.dsn("postgres", "postgres");
    let proxy = c.dsn("postgres", "postgres");
    let mut failures = Vec::new();
    let mut ran = 0;
    for (name, cmd) in [
        ("psycopg", python("psycopg_suite.py")),
        ("asyncpg", python("asyncpg_suite.py")),
        ("node-postgres", node("node_pg_suite.js")),
    ] {
        let started = Instant::now();
        let run = run_script(cmd, &direct, &proxy)?;
        match run.status {
            Some(0) => {
                ran += 1;
                eprintln!("{name}: all checks match PostgreSQL ({:?})", started.elapsed());
            }
            None | Some(2) => {
                eprintln!("SKIPPED {name}: driver not installed here (.ci/run installs it)\n{}", run.output.trim())
            }
            Some(code) => failures.push(format!("{name} exited {code}:\n{}", run.output)),
        }
    }
    if !failures.is_empty() {
        bail!("{}\n--- proxy log ---\n{}", failures.join("\n"), c.proxy.log_tail());
    }
    eprintln!("{ran} of 3 driver suites ran");
    Ok(())
}
