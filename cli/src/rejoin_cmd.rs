//! `tandem rejoin NODE`: flags (or the `[cluster]` table) → the witness group's
//! [`tandem_witness::client::WitnessClient::rejoin_target`] → [`tandem_replicator::physical::rejoin`]
//! → the group told ([`tandem_witness::client::WitnessClient::confirm_rejoin`]) → a summary.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use tandem_core::NodeId;
use tandem_replicator::physical::rejoin::{self, RejoinPath, RejoinSpec, Rejoined};
use tandem_witness::client::WitnessClient;

/// How long the rejoined node may take to stream from the new primary.
const STREAM_TIMEOUT: Duration = Duration::from_secs(60);

/// Flags of `tandem rejoin`.
#[derive(Args, Debug)]
pub struct RejoinArgs {
    /// The fenced old primary: its name in the cluster (its cluster_name, and its slot
    /// `tandem_standby_NODE` on the new primary).
    node: NodeId,
    /// Its data directory (on this machine).
    #[arg(long)]
    data_dir: PathBuf,
    /// A witness's API, HOST:PORT (or ID=HOST:PORT); repeat for each. The new primary and
    /// NODE's role (it must be fenced) come from the group, which is told when NODE streams.
    /// Without it and without --new-primary: the `[cluster]` table of --config.
    #[arg(long = "witness", value_delimiter = ',', conflicts_with = "new_primary")]
    witnesses: Vec<String>,
    /// The cluster's bearer token for the witnesses (default: `[cluster] token`).
    #[arg(long, env = "TANDEM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The new primary, HOST:PORT, given instead of asking a witness group.
    #[arg(long)]
    new_primary: Option<String>,
    /// The role to connect to the new primary as (a superuser, or one with REPLICATION and
    /// pg_rewind's grants).
    #[arg(long, default_value = "postgres")]
    user: String,
    /// Where NODE's restore_command reads the relay's WAL (its WAL directory or
    /// http://HOST:PORT); without it NODE keeps its own restore_command, if any.
    #[arg(long)]
    relay: Option<String>,
    /// Only make the data directory a standby's; do not start it (the group is not told:
    /// run `tandem rejoin` again later, which then has nothing to rewind).
    #[arg(long)]
    no_start: bool,
}

/// Runs `tandem rejoin`.
pub async fn run(file: Option<PathBuf>, args: RejoinArgs) -> anyhow::Result<()> {
    let group = group(file.as_deref(), &args)?;
    let new_primary = match (&args.new_primary, &group) {
        (Some(addr), _) => addr.clone(),
        (None, Some((client, _))) => {
            let target = client.rejoin_target(&args.node).await?;
            println!("the witness group's primary is {} at {}", target.primary, target.addr);
            target.addr
        }
        (None, None) => {
            bail!("give --witness HOST:PORT (or --config with a [cluster] table) or --new-primary HOST:PORT")
        }
    };
    let spec = RejoinSpec {
        node: args.node.clone(),
        data_dir: std::path::absolute(&args.data_dir).context("resolve --data-dir")?,
        new_primary: new_primary.clone(),
        user: args.user.clone(),
        relay: args.relay.clone(),
        tandem: std::env::current_exe().context("find the tandem program for restore_command")?,
        start: !args.no_start,
        stream_timeout: STREAM_TIMEOUT,
    };
    println!("rejoining {} ({}) as a standby of {new_primary} ...", args.node, spec.data_dir.display());
    let done = rejoin::rejoin(&spec).await.with_context(|| format!("tandem rejoin {}", args.node))?;
    for w in &done.warnings {
        eprintln!("tandem: warning: {w}");
    }
    print!("{}", summary(&args.node, &new_primary, &done));
    if let (Some((client, token)), true) = (&group, done.streaming) {
        client.confirm_rejoin(&args.node, token.as_deref()).await.context("telling the witness group")?;
        println!("the witness group lists {} as a standby again", args.node);
    }
    Ok(())
}

/// The witness client and token, from the flags or the cluster file; none when the new
/// primary is given directly.
fn group(file: Option<&std::path::Path>, args: &RejoinArgs) -> anyhow::Result<Option<(WitnessClient, Option<String>)>> {
    if args.new_primary.is_some() {
        return Ok(None);
    }
    let cluster = match file {
        Some(path) => crate::file::load(path)?.cluster,
        None => None,
    };
    let mut addrs: Vec<String> =
        args.witnesses.iter().map(|w| w.split_once('=').map_or(w.as_str(), |(_, a)| a).to_owned()).collect();
    if addrs.is_empty() {
        addrs = cluster.iter().flat_map(|c| c.witnesses.iter().map(|w| w.addr.clone())).collect();
    }
    if addrs.is_empty() {
        return Ok(None);
    }
    let token = args.token.clone().or_else(|| cluster.and_then(|c| c.token));
    Ok(Some((WitnessClient::new(addrs, Duration::from_secs(3))?, token)))
}

/// What happened, in a few lines.
fn summary(node: &NodeId, new_primary: &str, done: &Rejoined) -> String {
    let path = match &done.path {
        RejoinPath::Rewind => "pg_rewind".to_owned(),
        RejoinPath::Reclone { reason, old_data } => format!(
            "re-cloned from the new primary, pg_rewind was impossible ({}); the old data directory is kept at {}",
            reason.lines().last().unwrap_or(reason).trim(),
            old_data.display()
        ),
    };
    let fork = match done.fork {
        Some((tli, at)) => format!(" (committed after it left the new primary's history at {at} on timeline {tli})"),
        None => " (it never left the new primary's history)".to_owned(),
    };
    let incomplete = if done.lost.incomplete.is_some() { "; the list may be incomplete" } else { "" };
    let streaming = if done.streaming { "yes" } else { "no: not started (--no-start)" };
    format!(
        "rejoined {node} as a standby of {new_primary}\n  path: {path}\n  lost transactions: {}{fork}{incomplete}\n  \
         streaming: {streaming} (slot {}, port {})\n",
        done.lost.transactions.len(),
        done.slot,
        done.port
    )
}
