//! `tandem switchover --to NODE [--at TIME] [--yes]`: a planned change of primary with no
//! client error, in the style of `patronictl switchover`.
//!
//! Place in the data flow: operator → **this command** → the group's leader (`POST
//! /v1/switchover`, checked there: an unfit target, a missing agent, maintenance or another
//! operation is refused at once with the reason) → the leader's switchover steps. It asks
//! for confirmation, then prints each phase as the group enters it, and a summary: the
//! write pause, the proxies and clients that waited, the new epoch, and the old primary
//! back as a standby. `--cancel` withdraws a switchover that has not stopped the primary.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};
use tandem_witness::client::WitnessClient;

use crate::operate_cmd::{client, confirm, standbys, Progress};
use crate::witness_cmd::ClusterArgs;
use tandem_witness::node::now_ms;

/// Flags of `tandem switchover`.
#[derive(Args, Debug)]
pub struct SwitchoverArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The standby to promote.
    #[arg(long, required_unless_present = "cancel")]
    to: Option<String>,
    /// When: an RFC 3339 time (`2026-12-07T22:00:00Z`) or from now (`+90s`, `+15m`, `+2h`).
    /// The group keeps it; `tandem status` shows it, `--cancel` withdraws it.
    #[arg(long)]
    at: Option<String>,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
    /// How long the proxies may take to finish their running transactions before the
    /// switchover is aborted (clients wait at most this long, then go on unharmed).
    #[arg(long, default_value_t = 3000)]
    pause_timeout_ms: u64,
    /// How long to follow it before giving up watching (it goes on regardless). With `--at`
    /// the command returns once the group has it scheduled.
    #[arg(long, default_value_t = 60)]
    wait_s: u64,
    /// Withdraw a scheduled or starting switchover (until the primary is being stopped).
    #[arg(long, conflicts_with_all = ["to", "at"])]
    cancel: bool,
}

/// `tandem switchover`.
pub async fn switchover(file: Option<PathBuf>, args: SwitchoverArgs) -> anyhow::Result<()> {
    let (client, token) = client(file.as_deref(), &args.cluster)?;
    if args.cancel {
        let (status, answer) = client.delete("/v1/switchover", token.as_deref()).await?;
        if status != 200 {
            bail!("the group refused: {}", answer["error"].as_str().unwrap_or("?"));
        }
        println!("Cancelled: the switchover is withdrawn; the proxies resume on the primary.");
        return Ok(());
    }
    let to = args.to.clone().context("--to NODE is required")?;
    let at_ms = args.at.as_deref().map(parse_at).transpose()?;
    let view = client.cluster().await?;
    let state = serde_json::to_value(&view.state)?;
    let primary = state["primary"].as_str().unwrap_or("?").to_owned();
    let epoch = state["epoch"].as_u64().unwrap_or(0);
    let standbys = standbys(&state);
    println!("Current primary: {primary} (epoch {epoch}); standbys: {}", standbys.join(", "));
    if !standbys.contains(&to) {
        bail!("{to} is not a standby of this cluster (standbys: {})", standbys.join(", "));
    }
    if !args.yes {
        let when = match &args.at {
            Some(at) => format!(" at {at}"),
            None => " now".into(),
        };
        confirm(&format!(
            "Switch over from {primary} to {to}{when}? Proxies hold new transactions until {to} is promoted \
             (a pause, no errors); {primary} restarts as a standby."
        ))?;
    }
    let started = Instant::now();
    let body = json!({ "to": to, "at_ms": at_ms, "pause_timeout_ms": args.pause_timeout_ms });
    let (status, answer) = client.post("/v1/switchover", &body, token.as_deref()).await?;
    if status != 200 {
        bail!("the group refused: {}", answer["error"].as_str().unwrap_or("?"));
    }
    if let Some(t) = at_ms {
        println!(
            "Scheduled: it starts in {} s (`tandem status` shows it; `tandem switchover --cancel` withdraws it).",
            t.saturating_sub(now_ms()).div_ceil(1000)
        );
        return Ok(());
    }
    follow(&client, epoch, &primary, started, Duration::from_secs(args.wait_s)).await
}

