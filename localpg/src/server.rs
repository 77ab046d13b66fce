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

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) -> Result<(), LocalPgError> {
        let log = self.parent().join(format!("{}.log", self.name()));
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

fn append(path: &Path, text: &str) -> Result<(), LocalPgError> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(LocalPgError::io(format!("open {}", path.display())))?;
    f.write_all(text.as_bytes()).map_err(LocalPgError::io(format!("write {}", path.display())))
}
