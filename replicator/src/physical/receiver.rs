//! The receiving half of the WAL relay: PostgreSQL's own `pg_receivewal`, supervised.
//!
//! Place in the data flow: primary → **pg_receivewal** → the relay's WAL directory
//! ([`super::segments`]). Why not hand-written: `pg_receivewal --synchronous --slot` is
//! PostgreSQL's own tested code for exactly this job: it writes segments (the newest as a
//! preallocated `.partial`), fsyncs after every batch of received WAL and only then reports
//! the flush position (so the relay counts in `synchronous_standby_names` like a standby),
//! restarts from the beginning of its newest partial segment, and follows timeline switches
//! (history files included). What it lacks is Tandem's: checking which system it streams
//! from before every start (see [`super::identity`]), repairing a torn tail it would refuse
//! ([`repair_tail`]), restarting with backoff, stopping cleanly, and reporting its state.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::follow::Target;
use super::segments::{self, PARTIAL};
use super::RelayError;

/// What the supervisor knows about the receiver, for status output.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ReceiverState {
    /// A `pg_receivewal` process is running.
    pub running: bool,
    /// How many times it was started.
    pub starts: u64,
    /// The last error it printed, cleared when a run lasts.
    pub last_error: Option<String>,
}

/// Shared view of [`ReceiverState`].
pub type SharedReceiverState = Arc<Mutex<ReceiverState>>;

/// How to run the receiver.
#[derive(Clone, Debug)]
pub struct ReceiverSpec {
    /// The relay's WAL directory.
    pub wal_dir: PathBuf,
    /// The primary's connection string, as given (libpq reads URL and key=value forms).
    pub dsn: String,
    /// The relay's slot (and `application_name`).
    pub slot: String,
    /// Bytes per WAL segment on the primary.
    pub seg_size: u64,
}

/// Makes the newest segment something `pg_receivewal` restarts from: a crash can leave the
/// `.partial` file shorter than a segment (torn while being preallocated) or a complete-named
/// segment short (torn between write and rename is not possible, but a copy-in may be).
/// Either is padded to full size as a `.partial`, so `pg_receivewal` streams that segment
/// again from its start and overwrites whatever tail was torn. Returns what was repaired.
pub fn repair_tail(wal_dir: &Path, seg_size: u64) -> std::io::Result<Option<String>> {
    let files = segments::list(wal_dir, seg_size)?;
    let Some(newest) = files.last() else { return Ok(None) };
    let len = std::fs::metadata(&newest.path)?.len();
    if len == seg_size {
        return Ok(None);
    }
    let partial_path = if newest.partial {
        newest.path.clone()
    } else {
        let p = wal_dir.join(format!("{}{PARTIAL}", newest.name.file_name(seg_size)));
        std::fs::rename(&newest.path, &p)?;
        p
    };
    let f = std::fs::OpenOptions::new().write(true).open(&partial_path)?;
    f.set_len(seg_size)?;
    f.sync_all()?;
    Ok(Some(format!("{} was {len} bytes; padded to {seg_size} to be streamed again", partial_path.display())))
}

