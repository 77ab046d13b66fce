//! `tandem proxy`: flags → [`ProxyConfig`] → [`tandem_proxy::run`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use tandem_core::{NodeAddr, NodeId};
use tandem_proxy::config::{AuthMethod, LoadBalance, NodeConfig, PoolMode, ServerTlsMode, TlsConfig, UserConfig};
use tandem_proxy::ProxyConfig;
use tokio_util::sync::CancellationToken;

/// Flags of `tandem proxy`; each overrides the `[proxy]` table of the cluster file.
#[derive(Args, Debug, Clone, Default)]
pub struct ProxyArgs {
    /// Address to accept clients on [default: 127.0.0.1:6432].
    #[arg(long, env = "TANDEM_LISTEN")]
    listen: Option<SocketAddr>,
    /// The primary: HOST:PORT or NAME=HOST:PORT.
    #[arg(long, env = "TANDEM_PRIMARY")]
    primary: Option<String>,
    /// A replica: HOST:PORT or NAME=HOST:PORT; repeat for more.
    #[arg(long = "replica", env = "TANDEM_REPLICAS", value_delimiter = ',')]
    replicas: Vec<String>,
    /// `transaction` (default) or `session`.
    #[arg(long, env = "TANDEM_POOL_MODE")]
    pool_mode: Option<String>,
    /// Client authentication: `trust` (default), `md5`, `scram`, or `passthrough` (the
    /// primary's pg_hba.conf decides per user and the client answers the server's request).
    #[arg(long, env = "TANDEM_AUTH")]
    auth: Option<String>,
    /// A user the proxy knows: NAME=PASSWORD (plain, md5... or SCRAM-SHA-256$... secret); repeat for more.
    #[arg(long = "user", env = "TANDEM_USERS", value_delimiter = ',')]
    users: Vec<String>,
    /// Role the proxy uses for health checks, catalog look-ups and auth_query [default: postgres].
    #[arg(long, env = "TANDEM_CONTROL_USER")]
    control_user: Option<String>,
    /// Password of the control role.
    #[arg(long, env = "TANDEM_CONTROL_PASSWORD", hide_env_values = true)]
    control_password: Option<String>,
    /// Server connections per (node, user, database) [default: 20].
    #[arg(long, env = "TANDEM_POOL_SIZE")]
    pool_size: Option<u32>,
    /// Maximum client connections [default: 10000].
    #[arg(long, env = "TANDEM_MAX_CLIENT_CONN")]
    max_client_conn: Option<usize>,
    /// Read balancing: least-outstanding (default), round-robin, random, weighted.
    #[arg(long, env = "TANDEM_LOAD_BALANCE")]
    load_balance: Option<String>,
    /// Skip replicas further behind than this many bytes of WAL (suffixes kB, MB, GB) [default: 16MB].
    #[arg(long, env = "TANDEM_MAX_REPLICA_LAG")]
    max_replica_lag: Option<String>,
    /// Send every statement to the primary (no read splitting).
    #[arg(long, env = "TANDEM_NO_READ_SPLIT")]
    no_read_split: bool,
    /// Health-check interval in milliseconds [default: 1000].
    #[arg(long, env = "TANDEM_HEALTH_INTERVAL_MS")]
    health_interval_ms: Option<u64>,
    /// Close server connections unused for this many milliseconds [default: 600000].
    #[arg(long, env = "TANDEM_SERVER_IDLE_TIMEOUT_MS")]
    server_idle_timeout_ms: Option<u64>,
    /// PEM certificate chain for client TLS.
    #[arg(long, env = "TANDEM_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for client TLS.
    #[arg(long, env = "TANDEM_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// TLS to the servers, as libpq's sslmode: disable, prefer (default), require, verify-ca,
    /// verify-full.
    #[arg(long, env = "TANDEM_SERVER_TLS_MODE")]
    server_tls_mode: Option<String>,
    /// PEM file of the CA certificates that sign the servers' certificates (verify-ca,
    /// verify-full).
    #[arg(long, env = "TANDEM_SERVER_TLS_CA_FILE")]
    server_tls_ca_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, env = "TANDEM_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// A witness of the group (HOST:PORT; repeat for each): writes then need the group's
    /// write lease.
    #[arg(long = "witness", env = "TANDEM_PROXY_WITNESSES", value_delimiter = ',')]
    witnesses: Vec<String>,
    /// The witnesses' bearer token (the cluster's token).
    #[arg(long, env = "TANDEM_WITNESS_TOKEN", hide_env_values = true)]
    witness_token: Option<String>,
    /// Write lease length asked of the group, in milliseconds [default: 2000].
    #[arg(long, env = "TANDEM_WRITE_LEASE_MS")]
    write_lease_ms: Option<u64>,
    /// How long a write waits for the group's lease (a failover in progress) before it is
    /// refused with SQLSTATE 25006, in milliseconds; 0 refuses at once [default: 5000].
    #[arg(long, env = "TANDEM_WRITE_LEASE_WAIT_MS")]
    write_lease_wait_ms: Option<u64>,
}

