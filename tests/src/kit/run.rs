//! Running PostgreSQL programs for the kit: as the right OS user, detached from the test's
//! output pipes, with a time limit, and with errors that carry the program's output.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root (CI, containers) the
//! server programs run as the `postgres` OS user and the directories they write are chowned.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};

/// Gives `path` to the server user (no-op when not root).
pub(crate) fn chown_for_server(path: &Path) -> anyhow::Result<()> {
    Ok(tandem_localpg::chown_for_server(path)?)
}

/// A command for a PostgreSQL program: server user, clean PG* environment, stdin closed,
/// working directory `cwd` (the server user must be able to enter it).
pub(crate) fn pg_command(program: &Path, cwd: &Path, as_server_user: bool) -> anyhow::Result<Command> {
    if as_server_user {
        return Ok(tandem_localpg::server_command(program, cwd)?);
    }
    let mut cmd = Command::new(program);
    cmd.current_dir(cwd).stdin(Stdio::null());
    for var in tandem_localpg::LIBPQ_ENV {
        cmd.env_remove(var);
    }
    Ok(cmd)
}

/// Runs `cmd` with stdout and stderr appended to `out_file` (never the test's own pipes, so a
/// daemon it leaves behind cannot hold them open), killing it after `timeout`.
/// On failure the error holds `what`, the exit status and the tail of `out_file`.
pub(crate) fn run_to_file(mut cmd: Command, out_file: &Path, timeout: Duration, what: &str) -> anyhow::Result<()> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(out_file)
        .with_context(|| format!("opening {}", out_file.display()))?;
    let err = out.try_clone().context("duplicating output file handle")?;
    cmd.stdout(out).stderr(err);
    let mut child = cmd.spawn().with_context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().with_context(|| format!("{what}: wait"))? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(anyhow!("{what}: timed out after {timeout:?}\n--- output ---\n{}", tail(out_file, 40)));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if status.success() {
        Ok(())
    } else {
        Err(anyhow!("{what}: {status}\n--- output ---\n{}", tail(out_file, 40)))
    }
}

/// What a captured run produced.
pub(crate) struct Captured {
    /// Exit status of the program.
    pub status: std::process::ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

/// Runs `cmd` with `input` on stdin and captures stdout/stderr, killing it after `timeout`.
///
/// Files stand in for pipes: nothing can deadlock on a full pipe, and a daemon the program
/// might leave behind cannot keep the test waiting for EOF.
pub(crate) fn run_capture(mut cmd: Command, input: &str, timeout: Duration, what: &str) -> anyhow::Result<Captured> {
    let mut stdin = tempfile::tempfile().context("temp file for stdin")?;
    std::io::Write::write_all(&mut stdin, input.as_bytes()).context("writing stdin file")?;
    stdin.seek(SeekFrom::Start(0)).context("rewinding stdin file")?;
    let mut stdout = tempfile::tempfile().context("temp file for stdout")?;
    let mut stderr = tempfile::tempfile().context("temp file for stderr")?;
    cmd.stdin(stdin)
        .stdout(stdout.try_clone().context("dup stdout file")?)
        .stderr(stderr.try_clone().context("dup stderr file")?);
    let mut child = cmd.spawn().with_context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().with_context(|| format!("{what}: wait"))? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(anyhow!("{what}: timed out after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let read_all = |f: &mut File| -> anyhow::Result<String> {
        f.seek(SeekFrom::Start(0)).context("rewinding output file")?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).context("reading output file")?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    Ok(Captured { status, stdout: read_all(&mut stdout)?, stderr: read_all(&mut stderr)? })
}

/// The last `lines` lines of a text file (at most the last 64 KiB are read), or a note
/// saying why there is nothing. Used to make failures explain themselves.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("(no file {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return format!("(cannot read {})", path.display());
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return format!("(cannot read {})", path.display());
    }
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let body: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, body).unwrap();
        assert_eq!(tail(&p, 2), "line 99\nline 100");
        assert!(tail(&dir.path().join("missing"), 2).starts_with("(no file"));
    }

    #[test]
    fn failing_command_reports_output() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo boom >&2; exit 3"]);
        let err =
            run_to_file(cmd, &dir.path().join("out"), Duration::from_secs(10), "sh test").unwrap_err().to_string();
        assert!(err.contains("boom"), "{err}");
        assert!(err.contains("sh test"), "{err}");
    }

    #[test]
    fn capture_feeds_stdin_and_splits_outputs() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "cat; echo err >&2"]);
        let out = run_capture(cmd, "hello\n", Duration::from_secs(10), "cat").unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, "hello\n");
        assert_eq!(out.stderr, "err\n");
    }

    #[test]
    fn hung_command_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let started = Instant::now();
        let err =
            run_to_file(cmd, &dir.path().join("out"), Duration::from_millis(200), "sleep").unwrap_err().to_string();
        assert!(err.contains("timed out"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
