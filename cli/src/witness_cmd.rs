//! `tandem witness` (one member of the witness group) and `tandem status` (the cluster as
//! the group sees it): flags and the `[cluster]` table → [`tandem_witness`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use tandem_core::{ClusterSpec, NodeSpec, Role, WitnessSpec};
use tandem_witness::{FailoverSettings, ProbeLogin, Timing, WitnessConfig};
use tokio_util::sync::CancellationToken;

/// Where the cluster is described: `[cluster]` of the file, or these flags.
#[derive(Args, Debug, Clone, Default)]
pub struct ClusterArgs {
    /// A witness: ID=HOST:PORT; repeat for each (replaces the file's witnesses).
    #[arg(long = "witness", env = "TANDEM_WITNESSES", value_delimiter = ',')]
    witnesses: Vec<String>,
    /// A PostgreSQL node: NAME=HOST:PORT; repeat for each (replaces the file's nodes).
    #[arg(long = "node", env = "TANDEM_NODES", value_delimiter = ',')]
    nodes: Vec<String>,
    /// Which of the --node NAMEs starts as primary.
    #[arg(long = "primary-node", env = "TANDEM_PRIMARY_NODE")]
    primary_node: Option<String>,
}

/// Flags of `tandem witness`.
#[derive(Args, Debug)]
pub struct WitnessArgs {
    /// This witness's id (one of the cluster's witnesses).
    #[arg(long, env = "TANDEM_WITNESS_ID")]
    id: u64,
    /// Where its Raft log, vote and snapshots live (created if missing).
    #[arg(long, env = "TANDEM_WITNESS_DATA_DIR")]
    data_dir: PathBuf,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// User the probes log in as.
    #[arg(long, env = "TANDEM_PROBE_USER", default_value = "postgres")]
    probe_user: String,
    /// Its password, if the servers ask for one.
    #[arg(long, env = "TANDEM_PROBE_PASSWORD", hide_env_values = true)]
    probe_password: Option<String>,
    /// Probe interval in milliseconds.
    #[arg(long, default_value_t = 200)]
    probe_interval_ms: u64,
    /// How long a majority of witnesses must fail to reach the primary before it is declared
    /// failed, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    failure_timeout_ms: u64,
    /// How long standbys may take to replay what the relay and the others hold during a
    /// failover, in milliseconds (then sync mode refuses; async mode takes the most advanced).
    #[arg(long, default_value_t = 10_000)]
    catch_up_timeout_ms: u64,
    /// Async mode: never promote a standby further behind the old primary's last known
    /// position than this many bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    max_lag_on_failover: u64,
}

/// Flags of `tandem status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Print the whole state as JSON.
    #[arg(long)]
    json: bool,
    /// Refresh every second until Ctrl-C.
    #[arg(long)]
    watch: bool,
}

/// The cluster from `[cluster]` and the flags (flags replace the file's lists).
pub(crate) fn cluster(file: Option<&Path>, args: &ClusterArgs) -> anyhow::Result<ClusterSpec> {
    let mut spec = match file {
        Some(path) => crate::file::load(path)?.cluster,
        None => None,
    }
    .unwrap_or(ClusterSpec { nodes: Vec::new(), witnesses: Vec::new(), token: None });
    if !args.witnesses.is_empty() {
        spec.witnesses = args
            .witnesses
            .iter()
            .map(|w| {
                let (id, addr) =
                    w.split_once('=').with_context(|| format!("--witness {w:?}: expected ID=HOST:PORT"))?;
                Ok(WitnessSpec { id: id.parse().with_context(|| format!("--witness {w:?}: id"))?, addr: addr.into() })
            })
            .collect::<anyhow::Result<_>>()?;
    }
    if !args.nodes.is_empty() {
        let primary = args.primary_node.as_deref().context("--primary-node NAME is required with --node")?;
        spec.nodes = args
            .nodes
            .iter()
            .map(|n| {
                let (name, addr) =
                    n.split_once('=').with_context(|| format!("--node {n:?}: expected NAME=HOST:PORT"))?;
                Ok(NodeSpec {
                    name: name.parse()?,
                    addr: addr.parse()?,
                    role: if name == primary { Role::Primary } else { Role::Replica },
                    priority: 1,
                    agent: None,
                })
            })
            .collect::<anyhow::Result<_>>()?;
    }
    Ok(spec)
}

/// Runs `tandem witness` until SIGINT/SIGTERM.
pub async fn run(file: Option<PathBuf>, args: WitnessArgs) -> anyhow::Result<()> {
    let spec = cluster(file.as_deref(), &args.cluster)?;
    let timing = Timing {
        probe_interval: Duration::from_millis(args.probe_interval_ms),
        failure_timeout: Duration::from_millis(args.failure_timeout_ms),
        ..Timing::default()
    };
    let cfg = WitnessConfig {
        id: args.id,
        data_dir: args.data_dir,
        cluster: spec,
        probe: ProbeLogin { user: args.probe_user, password: args.probe_password, ..ProbeLogin::default() },
        timing,
        failover: FailoverSettings {
            catch_up_timeout: Duration::from_millis(args.catch_up_timeout_ms),
            max_lag_on_failover: args.max_lag_on_failover,
        },
    };
    cfg.validate()?;
    let shutdown = CancellationToken::new();
    crate::signals::cancel_on_signal(shutdown.clone());
    tandem_witness::run(Arc::new(cfg), shutdown).await?;
    Ok(())
}

/// Runs `tandem status`: exit status 0 when the cluster is healthy (a leader, a reachable
/// primary not declared failed), 1 otherwise.
pub async fn status(file: Option<PathBuf>, args: StatusArgs) -> anyhow::Result<std::process::ExitCode> {
    let spec = cluster(file.as_deref(), &args.cluster)?;
    if spec.witnesses.is_empty() {
        bail!("no witnesses: give --witness ID=HOST:PORT or a [cluster] table with --config");
    }
    let addrs = spec.witnesses.iter().map(|w| w.addr.clone()).collect();
    let client = tandem_witness::client::WitnessClient::new(addrs, Duration::from_secs(2))?;
    loop {
        let view = client.cluster().await;
        let healthy = match &view {
            Ok(v) => {
                if args.json {
                    println!("{}", serde_json::to_string_pretty(v)?);
                } else {
                    print!("{}", crate::status_table::render(v));
                }
                crate::status_table::healthy(v)
            }
            Err(e) => {
                eprintln!("tandem status: {e}");
                false
            }
        };
        if !args.watch {
            return Ok(if healthy { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!();
    }
}