/// Fills what `[proxy]` leaves out from `[cluster]`, so a deployment describes its nodes
/// once: the primary and replicas from the nodes (their initial roles), the witnesses and
/// their token.
fn from_cluster(cfg: &mut ProxyConfig, cluster: &tandem_core::ClusterSpec) -> anyhow::Result<()> {
    cluster.validate()?;
    let node_config = |n: &tandem_core::NodeSpec| NodeConfig { name: n.name.clone(), addr: n.addr.clone(), weight: 1 };
    if cfg.primary.is_none() && cfg.replicas.is_empty() {
        cfg.primary = cluster.initial_primary().map(node_config);
        cfg.replicas = cluster.nodes.iter().filter(|n| n.role == tandem_core::Role::Replica).map(node_config).collect();
    }
    if cfg.witnesses.is_empty() {
        cfg.witnesses = cluster.witnesses.iter().map(|w| w.addr.clone()).collect();
    }
    if cfg.witness_token.is_none() {
        cfg.witness_token = cluster.token.clone();
    }
    Ok(())
}

/// Parses `NAME=HOST:PORT` or `HOST:PORT` (named `default_name`).
fn node(spec: &str, default_name: &str) -> anyhow::Result<NodeConfig> {
    let (name, addr) = match spec.split_once('=') {
        Some((n, a)) => (n, a),
        None => (default_name, spec),
    };
    let name: NodeId = name.parse().with_context(|| format!("in node {spec:?}"))?;
    let addr: NodeAddr = addr.parse().with_context(|| format!("in node {spec:?}"))?;
    Ok(NodeConfig { name, addr, weight: 1 })
}

/// Parses `16MB`, `512kB`, `1GB` or a plain byte count.
fn bytes(text: &str) -> anyhow::Result<u64> {
    let t = text.trim();
    let (num, mult) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, ""),
    };
    let mult: u64 = match mult.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1 << 10,
        "mb" | "m" => 1 << 20,
        "gb" | "g" => 1 << 30,
        other => bail!("unknown size unit {other:?} in {text:?} (use kB, MB or GB)"),
    };
    let n: u64 = num.parse().with_context(|| format!("invalid size {text:?}"))?;
    Ok(n * mult)
}

fn enum_value<T: serde::de::DeserializeOwned>(flag: &str, value: &str) -> anyhow::Result<T> {
    T::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(value))
        .map_err(|_| anyhow::anyhow!("invalid --{flag} value {value:?}"))
}

