//! A whole high-availability cluster for failover and switchover tests: a primary `pg1`,
//! two Tandem standbys `s1` and `s2` (s1 reads the relay's WAL by path, s2 over HTTP), the
//! WAL relay in the commit quorum (or async), a `tandem agent` beside each node, three
//! witnesses, and a proxy following the group.
//!
//! Every process is real and is killed on drop (the proxy and witnesses first, then the
//! relay, then the servers). Nothing waits on a fixed sleep: the helpers poll with deadlines.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use crate::cluster::run_pg_client;
use crate::kit::port::free_port;
use crate::kit::wait_until;
use crate::{PgOptions, PgServer, TandemProcess};

/// Deadline for the cluster's own steps (starting, electing, streaming).
pub const WAIT: Duration = Duration::from_secs(60);

/// The cluster. Field order is drop order.
pub struct Ha {
    /// The proxy.
    pub proxy: TandemProcess,
    /// Its client port.
    pub proxy_port: u16,
    /// More proxies ([`Ha::start_proxy`]).
    pub extra_proxies: Vec<(TandemProcess, u16)>,
    proxy_args: Vec<String>,
    /// The witnesses (None while killed).
    pub witnesses: Vec<Option<TandemProcess>>,
    /// Their API ports.
    pub witness_ports: Vec<u16>,
    witness_args: Vec<Vec<String>>,
    /// The relay (None while killed).
    pub relay: Option<TandemProcess>,
    relay_args: Vec<String>,
    /// The relay's status port.
    pub relay_port: u16,
    /// The nodes' agents, in the order of `nodes`.
    pub agents: Vec<TandemProcess>,
    /// Their ports.
    pub agent_ports: Vec<u16>,
    /// PostgreSQL nodes by name: `pg1` (the first primary), `s1`, `s2`.
    pub nodes: Vec<PgServer>,
    /// The relay's and witnesses' directories.
    pub dir: tempfile::TempDir,
    /// With [`Ha::start_partitionable`]: the only way Tandem's parts (witnesses, proxy,
    /// relay) reach `pg1`; the standbys stream from it directly.
    pub pg1_link: Option<crate::FaultProxy>,
}

impl Ha {
    /// Starts everything; `mode` is the relay's `sync` or `async`. Returns once the proxy
    /// takes writes (it holds the group's lease) and the relay reported to the group.
    pub fn start(mode: &str) -> anyhow::Result<Ha> {
        Ha::start_with(mode, false)
    }

    /// As [`Ha::start`], but the witnesses, the proxy and the relay reach `pg1` through a
    /// TCP fault proxy ([`Ha::pg1_link`]), so it can be cut off from them while it runs and
    /// its standbys still stream from it.
    pub fn start_partitionable(mode: &str) -> anyhow::Result<Ha> {
        Ha::start_with(mode, true)
    }

