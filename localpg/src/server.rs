//! One PostgreSQL server in a data directory that outlives the process
//! (`tandem demo --data-dir`), started and stopped with `pg_ctl`.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use crate::{bin_dir, chown_for_server, server_command, LocalPgError};

/// How a new server is set up.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// Extra `postgresql.conf` lines (`name = value`).
    pub extra: Vec<String>,
}

/// A server in `data_dir`, with its socket and log beside it.
#[derive(Clone, Debug)]
pub struct LocalServer {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Its port.
    pub port: u16,
}

fn check(program: &str, out: Output) -> Result<(), LocalPgError> {
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    let tail: String = text.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    Err(LocalPgError::Failed { program: program.to_owned(), status: out.status.to_string(), output: tail })
}

impl LocalServer {
    /// The server of an existing or future data directory.
    pub fn at(data_dir: impl Into<PathBuf>, port: u16) -> LocalServer {
        LocalServer { data_dir: data_dir.into(), port }
    }

    /// Whether the data directory has been initialised.
    pub fn exists(&self) -> bool {
        self.data_dir.join("PG_VERSION").is_file()
    }

    fn parent(&self) -> &Path {
        self.data_dir.parent().unwrap_or(Path::new("/"))
    }

    /// Runs initdb (trust auth on loopback, superuser `postgres`) and writes the settings.
    pub fn init(&self, settings: &ServerSettings) -> Result<(), LocalPgError> {
        let parent = self.parent().to_path_buf();
        std::fs::create_dir_all(&parent).map_err(LocalPgError::io(format!("create {}", parent.display())))?;
        chown_for_server(&parent)?;
        let out = server_command(&bin_dir()?.join("initdb"), &parent)?
            .args(["-D"])
            .arg(&self.data_dir)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"])
            .output()
            .map_err(LocalPgError::io("run initdb"))?;
        check("initdb", out)?;
        let mut conf = format!(
            "\n# written by tandem\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n",
            settings.port,
            parent.display()
        );
        for line in &settings.extra {
            conf.push_str(line);
            conf.push('\n');
        }
        append(&self.data_dir.join("postgresql.conf"), &conf)?;
        append(
            &self.data_dir.join("pg_hba.conf"),
            "host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n",
        )
    }

    /// Where [`LocalServer::start`] sends the server's log: `<data dir>.log`, beside the data
    /// directory rather than in it (pg_rewind and pg_basebackup would copy a log inside it
    /// from node to node).
    pub fn log_path(&self) -> PathBuf {
        self.parent().join(format!("{}.log", self.name()))
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) -> Result<(), LocalPgError> {
        let log = self.log_path();
        let out = server_command(&bin_dir()?.join("pg_ctl"), self.parent())?
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "start"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(LocalPgError::io("run pg_ctl start"))?;
        check("pg_ctl start", out)
    }

    /// Whether a postmaster runs in the data directory (`pg_ctl status`: a `postmaster.pid`
    /// whose process is alive; a stale one left by a crash counts as not running).
    pub fn is_running(&self) -> Result<bool, LocalPgError> {
        let out = server_command(&bin_dir()?.join("pg_ctl"), self.parent())?
            .arg("-D")
            .arg(&self.data_dir)
            .arg("status")
            .output()
            .map_err(LocalPgError::io("run pg_ctl status"))?;
        // 0: running; 3: not running; 4: not a data directory.
        match out.status.code() {
            Some(0) => Ok(true),
            Some(3) => Ok(false),
            _ => check("pg_ctl status", out).map(|()| false),
        }
    }

    /// Removes a `postmaster.pid` left by a server that died (kill -9, a crash): `Ok(true)`
    /// when there was one. Its process being gone is not enough for PostgreSQL when it is a
    /// zombie (dead but not yet reaped, as under an init that does not reap): pg_ctl and a
    /// new postmaster both take a zombie's pid for a live server.
    pub fn clear_dead_postmaster(&self) -> Result<bool, LocalPgError> {
        let path = self.data_dir.join("postmaster.pid");
        let Some(pid) = self.pid_in_file() else { return Ok(false) };
        if process_alive(pid) {
            return Ok(false);
        }
        std::fs::remove_file(&path).map_err(LocalPgError::io(format!("remove stale {}", path.display())))?;
        tracing::info!(pid, file = %path.display(), "removed the postmaster.pid of a server that is gone");
        Ok(true)
    }

    /// The postmaster's pid when `postmaster.pid` names a live (not zombie) process: a
    /// server runs in the data directory. Reads a file and `/proc`, runs no program.
    pub fn postmaster_pid(&self) -> Option<i32> {
        self.pid_in_file().filter(|&pid| process_alive(pid))
    }

    /// The first line of `postmaster.pid`, if it is a pid.
    fn pid_in_file(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse::<i32>().ok().filter(|&pid| pid > 0)
    }

    /// Stops the server (`fast` mode: clients are disconnected, nothing is lost).
    pub fn stop(&self) -> Result<(), LocalPgError> {
        if !self.data_dir.join("postmaster.pid").exists() {
            return Ok(());
        }
        let out = server_command(&bin_dir()?.join("pg_ctl"), self.parent())?
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "fast", "-w", "-t", "60", "stop"])
            .output()
            .map_err(LocalPgError::io("run pg_ctl stop"))?;
        check("pg_ctl stop", out)
    }

    /// The data directory's last path component.
    pub fn name(&self) -> String {
        self.data_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "pg".into())
    }
}

/// Whether `pid` is a live process: it exists (or belongs to another user) and is not a
/// zombie (`/proc/PID/stat` state `Z`/`X`, where there is a /proc).
pub fn process_alive(pid: i32) -> bool {
    use nix::errno::Errno;
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Err(Errno::ESRCH) => false,
        Err(_) => true,
        Ok(()) => {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The state follows the command name, which is in parentheses and may hold any byte.
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X'))
        }
    }
}

fn append(path: &Path, text: &str) -> Result<(), LocalPgError> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(LocalPgError::io(format!("open {}", path.display())))?;
    f.write_all(text.as_bytes()).map_err(LocalPgError::io(format!("write {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_and_zombie_postmasters_are_cleared_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let server = LocalServer::at(dir.path(), 5432);
        let pid_file = dir.path().join("postmaster.pid");
        assert!(!server.clear_dead_postmaster().unwrap(), "no file");

        std::fs::write(&pid_file, format!("{}\n{}\n", std::process::id(), dir.path().display())).unwrap();
        assert!(!server.clear_dead_postmaster().unwrap(), "a live process");
        assert!(pid_file.exists());
        assert_eq!(server.postmaster_pid(), Some(std::process::id() as i32));

        // A zombie: exited, not reaped yet.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while process_alive(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::fs::write(&pid_file, format!("{pid}\n")).unwrap();
        assert_eq!(server.postmaster_pid(), None, "a zombie is no server");
        assert!(server.clear_dead_postmaster().unwrap(), "a zombie is no server");
        assert!(!pid_file.exists());

        // Gone altogether.
        child.wait().unwrap();
        std::fs::write(&pid_file, format!("{pid}\n")).unwrap();
        assert!(server.clear_dead_postmaster().unwrap());
    }
}