/// Builds the proxy configuration from the file (if any) and the flags.
pub fn build_config(file: Option<&std::path::Path>, args: &ProxyArgs) -> anyhow::Result<ProxyConfig> {
    let mut cfg = match file {
        Some(path) => {
            let file = crate::file::load(path)?;
            let mut cfg = file.proxy.unwrap_or_default();
            if let Some(cluster) = &file.cluster {
                from_cluster(&mut cfg, cluster)?;
            }
            cfg
        }
        None => ProxyConfig::default(),
    };
    if let Some(v) = args.listen {
        cfg.listen = v;
    }
    if let Some(p) = &args.primary {
        cfg.primary = Some(node(p, "primary")?);
    }
    if !args.replicas.is_empty() {
        cfg.replicas = args
            .replicas
            .iter()
            .enumerate()
            .map(|(i, r)| node(r, &format!("replica{}", i + 1)))
            .collect::<anyhow::Result<_>>()?;
    }
    if let Some(v) = &args.pool_mode {
        cfg.pool_mode = enum_value::<PoolMode>("pool-mode", v)?;
    }
    if let Some(v) = &args.auth {
        cfg.auth = enum_value::<AuthMethod>("auth", v)?;
    }
    for u in &args.users {
        let (name, password) = u.split_once('=').with_context(|| format!("--user {u:?}: expected NAME=PASSWORD"))?;
        cfg.users.retain(|x| x.name != name);
        cfg.users.push(UserConfig { name: name.to_owned(), password: password.to_owned() });
    }
    if let Some(v) = &args.control_user {
        cfg.control.user = v.clone();
    }
    if let Some(v) = &args.control_password {
        cfg.control.password = Some(v.clone());
    }
    if let Some(v) = args.pool_size {
        cfg.pool_size = v;
    }
    if let Some(v) = args.max_client_conn {
        cfg.max_client_conn = v;
    }
    if let Some(v) = &args.load_balance {
        cfg.load_balance = enum_value::<LoadBalance>("load-balance", v)?;
    }
    if let Some(v) = &args.max_replica_lag {
        cfg.max_replica_lag = bytes(v)?;
    }
    if args.no_read_split {
        cfg.read_from_replicas = false;
    }
    if let Some(v) = args.health_interval_ms {
        cfg.health_interval_ms = v;
    }
    if let Some(v) = args.server_idle_timeout_ms {
        cfg.server_idle_timeout_ms = v;
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        cfg.tls = Some(TlsConfig { cert: cert.clone(), key: key.clone() });
    }
    if let Some(v) = &args.server_tls_mode {
        cfg.server_tls_mode = enum_value::<ServerTlsMode>("server-tls-mode", v)?;
    }
    if let Some(v) = &args.server_tls_ca_file {
        cfg.server_tls_ca_file = Some(v.clone());
    }
    if let Some(v) = args.metrics_listen {
        cfg.metrics_listen = Some(v);
    }
    if !args.witnesses.is_empty() {
        cfg.witnesses = args.witnesses.clone();
    }
    if let Some(v) = &args.witness_token {
        cfg.witness_token = Some(v.clone());
    }
    if let Some(v) = args.write_lease_ms {
        cfg.write_lease_ms = v;
    }
    if let Some(v) = args.write_lease_wait_ms {
        cfg.write_lease_wait_ms = v;
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Runs `tandem proxy` until SIGINT/SIGTERM; `threads` is the global `--threads`.
pub async fn run(file: Option<PathBuf>, args: ProxyArgs, threads: Option<usize>) -> anyhow::Result<()> {
    let load = move |file: Option<&std::path::Path>, args: &ProxyArgs| {
        let mut cfg = build_config(file, args)?;
        if let Some(n) = threads {
            cfg.threads = n;
            cfg.validate()?;
        }
        anyhow::Ok(cfg)
    };
    let cfg = Arc::new(load(file.as_deref(), &args)?);
    let reloader: Option<tandem_proxy::Reloader> = file.map(|path| {
        let args = args.clone();
        Arc::new(move || load(Some(&path), &args).map_err(|e| format!("{e:#}"))) as tandem_proxy::Reloader
    });
    let shutdown = CancellationToken::new();
    crate::signals::cancel_on_signal(shutdown.clone());
    tandem_proxy::run(cfg, reloader, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(bytes("16MB").unwrap(), 16 << 20);
        assert_eq!(bytes("512kB").unwrap(), 512 << 10);
        assert_eq!(bytes("100").unwrap(), 100);
        assert!(bytes("5 parsecs").is_err());
    }

    #[test]
    fn the_cluster_table_gives_nodes_and_witnesses() {
        let path = std::env::temp_dir().join(format!("tandem-proxy-cluster-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "[proxy]\nlisten = \"127.0.0.1:6432\"\n[cluster]\ntoken = \"t\"\n\
             [[cluster.nodes]]\nname = \"pg1\"\naddr = \"10.0.0.1:5432\"\nrole = \"primary\"\n\
             [[cluster.nodes]]\nname = \"pg2\"\naddr = \"10.0.0.2:5432\"\nrole = \"replica\"\n\
             [[cluster.witnesses]]\nid = 1\naddr = \"10.0.1.1:7000\"\n",
        )
        .unwrap();
        let cfg = build_config(Some(&path), &ProxyArgs::default());
        let _ = std::fs::remove_file(&path);
        let cfg = cfg.unwrap();
        assert_eq!(cfg.primary.unwrap().name.as_str(), "pg1");
        assert_eq!(cfg.replicas.len(), 1);
        assert_eq!(cfg.witnesses, vec!["10.0.1.1:7000".to_string()]);
        assert_eq!(cfg.witness_token.as_deref(), Some("t"));
    }

    #[test]
    fn nodes_parse_with_or_without_names() {
        assert_eq!(node("pg2=127.0.0.1:5433", "x").unwrap().name.as_str(), "pg2");
        assert_eq!(node("127.0.0.1:5433", "replica1").unwrap().name.as_str(), "replica1");
        assert!(node("bad name=127.0.0.1:1", "x").is_err());
    }
}