/// Runs `pg_receivewal` until `stop`, restarting it (after `before_start` says the target
/// primary is still the same system) with backoff when it exits. It streams from the
/// primary `target` names, is stopped when the target moves (and restarted towards the new
/// one), and does not run while the target is fenced.
pub async fn supervise<F, Fut>(
    spec: ReceiverSpec,
    state: SharedReceiverState,
    stop: CancellationToken,
    mut target: watch::Receiver<Target>,
    mut before_start: F,
) -> Result<(), RelayError>
where
    F: FnMut(Target) -> Fut,
    Fut: std::future::Future<Output = Result<(), RelayError>>,
{
    let program = tandem_localpg::tool("pg_receivewal").map_err(RelayError::LocalPg)?;
    let mut backoff = Duration::from_millis(200);
    while !stop.is_cancelled() {
        let now = target.borrow_and_update().clone();
        if now.fenced {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = target.changed() => continue,
            }
        }
        let checked = before_start(now.clone()).await;
        if let Err(e) = checked {
            if e.is_fatal() {
                return Err(e);
            }
            record_error(&state, e.to_string());
        } else {
            if let Some(repaired) = repair_tail(&spec.wal_dir, spec.seg_size).map_err(RelayError::io("repair"))? {
                tracing::warn!(%repaired, "torn WAL segment tail in the relay");
            }
            let started = tokio::time::Instant::now();
            run_once(&program, &spec, &now, &state, &stop, &mut target).await?;
            if started.elapsed() > Duration::from_secs(10) {
                backoff = Duration::from_millis(200);
            }
            if target.has_changed().unwrap_or(false) {
                // Moved by the group: follow at once.
                backoff = Duration::from_millis(200);
                continue;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = target.changed() => {}
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    Ok(())
}

fn record_error(state: &SharedReceiverState, error: String) {
    tracing::warn!(%error, "WAL relay receiver");
    if let Ok(mut s) = state.lock() {
        s.last_error = Some(error);
    }
}

/// One run of `pg_receivewal`, until it exits or `stop` (then SIGINT, its clean stop, and
/// SIGKILL after 5 s).
async fn run_once(
    program: &Path,
    spec: &ReceiverSpec,
    to: &Target,
    state: &SharedReceiverState,
    stop: &CancellationToken,
    target: &mut watch::Receiver<Target>,
) -> Result<(), RelayError> {
    let mut cmd = tandem_localpg::server_command(program, &spec.wal_dir).map_err(RelayError::LocalPg)?;
    cmd.arg("--directory")
        .arg(&spec.wal_dir)
        .args(["--slot", &spec.slot, "--synchronous", "--no-loop", "--verbose", "--status-interval", "1"])
        .arg("--dbname")
        .arg(&spec.dsn);
    if let Some((host, port)) = &to.primary {
        // Later options override the connection string's (libpq's rule).
        cmd.arg("--host").arg(host).arg("--port").arg(port.to_string());
    }
    cmd
        // The name the primary lists in pg_stat_replication and synchronous_standby_names.
        .env("PGAPPNAME", &spec.slot)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group: a Ctrl-C at the terminal reaches the relay, which leaves the
        // commit quorum first and then stops the receiver, not both at once.
        .process_group(0);
    // If the relay dies (SIGKILL included), its receiver must not stream on unsupervised,
    // holding the slot and writing the directory a restarted relay takes over.
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing. std runs pre_exec
    // closures after switching uid, which would otherwise clear the setting.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
    let mut child =
        tokio::process::Command::from(cmd).kill_on_drop(true).spawn().map_err(RelayError::io("start pg_receivewal"))?;
    if let Ok(mut s) = state.lock() {
        s.running = true;
        s.starts += 1;
    }
    let stderr = child.stderr.take();
    let log_state = state.clone();
    let logger = tokio::spawn(async move {
        let Some(stderr) = stderr else { return };
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("error") || line.contains("could not") || line.contains("FATAL") {
                record_error(&log_state, line);
            } else {
                tracing::debug!(line = %line, "pg_receivewal");
            }
        }
    });
    let moved = async {
        loop {
            if target.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            if target.borrow().clone() != *to {
                return;
            }
        }
    };
    let status = tokio::select! {
        status = child.wait() => status.map_err(RelayError::io("wait for pg_receivewal"))?,
        _ = async { tokio::select! { _ = stop.cancelled() => {}, _ = moved => {} } } => {
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGINT);
            }
            match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                Ok(status) => status.map_err(RelayError::io("wait for pg_receivewal"))?,
                Err(_) => {
                    let _ = child.kill().await;
                    child.wait().await.map_err(RelayError::io("wait for pg_receivewal"))?
                }
            }
        }
    };
    let _ = logger.await;
    if let Ok(mut s) = state.lock() {
        s.running = false;
    }
    if !stop.is_cancelled() && !target.has_changed().unwrap_or(false) {
        tracing::info!(%status, "pg_receivewal exited; restarting");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 1024 * 1024;

    #[test]
    fn a_short_newest_segment_is_padded_as_partial() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("000000010000000000000001"), vec![1u8; SEG as usize]).unwrap();
        std::fs::write(dir.path().join("000000010000000000000002.partial"), vec![1u8; 1000]).unwrap();
        let repaired = repair_tail(dir.path(), SEG).unwrap();
        assert!(repaired.unwrap().contains("was 1000 bytes"));
        let meta = std::fs::metadata(dir.path().join("000000010000000000000002.partial")).unwrap();
        assert_eq!(meta.len(), SEG);
        assert_eq!(repair_tail(dir.path(), SEG).unwrap(), None, "a full-size tail needs nothing");

        std::fs::write(dir.path().join("000000010000000000000003"), vec![1u8; 10]).unwrap();
        repair_tail(dir.path(), SEG).unwrap().unwrap();
        assert!(!dir.path().join("000000010000000000000003").exists());
        assert!(dir.path().join("000000010000000000000003.partial").exists());
    }
}
