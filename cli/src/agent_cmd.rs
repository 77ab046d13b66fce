//! `tandem agent`: flags (and the `[cluster]` token) → [`tandem_replicator::physical::agent::run`],
//! the HTTP service beside one PostgreSQL server that stops and starts it for the witness
//! leader (a switchover).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use tandem_core::NodeId;
use tandem_replicator::physical::agent::{self, AgentConfig};
use tokio_util::sync::CancellationToken;

/// Flags of `tandem agent`.
#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The node this agent serves: its name in the cluster (`[[cluster.nodes]] name`), also
    /// its `cluster_name` when the agent starts it as a standby.
    #[arg(long)]
    node: NodeId,
    /// The node's data directory (on this machine).
    #[arg(long)]
    data_dir: PathBuf,
    /// Where the agent's HTTP API listens, HOST:PORT (the node's `agent` in the cluster file).
    #[arg(long, default_value = "127.0.0.1:7475")]
    listen: SocketAddr,
    /// Bearer token that POST /v1/stop and /v1/start must carry (default: the cluster file's
    /// `[cluster] token`; none leaves them open, for loopback only).
    #[arg(long, env = "TANDEM_AGENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// Runs `tandem agent` until SIGINT/SIGTERM.
pub async fn run(file: Option<PathBuf>, args: AgentArgs) -> anyhow::Result<()> {
    let token = match args.token {
        Some(t) => Some(t),
        None => match &file {
            Some(path) => crate::file::load(path)?.cluster.and_then(|c| c.token),
            None => None,
        },
    };
    if token.is_none() && !args.listen.ip().is_loopback() {
        tracing::warn!(listen = %args.listen, "no token: anyone who reaches the agent can stop and start the server");
    }
    let cfg = AgentConfig {
        node: args.node,
        data_dir: std::path::absolute(&args.data_dir).context("resolve --data-dir")?,
        listen: args.listen,
        token,
    };
    let shutdown = CancellationToken::new();
    crate::signals::cancel_on_signal(shutdown.clone());
    agent::run(Arc::new(cfg), shutdown).await?;
    Ok(())
}