    fn start_with(mode: &str, partitionable: bool) -> anyhow::Result<Ha> {
        let dir = tempfile::tempdir()?;
        let pg1 = PgServer::start("pg1", PgOptions::default())?;
        let pg1_link = if partitionable { Some(crate::FaultProxy::start(&pg1.addr())?) } else { None };
        let pg1_addr = pg1_link.as_ref().map(|l| l.addr()).unwrap_or_else(|| pg1.addr());
        let relay_port = free_port();
        let relay_dir = dir.path().join("relay");
        std::fs::create_dir_all(&relay_dir)?;
        let wal = relay_dir.join("wal");
        let s1 = pg1.start_tandem_standby("s1", wal.to_str().context("relay dir")?)?;
        let s2 = pg1.start_tandem_standby("s2", &format!("http://127.0.0.1:{relay_port}"))?;
        let mut agents = Vec::new();
        let mut agent_ports = Vec::new();
        for n in [&pg1, &s1, &s2] {
            let port = free_port();
            let data = n.data_dir().display().to_string();
            let listen = format!("127.0.0.1:{port}");
            let p = TandemProcess::spawn(&["agent", "--node", n.name(), "--data-dir", &data, "--listen", &listen])?;
            p.wait_for_port(port, WAIT)?;
            agents.push(p);
            agent_ports.push(port);
        }
        let witness_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let witness_flags: Vec<String> = witness_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();

        let mut witness_args = Vec::new();
        for i in 0..3 {
            let mut a: Vec<String> = vec![
                "witness".into(),
                "--id".into(),
                (i + 1).to_string(),
                "--data-dir".into(),
                dir.path().join(format!("w{}", i + 1)).display().to_string(),
                "--primary-node".into(),
                "pg1".into(),
            ];
            a.extend(["--node".into(), format!("pg1={pg1_addr}")]);
            for n in [&s1, &s2] {
                a.extend(["--node".into(), format!("{}={}", n.name(), n.addr())]);
            }
            for (n, port) in [&pg1, &s1, &s2].iter().zip(&agent_ports) {
                a.extend(["--agent".into(), format!("{}=127.0.0.1:{port}", n.name())]);
            }
            for (j, p) in witness_ports.iter().enumerate() {
                a.extend(["--witness".into(), format!("{}=127.0.0.1:{p}", j + 1)]);
            }
            witness_args.push(a);
        }
        let mut relay_args: Vec<String> = vec![
            "replicator".into(),
            "--replication".into(),
            "physical".into(),
            "--primary".into(),
            pg1.url("postgres", "postgres"),
            "--mode".into(),
            mode.into(),
            "--data-dir".into(),
            relay_dir.display().to_string(),
            "--status-listen".into(),
            format!("127.0.0.1:{relay_port}"),
        ];
        for s in [&s1, &s2] {
            relay_args.extend(["--replica".into(), format!("{}={}", s.name(), s.url("postgres", "postgres"))]);
        }
        for w in &witness_flags {
            relay_args.extend(["--witness".into(), w.clone()]);
        }
        let mut proxy_args: Vec<String> = vec![
            "proxy".into(),
            "--primary".into(),
            format!("pg1={pg1_addr}"),
            "--replica".into(),
            format!("s1={}", s1.addr()),
            "--replica".into(),
            format!("s2={}", s2.addr()),
            "--health-interval-ms".into(),
            "100".into(),
        ];
        for w in &witness_flags {
            proxy_args.extend(["--witness".into(), w.clone()]);
        }
        let proxy_port = free_port();
        let mut first_proxy_args = proxy_args.clone();
        first_proxy_args.extend(["--listen".into(), format!("127.0.0.1:{proxy_port}")]);

        let mut witnesses = Vec::new();
        for (i, a) in witness_args.iter().enumerate() {
            let args: Vec<&str> = a.iter().map(String::as_str).collect();
            let p = TandemProcess::spawn(&args)?;
            p.wait_for_port(witness_ports[i], WAIT)?;
            witnesses.push(Some(p));
        }
        let args: Vec<&str> = first_proxy_args.iter().map(String::as_str).collect();
        let proxy = TandemProcess::spawn(&args)?;
        proxy.wait_for_port(proxy_port, WAIT)?;
        let mut ha = Ha {
            proxy,
            proxy_port,
            extra_proxies: Vec::new(),
            proxy_args,
            witnesses,
            witness_ports,
            witness_args,
            relay: None,
            relay_args,
            relay_port,
            agents,
            agent_ports,
            nodes: vec![pg1, s1, s2],
            dir,
            pg1_link,
        };
        ha.start_relay()?;
        wait_until("the relay reports its quorum to the group", WAIT, || {
            let s = ha.state().ok()?;
            (!s["replicator"]["slot"].is_null() && s["replicator"]["flushed"].is_string()).then_some(())
        })
        .with_context(|| ha.logs())?;
        wait_until("a write through the proxy", WAIT, || ha.psql("CREATE TABLE IF NOT EXISTS ha_ready (id int)").ok())
            .with_context(|| ha.logs())?;
        Ok(ha)
    }

    /// Starts one more proxy following the group; returns its client port once it takes
    /// writes.
    pub fn start_proxy(&mut self) -> anyhow::Result<u16> {
        let port = free_port();
        let mut args: Vec<&str> = self.proxy_args.iter().map(String::as_str).collect();
        let listen = format!("127.0.0.1:{port}");
        args.extend(["--listen", &listen]);
        let p = TandemProcess::spawn(&args)?;
        p.wait_for_port(port, WAIT)?;
        self.extra_proxies.push((p, port));
        let dsn = self.dsn_for(port);
        wait_until("a write through the new proxy", WAIT, || psql_at(&dsn, "SELECT 1 FROM ha_ready LIMIT 1").ok())
            .with_context(|| self.logs())?;
        Ok(port)
    }

    /// Starts (or restarts) the relay.
    pub fn start_relay(&mut self) -> anyhow::Result<()> {
        let args: Vec<&str> = self.relay_args.iter().map(String::as_str).collect();
        let p = TandemProcess::spawn(&args)?;
        p.wait_for_port(self.relay_port, WAIT).with_context(|| p.log_tail())?;
        self.relay = Some(p);
        Ok(())
    }

