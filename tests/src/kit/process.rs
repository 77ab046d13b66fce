//! `tandem` subprocesses for end-to-end tests: the proxy, replicator, witnesses and CLI run
//! as the real binary, pointed at [`crate::PgServer`]s, exactly as a user would run them.
//!
//! Output goes to a log file (not the test's pipes, which cargo waits on), so a failing test
//! can quote it and a crashed child cannot hang the run.

use std::ffi::OsStr;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use super::bin::require_tandem_bin;
use super::run::tail;

/// Lines of the child's log quoted in errors.
const LOG_TAIL_LINES: usize = 60;

/// A running child process of the `tandem` binary (or another program), killed on `Drop`.
#[derive(Debug)]
pub struct TandemProcess {
    /// The child; behind a mutex so `&self` methods can poll it for an early exit.
    child: Mutex<Child>,
    /// Its pid, copied out so `pid()` needs no lock.
    pid: u32,
    /// Where stdout and stderr go.
    log_path: PathBuf,
    /// Holds the log file; declared last so it is removed after the child is killed.
    _dir: TempDir,
}

impl TandemProcess {
    /// Runs `tandem ARGS`. `RUST_LOG` and the rest of the environment pass through.
    /// Fails with build instructions when the binary has not been built.
    pub fn spawn(args: &[&str]) -> anyhow::Result<TandemProcess> {
        Self::spawn_with_env(args, &[])
    }

    /// Runs `tandem ARGS` with extra environment variables (e.g. `TANDEM_*` overrides).
    pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<TandemProcess> {
        let bin = require_tandem_bin()?;
        Self::spawn_program(&bin, args, env)
    }

    /// Runs any program the same way (log file, killed on drop), for helpers such as
    /// pgbouncer in comparison tests.
    pub fn spawn_program<S: AsRef<OsStr>>(
        program: &Path,
        args: &[S],
        env: &[(&str, &str)],
    ) -> anyhow::Result<TandemProcess> {
        let dir = tempfile::Builder::new().prefix("tandem-proc-").tempdir().context("creating process log dir")?;
        let log_path = dir.path().join("output.log");
        let out = File::create(&log_path).context("creating process log file")?;
        let err = out.try_clone().context("duplicating process log handle")?;
        let mut cmd = Command::new(program);
        cmd.args(args).envs(env.iter().copied()).stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().with_context(|| format!("starting {}", program.display()))?;
        let pid = child.id();
        tracing::debug!(pid, program = %program.display(), "spawned test process");
        Ok(TandemProcess { child: Mutex::new(child), pid, log_path, _dir: dir })
    }

    /// Waits until a TCP connect to `127.0.0.1:port` succeeds (the child is listening).
    /// If the child exits first, or `timeout` passes, the error carries its log.
    pub fn wait_for_port(&self, port: u16, timeout: Duration) -> anyhow::Result<()> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status()? {
                return Err(anyhow!(
                    "process {} exited ({status}) before listening on {port}\n--- log ---\n{}",
                    self.pid,
                    self.log_tail()
                ));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(anyhow!(
                    "process {} not listening on {port} after {timeout:?}\n--- log ---\n{}",
                    self.pid,
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// The last lines of the log, for error messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log_path, LOG_TAIL_LINES)
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// SIGKILL (a crash, no cleanup) and reap.
    pub fn kill9(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGTERM (graceful shutdown request); use [`TandemProcess::wait_exit`] to see the
    /// outcome. Does nothing if the child already exited.
    pub fn terminate(&mut self) {
        // Checking first matters: once reaped, the pid may belong to someone else.
        if matches!(self.try_status(), Ok(None)) {
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        }
    }

    /// Waits for the child to exit, up to `timeout`; the error carries the log.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(anyhow!(
                    "process {} still running after {timeout:?}\n--- log ---\n{}",
                    self.pid,
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Exit status if the child has exited (reaping it), `None` while it runs.
    pub fn try_status(&self) -> anyhow::Result<Option<ExitStatus>> {
        self.lock().try_wait().with_context(|| format!("polling process {}", self.pid))
    }

    fn lock(&self) -> MutexGuard<'_, Child> {
        // Poisoning only means a panic elsewhere while holding the lock; the Child is fine.
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for TandemProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> TandemProcess {
        TandemProcess::spawn_program(Path::new("/bin/sh"), &["-c", script], &[("KIT_X", "42")]).unwrap()
    }

    #[test]
    fn log_captures_both_streams_and_env() {
        let mut p = sh("echo out; echo err >&2; echo x=$KIT_X");
        let status = p.wait_exit(Duration::from_secs(10)).unwrap();
        assert!(status.success());
        let log = p.log();
        assert!(log.contains("out") && log.contains("err") && log.contains("x=42"), "{log}");
    }

    #[test]
    fn early_exit_fails_wait_for_port_with_log() {
        let p = sh("echo dying; exit 7");
        let port = crate::free_port();
        let err = p.wait_for_port(port, Duration::from_secs(10)).unwrap_err().to_string();
        assert!(err.contains("dying"), "{err}");
    }

    #[test]
    fn terminate_and_drop_end_the_child() {
        let mut p = sh("sleep 30");
        p.terminate();
        let status = p.wait_exit(Duration::from_secs(10)).unwrap();
        assert!(!status.success());

        let p = sh("sleep 30");
        let pid = p.pid();
        drop(p);
        assert!(!crate::kit::procs::is_alive(pid));
    }

    #[test]
    fn missing_tandem_binary_says_how_to_build() {
        if crate::tandem_bin().is_file() {
            return;
        }
        let err = TandemProcess::spawn(&["--help"]).unwrap_err().to_string();
        assert!(err.contains("cargo build -p tandem"), "{err}");
    }
}