/// `--at`: RFC 3339, or `+N{s,m,h}` from now.
fn parse_at(text: &str) -> anyhow::Result<u64> {
    if let Some(rel) = text.strip_prefix('+') {
        let (n, unit) = rel.split_at(rel.find(|c: char| !c.is_ascii_digit()).unwrap_or(rel.len()));
        let n: u64 = n.parse().with_context(|| format!("--at {text:?}: expected +N followed by s, m or h"))?;
        let secs = match unit {
            "s" | "" => n,
            "m" => n * 60,
            "h" => n * 3600,
            _ => bail!("--at {text:?}: the unit is s, m or h"),
        };
        return Ok(now_ms() + secs * 1000);
    }
    let t = chrono::DateTime::parse_from_rfc3339(text)
        .with_context(|| format!("--at {text:?}: expected an RFC 3339 time such as 2026-12-07T22:00:00Z, or +90s"))?;
    let ms = u64::try_from(t.timestamp_millis()).context("--at: a time before 1970")?;
    if ms + 1000 < now_ms() {
        bail!("--at {text}: that time has passed");
    }
    Ok(ms)
}

/// Prints each phase as the group enters it, until the epoch moves past `epoch` (done) or
/// the switchover is gone without it (aborted); then waits for the old primary to rejoin.
async fn follow(client: &WitnessClient, epoch: u64, old: &str, started: Instant, wait: Duration) -> anyhow::Result<()> {
    let mut progress = Progress::default();
    let mut seen_op = false;
    while started.elapsed() < wait {
        let view = client.cluster().await?;
        let state = serde_json::to_value(&view.state)?;
        if state["epoch"].as_u64().unwrap_or(0) > epoch {
            let entry = last_event(&state, "switchover:").context("no history entry for the switchover")?;
            println!("  {:>6} ms  published", started.elapsed().as_millis());
            println!("Done: {entry}");
            if let Some(pause) = write_pause(&entry) {
                println!("Write pause: {pause} ms (from pausing to the new primary published)");
            }
            println!("New primary: {} (epoch {})", state["primary"].as_str().unwrap_or("?"), state["epoch"]);
            return rejoined(client, old, started, wait).await;
        }
        let op = &state["operation"];
        if op.is_null() {
            if seen_op {
                let why = last_event(&state, "switchover aborted:")
                    .or_else(|| last_event(&state, "switchover abandoned"))
                    .unwrap_or_else(|| "ended without a new primary".into());
                bail!("{why} (the primary is unchanged: {})", state["primary"].as_str().unwrap_or("?"));
            }
        } else {
            seen_op = true;
        }
        progress.show(op, started);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("the switchover did not finish within {} s (it goes on; see `tandem status`)", wait.as_secs())
}

/// Waits (briefly) for the old primary to be marked a standby again.
async fn rejoined(client: &WitnessClient, old: &str, started: Instant, wait: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now()
        + Duration::from_secs(30).min(wait.saturating_sub(started.elapsed()).max(Duration::from_secs(5)));
    while Instant::now() < deadline {
        let state = serde_json::to_value(&client.cluster().await?.state)?;
        if state["nodes"][old]["role"] == "standby" {
            println!("{old} restarted as a standby of the new primary (no pg_rewind needed).");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("{old} is not a standby yet: see `tandem status`; `tandem rejoin {old}` on its host makes it one.");
    Ok(())
}

fn last_event(state: &Value, prefix: &str) -> Option<String> {
    state["history"].as_array()?.iter().rev().find_map(|h| {
        let e = h["event"].as_str()?;
        e.starts_with(prefix).then(|| e.to_owned())
    })
}

/// The total of "... ; total 210 ms)" in the history entry: pausing to published.
fn write_pause(entry: &str) -> Option<u64> {
    let rest = &entry[entry.find("total ")? + "total ".len()..];
    rest.split(' ').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_takes_rfc3339_or_an_offset() {
        let now = now_ms();
        assert!((parse_at("+90s").unwrap() - now).abs_diff(90_000) < 2_000);
        assert!((parse_at("+2m").unwrap() - now).abs_diff(120_000) < 2_000);
        assert!(parse_at("+5x").is_err());
        assert!(parse_at("2999-01-01T00:00:00Z").unwrap() > now);
        assert!(parse_at("2001-01-01T00:00:00Z").is_err(), "in the past");
        assert!(parse_at("tomorrow").is_err());
    }

    #[test]
    fn the_write_pause_is_the_history_total() {
        let e = "switchover: pg1 → s1 (pausing 3 ms, stopping 120 ms; total 210 ms); pg1 stopped at 0/3";
        assert_eq!(write_pause(e), Some(210));
        assert_eq!(write_pause("switchover: odd"), None);
    }
}
