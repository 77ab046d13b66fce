//! `tandem failover`, `tandem pause` and `tandem resume`: an operator's requests to the
//! witness group, in the style of `patronictl failover` / `pause` / `resume`.
//!
//! Place in the data flow: operator → **these commands** → the group's leader
//! (`POST /v1/failover`, `/v1/maintenance`) → the leader's failover steps. A forced failover
//! asks for confirmation, then follows the operation phase by phase until the new epoch is
//! published (or the failover is blocked, with the reason).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};
use tandem_witness::client::WitnessClient;

use crate::witness_cmd::{cluster, ClusterArgs};

/// Flags of `tandem failover`.
#[derive(Args, Debug)]
pub struct FailoverArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The standby to promote (default: the most advanced, ties by priority).
    #[arg(long)]
    to: Option<String>,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
    /// How long to follow the failover before giving up watching (it goes on regardless).
    #[arg(long, default_value_t = 60)]
    wait_s: u64,
}

/// Flags of `tandem pause` and `tandem resume`.
#[derive(Args, Debug)]
pub struct PauseArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
}

pub(crate) fn client(
    file: Option<&std::path::Path>,
    args: &ClusterArgs,
) -> anyhow::Result<(WitnessClient, Option<String>)> {
    let spec = cluster(file, args)?;
    if spec.witnesses.is_empty() {
        bail!("no witnesses: give --witness ID=HOST:PORT or a [cluster] table with --config");
    }
    let addrs = spec.witnesses.iter().map(|w| w.addr.clone()).collect();
    Ok((WitnessClient::new(addrs, Duration::from_secs(5))?, spec.token))
}

/// `tandem pause` (on = true) / `tandem resume`: maintenance mode, no automatic failover.
pub async fn pause(file: Option<PathBuf>, args: PauseArgs, on: bool) -> anyhow::Result<()> {
    let (client, token) = client(file.as_deref(), &args.cluster)?;
    let (status, answer) = client.post("/v1/maintenance", &json!({ "on": on }), token.as_deref()).await?;
    if status != 200 {
        bail!("the group refused: HTTP {status}: {}", answer["error"].as_str().unwrap_or("?"));
    }
    match (on, answer["applied"].as_bool()) {
        (true, Some(true)) => println!("Paused: the cluster is in maintenance mode; no automatic failover."),
        (false, Some(true)) => println!("Resumed: automatic failover is on again."),
        _ => println!("{}", answer["reason"].as_str().unwrap_or("nothing to do")),
    }
    Ok(())
}

/// `tandem failover [--to NODE] [--yes]`.
pub async fn failover(file: Option<PathBuf>, args: FailoverArgs) -> anyhow::Result<()> {
    let (client, token) = client(file.as_deref(), &args.cluster)?;
    let view = client.cluster().await?;
    let state = serde_json::to_value(&view.state)?;
    let primary = state["primary"].as_str().unwrap_or("?").to_owned();
    let epoch = state["epoch"].as_u64().unwrap_or(0);
    let standbys = standbys(&state);
    println!("Current primary: {primary} (epoch {epoch}); standbys: {}", standbys.join(", "));
    if let Some(to) = &args.to {
        if !standbys.contains(to) {
            bail!("{to} is not a standby of this cluster (standbys: {})", standbys.join(", "));
        }
    }
    if !args.yes {
        let target = args.to.clone().unwrap_or_else(|| "the most advanced standby".into());
        confirm(&format!(
            "Fail over from {primary} to {target}? The old primary is fenced until `tandem rejoin`; \
             writes it took that no standby has are lost."
        ))?;
    }
    let started = Instant::now();
    let (status, answer) = client.post("/v1/failover", &json!({ "to": args.to }), token.as_deref()).await?;
    if status != 200 {
        bail!("the group refused: {}", answer["error"].as_str().unwrap_or("?"));
    }
    follow(&client, epoch, started, Duration::from_secs(args.wait_s)).await
}

/// Prints each phase as the group enters it, until the epoch moves past `epoch`.
async fn follow(client: &WitnessClient, epoch: u64, started: Instant, wait: Duration) -> anyhow::Result<()> {
    let mut progress = Progress::default();
    while started.elapsed() < wait {
        let view = client.cluster().await?;
        let state = serde_json::to_value(&view.state)?;
        if state["epoch"].as_u64().unwrap_or(0) > epoch {
            let entry = last_failover(&state).context("no history entry for the failover")?;
            println!("Done in {} ms: {entry}", started.elapsed().as_millis());
            println!("New primary: {} (epoch {})", state["primary"].as_str().unwrap_or("?"), state["epoch"]);
            return Ok(());
        }
        progress.show(&state["operation"], started);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the failover did not finish within {} s (it goes on; see `tandem status`)", wait.as_secs())
}

/// The standbys' names in the group's `state`.
pub(crate) fn standbys(state: &Value) -> Vec<String> {
    state["nodes"]
        .as_object()
        .map(|n| {
            n.values()
                .filter(|v| v["role"] == "standby")
                .filter_map(|v| v["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Asks `question` with ` [y/N] `; anything but yes is an error ("aborted").
pub(crate) fn confirm(question: &str) -> anyhow::Result<()> {
    print!("{question} [y/N] ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if !matches!(line.trim(), "y" | "Y" | "yes") {
        bail!("aborted");
    }
    Ok(())
}

/// Prints an operation's phases and blocked reasons as they change.
#[derive(Default)]
pub(crate) struct Progress {
    phase: String,
    blocked: String,
}

impl Progress {
    /// Prints what changed in `op` (the state's `operation`) since the last call.
    pub(crate) fn show(&mut self, op: &Value, started: Instant) {
        if let Some(phase) = op["phase"].as_str().filter(|p| *p != self.phase) {
            println!("  {:>6} ms  {phase}", started.elapsed().as_millis());
            self.phase = phase.to_owned();
        }
        if let Some(reason) = op["blocked"].as_str().filter(|r| *r != self.blocked) {
            println!("  blocked: {reason}");
            self.blocked = reason.to_owned();
        }
    }
}

fn last_failover(state: &Value) -> Option<String> {
    state["history"].as_array()?.iter().rev().find_map(|h| {
        let e = h["event"].as_str()?;
        e.starts_with("failover:").then(|| e.to_owned())
    })
}