    /// kill -9 of the relay.
    pub fn kill_relay(&mut self) {
        if let Some(mut p) = self.relay.take() {
            p.kill9();
        }
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> &PgServer {
        self.nodes.iter().find(|n| n.name() == name).unwrap_or(&self.nodes[0])
    }

    /// The node named `name`, mutable.
    pub fn node_mut(&mut self, name: &str) -> &mut PgServer {
        let i = self.nodes.iter().position(|n| n.name() == name).unwrap_or(0);
        &mut self.nodes[i]
    }

    /// The group's cluster view from the first witness that answers.
    pub fn view(&self) -> anyhow::Result<Value> {
        let mut last = None;
        for (i, port) in self.witness_ports.iter().enumerate() {
            if self.witnesses[i].is_none() {
                continue;
            }
            match http_get(*port, "/v1/cluster") {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no witness running")))
    }

    /// The replicated state (`view()["state"]`).
    pub fn state(&self) -> anyhow::Result<Value> {
        Ok(self.view()?["state"].clone())
    }

    /// The leader's index, once one leads.
    pub fn leader(&self) -> anyhow::Result<usize> {
        wait_until("a witness leader", WAIT, || {
            let l = self.view().ok()?["leader"].as_u64()? as usize;
            self.witnesses.get(l - 1)?.as_ref().map(|_| l - 1)
        })
    }

    /// kill -9 of witness `i`.
    pub fn kill_witness(&mut self, i: usize) {
        if let Some(mut p) = self.witnesses[i].take() {
            p.kill9();
        }
    }

    /// Restarts witness `i` from its data directory.
    pub fn start_witness(&mut self, i: usize) -> anyhow::Result<()> {
        let args: Vec<&str> = self.witness_args[i].iter().map(String::as_str).collect();
        let p = TandemProcess::spawn(&args)?;
        p.wait_for_port(self.witness_ports[i], WAIT)?;
        self.witnesses[i] = Some(p);
        Ok(())
    }

    /// The group's primary now.
    pub fn primary_name(&self) -> anyhow::Result<String> {
        self.state()?["primary"].as_str().map(str::to_owned).context("no primary in the state")
    }

    /// Waits until the group published an epoch of at least `epoch` with no operation in
    /// progress; returns the state.
    pub fn wait_epoch(&self, epoch: u64, timeout: Duration) -> anyhow::Result<Value> {
        wait_until(&format!("epoch {epoch} published"), timeout, || {
            let s = self.state().ok()?;
            (s["epoch"].as_u64()? >= epoch && s["operation"].is_null()).then_some(s)
        })
        .with_context(|| self.logs())
    }

    /// libpq key/value string for the proxy.
    pub fn dsn(&self) -> String {
        self.dsn_for(self.proxy_port)
    }

    /// libpq key/value string for a proxy on `port`.
    pub fn dsn_for(&self, port: u16) -> String {
        format!("host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=5")
    }

    /// Runs `sql` through the proxy with psql; trimmed stdout, or the error.
    pub fn psql(&self, sql: &str) -> anyhow::Result<String> {
        psql_at(&self.dsn(), sql)
    }

    /// Every process's log tail, for failure messages.
    pub fn logs(&self) -> String {
        let mut parts = vec![format!("proxy:\n{}", self.proxy.log_tail())];
        for (i, w) in self.witnesses.iter().enumerate() {
            if let Some(w) = w {
                parts.push(format!("witness {}:\n{}", i + 1, w.log_tail()));
            }
        }
        if let Some(r) = &self.relay {
            parts.push(format!("relay:\n{}", r.log_tail()));
        }
        for (a, n) in self.agents.iter().zip(&self.nodes) {
            parts.push(format!("agent of {}:\n{}", n.name(), a.log_tail()));
        }
        parts.join("\n---\n")
    }

    /// The relay's directory.
    pub fn relay_dir(&self) -> PathBuf {
        self.dir.path().join("relay")
    }
}

/// Runs `sql` with psql against `dsn`; trimmed stdout, or the error.
pub fn psql_at(dsn: &str, sql: &str) -> anyhow::Result<String> {
    {
        let out = run_pg_client(
            "psql",
            |cmd| {
                cmd.args([
                    "-X",
                    "-q",
                    "-A",
                    "-t",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-v",
                    "VERBOSITY=verbose",
                    "-d",
                    dsn,
                    "-f",
                    "-",
                ]);
            },
            sql,
        )?;
        anyhow::ensure!(out.status.success(), "psql through the proxy: {}", out.stderr.trim());
        Ok(out.stdout.trim().to_owned())
    }
}

/// The ids in the checker's table `checked` on `pg`, in order.
pub fn checked_ids(pg: &PgServer) -> anyhow::Result<Vec<i64>> {
    let out = pg.psql("postgres", "SELECT id FROM checked ORDER BY id")?;
    out.lines().filter(|l| !l.trim().is_empty()).map(|l| Ok(l.trim().parse()?)).collect()
}

/// `pg_is_in_recovery()` on `pg`; None when it does not answer.
pub fn in_recovery(pg: &PgServer) -> Option<bool> {
    Some(pg.psql("postgres", "SELECT pg_is_in_recovery()").ok()? == "t")
}

/// `GET path` on a witness: the JSON body.
pub fn http_get(port: u16, path: &str) -> anyhow::Result<Value> {
    let (code, body) = http(port, "GET", path, None, None)?;
    anyhow::ensure!(code == 200, "GET {path}: {code} {body}");
    Ok(serde_json::from_str(&body)?)
}

/// One HTTP/1.1 request on loopback, with the cluster's bearer `token` when given:
/// (status, body). Used for the witnesses' and the relay's APIs.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.unwrap_or("");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, rest) = raw.split_once("\r\n\r\n").context("no HTTP head")?;
    let code: u16 = head.split_whitespace().nth(1).context("no status")?.parse()?;
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(rest) } else { rest.to_owned() };
    Ok((code, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
