//! The agent's operations on its server: report, stop, start. All blocking (callers use
//! `spawn_blocking`); the HTTP side is [`super`].
//!
//! Place in the flow: witness leader → agent API → **here** → signals, `pg_controldata` and
//! `pg_ctl start` on this host. The stop does not use `pg_ctl stop -w`, which checks every
//! 100 ms whether the server is gone: a switchover's write pause lasts until the old primary
//! is down, so the agent sends the postmaster SIGINT (what `pg_ctl stop -m fast` sends)
//! itself and looks every 10 ms.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tandem_core::agent::{ControlReport, NodeReport, StartReply, StartRequest, StopReply};
use tandem_core::NodeId;
use tandem_localpg::{process_alive, LocalServer};

use super::AgentError;
use crate::physical::rejoin::{local, RejoinError};
use crate::physical::standby::{self, StandbySettings};

/// How long a fast shutdown may take before the stop fails.
pub const STOP_BOUND: Duration = Duration::from_secs(60);
/// How often the stop looks whether the postmaster is gone.
const STOP_POLL: Duration = Duration::from_millis(10);

/// `standby.signal` in `dir`.
fn standby_signal(dir: &Path) -> bool {
    dir.join("standby.signal").exists()
}

/// The server's control data (`pg_controldata`).
pub fn control(dir: &Path) -> Result<ControlReport, AgentError> {
    let c = local::control(dir).map_err(|e| match e {
        RejoinError::Refused(m) | RejoinError::Parse(m) => AgentError::Control(m),
        other => AgentError::Control(other.to_string()),
    })?;
    Ok(ControlReport { state: c.state, checkpoint: c.checkpoint, checkpoint_tli: c.checkpoint_tli, redo: Some(c.redo) })
}

/// `GET /v1/node`: whether a postmaster runs, `standby.signal`, the control data (none when
/// `pg_controldata` cannot read `dir`; the reason is logged).
pub fn report(node: &NodeId, dir: &Path) -> NodeReport {
    let control = control(dir).inspect_err(|e| tracing::warn!(error = %e, "no control data")).ok();
    NodeReport {
        node: node.clone(),
        data_dir: dir.display().to_string(),
        running: LocalServer::at(dir, 0).postmaster_pid().is_some(),
        standby_signal: standby_signal(dir),
        control,
    }
}

/// `POST /v1/stop`: a fast shutdown of the running server, then its control data, which
/// must show a clean shutdown (else [`AgentError::NotClean`]: it crashed, or was down after
/// a crash already). A server that is not running is only reported (a `postmaster.pid` of a
/// dead process is removed first).
pub fn stop(dir: &Path) -> Result<StopReply, AgentError> {
    let server = LocalServer::at(dir, 0);
    server.clear_dead_postmaster()?;
    let stopped_now = match server.postmaster_pid() {
        Some(pid) => {
            fast_shutdown(pid, STOP_BOUND)?;
            // A postmaster that died instead of shutting down leaves its pid file behind.
            server.clear_dead_postmaster()?;
            true
        }
        None => false,
    };
    let control = control(dir)?;
    if !control.is_clean_shutdown() {
        return Err(AgentError::NotClean { state: control.state });
    }
    Ok(StopReply { stopped_now, control })
}

/// Sends the postmaster SIGINT (fast shutdown: sessions ended, a shutdown checkpoint, WAL
/// senders drained) and waits until the process is gone, looking every [`STOP_POLL`]. The
/// postmaster removes `postmaster.pid` before it exits.
fn fast_shutdown(pid: i32, bound: Duration) -> Result<(), AgentError> {
    let started = Instant::now();
    match kill(Pid::from_raw(pid), Signal::SIGINT) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(source) => return Err(AgentError::Signal { pid, source }),
    }
    while process_alive(pid) {
        if started.elapsed() >= bound {
            return Err(AgentError::StopTimeout { pid, secs: bound.as_secs() });
        }
        std::thread::sleep(STOP_POLL);
    }
    // When the agent is the reaper of orphans (PID 1 in a container), the postmaster is its
    // child by now and would stay a zombie; anywhere else this finds no child of ours.
    let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
    Ok(())
}

/// `POST /v1/start`: with `standby`, the standby settings and `standby.signal` are written
/// first (the fence's `default_transaction_read_only` dropped); then `pg_ctl start`, which
/// waits until the server accepts connections. A running server is left alone, unless a
/// standby was asked for and it runs as a primary (a conflict: stop it first).
pub fn start(node: &NodeId, dir: &Path, req: &StartRequest) -> Result<StartReply, AgentError> {
    let server = LocalServer::at(dir, 0);
    server.clear_dead_postmaster()?;
    if server.postmaster_pid().is_some() {
        let in_recovery = standby_signal(dir);
        if req.standby.is_some() && !in_recovery {
            return Err(AgentError::Conflict("running as a primary: stop it first".into()));
        }
        return Ok(StartReply { started_now: false, in_recovery });
    }
    if let Some(s) = &req.standby {
        let control = control(dir)?;
        if !may_follow(&control.state) {
            return Err(AgentError::Conflict(format!(
                "not starting as a standby: the server was not shut down cleanly (pg_controldata says {:?}), so \
                 its WAL may go past the new primary's; rejoin it with `tandem rejoin` (pg_rewind)",
                control.state
            )));
        }
        let settings = StandbySettings {
            name: node.clone(),
            primary_conninfo: s.primary_conninfo.clone(),
            slot: s.slot.clone(),
            port: None,
            restore_command: s.restore_command.clone(),
        };
        standby::write_settings(dir, &format!("tandem agent {node}: standby"), &settings)?;
    }
    server.start()?;
    Ok(StartReply { started_now: true, in_recovery: standby_signal(dir) })
}

/// Whether a stopped server in this cluster state may start as a standby of another server
/// without a rewind: it shut down cleanly, or it was a standby already (whose WAL came from
/// a primary). A primary that crashed ("in production") may hold WAL nobody else has.
fn may_follow(state: &str) -> bool {
    matches!(state, "shut down" | "shut down in recovery" | "in archive recovery")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_clean_or_standby_state_may_follow_a_new_primary() {
        for ok in ["shut down", "shut down in recovery", "in archive recovery"] {
            assert!(may_follow(ok), "{ok}");
        }
        for crashed in ["in production", "in crash recovery", "starting up"] {
            assert!(!may_follow(crashed), "{crashed}");
        }
    }

    #[test]
    fn a_fast_shutdown_waits_for_the_process_and_is_bounded() {
        // SIGINT ends it; it is our child, so the stop reaps it as an agent at PID 1 would.
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        fast_shutdown(pid, Duration::from_secs(10)).unwrap();
        assert!(!process_alive(pid));
        let _ = child.wait();

        // A process that ignores SIGINT outlives the bound.
        let mut stubborn = std::process::Command::new("sh")
            .args(["-c", "trap '' INT; echo ready; sleep 30"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stubborn.stdout.take().unwrap()), &mut ready).unwrap();
        assert_eq!(ready.trim(), "ready", "the trap is set");
        let pid = stubborn.id() as i32;
        let err = fast_shutdown(pid, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, AgentError::StopTimeout { .. }), "{err}");
        let _ = stubborn.kill();
        let _ = stubborn.wait();
    }

    #[test]
    fn a_directory_without_a_server_reports_nothing_running() {
        let dir = tempfile::tempdir().unwrap();
        let r = report(&"pg1".parse().unwrap(), dir.path());
        assert!(!r.running && !r.standby_signal);
    }
}
