//! Taking part in a planned switchover: the proxy's half of the two-phase commit.
//!
//! Place in the data flow: the topology watch ([`super::topology`]) sees the group's
//! switchover → **here**: phase `pausing` or later closes the PAUSE gate (running
//! transactions finish, new ones wait at the gate; see `gate.rs`) and, once nothing runs,
//! reports quiet to the leader (`POST /v1/switchover/quiet`, repeated while the phase
//! lasts, so a new leader hears it too). The commit (`Promoted`: the watch has already
//! switched the topology to the new primary) or the abort (no switchover any more) opens
//! the gate: waiting clients go on, on the new primary or the old one. No client sees an
//! error.
//!
//! A proxy that loses the group while paused opens its gate after [`MAX_PAUSE`] anyway:
//! writes then wait for a lease and a primary as in a failover, rather than forever.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::context::ProxyContext;

/// How often a quiet proxy repeats its report while the phase lasts.
const REPORT_EVERY: Duration = Duration::from_millis(100);
/// Longest a proxy stays paused for one switchover without hearing its end.
const MAX_PAUSE: Duration = Duration::from_secs(60);

/// This proxy's part in the switchover in progress, if any.
#[derive(Default)]
pub struct Participation {
    current: Mutex<Option<Paused>>,
}

/// The gate is closed for one switchover.
struct Paused {
    /// The switchover (its `started_ms`).
    operation: u64,
    since: Instant,
    /// Stops the quiet reporter.
    reporter: CancellationToken,
}

/// The switchover `state` shows in a phase that needs the proxies paused: its id.
fn pausing_operation(state: &Value) -> Option<u64> {
    let op = &state["operation"];
    let phase = op["phase"].as_str()?;
    let paused = matches!(phase, "pausing" | "stopping" | "catching_up" | "promoting");
    (op["kind"] == "switchover" && paused).then(|| op["started_ms"].as_u64()).flatten()
}

impl Participation {
    /// Acts on the group's `state` (called by the watch after it switched topology, so a
    /// commit's clients resume towards the new primary).
    pub fn observe(&self, ctx: &Arc<ProxyContext>, state: &Value) {
        let wanted = pausing_operation(state);
        let Ok(mut current) = self.current.lock() else { return };
        match (wanted, current.as_ref()) {
            (Some(op), Some(p)) if p.operation == op => {}
            (Some(op), _) => {
                if let Some(old) = current.take() {
                    old.reporter.cancel();
                }
                tracing::warn!(operation = op, "switchover: pausing (new transactions wait at the gate)");
                let reporter = ctx.shutdown.child_token();
                tokio::spawn(pause_and_report(ctx.clone(), op, reporter.clone()));
                *current = Some(Paused { operation: op, since: Instant::now(), reporter });
            }
            (None, Some(_)) => {
                if let Some(p) = current.take() {
                    p.reporter.cancel();
                    ctx.gate.resume();
                    ctx.lease.renew_now();
                    let epoch = state["epoch"].as_u64().unwrap_or(0);
                    tracing::warn!(paused_ms = p.since.elapsed().as_millis() as u64, epoch,
                        primary = %ctx.router.topology().primary.id, "switchover over: resumed");
                }
            }
            (None, None) => {}
        }
    }
}

/// Closes the gate, waits for the running transactions, then tells the leader this proxy
/// is quiet, again every [`REPORT_EVERY`] until cancelled. Opens the gate itself only after
/// [`MAX_PAUSE`] without an end.
async fn pause_and_report(ctx: Arc<ProxyContext>, operation: u64, stop: CancellationToken) {
    let started = Instant::now();
    let quiet = tokio::select! {
        _ = stop.cancelled() => return,
        q = ctx.gate.pause(MAX_PAUSE) => q,
    };
    if !quiet {
        tracing::error!("switchover: transactions still running after {} s; resuming", MAX_PAUSE.as_secs());
        ctx.gate.resume();
        return;
    }
    tracing::info!(waited_ms = started.elapsed().as_millis() as u64, "switchover: quiet");
    let Ok(http) = reqwest::Client::builder().timeout(REPORT_EVERY * 5).connect_timeout(REPORT_EVERY * 5).build()
    else {
        return;
    };
    let holder = ctx.cfg.listen.to_string();
    let mut leader: Option<String> = None;
    loop {
        let body = serde_json::json!({"holder": holder, "operation": operation, "clients": ctx.clients.len()});
        leader = report(&ctx, &http, leader, &body).await;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(REPORT_EVERY) => {}
        }
        if started.elapsed() >= MAX_PAUSE {
            tracing::error!("switchover: no end heard for {} s; resuming", MAX_PAUSE.as_secs());
            ctx.gate.resume();
            return;
        }
    }
}

/// Posts the quiet report to the leader (the one known, else each witness; a follower's
/// 421 names the leader, tried next). Returns the leader to try first next time.
async fn report(ctx: &ProxyContext, http: &reqwest::Client, leader: Option<String>, body: &Value) -> Option<String> {
    let mut targets: Vec<String> = ctx.cfg.witnesses.iter().filter(|w| Some(*w) != leader.as_ref()).cloned().collect();
    targets.extend(leader);
    while let Some(addr) = targets.pop() {
        let mut req = http.post(format!("http://{addr}/v1/switchover/quiet")).json(body);
        if let Some(t) = &ctx.cfg.witness_token {
            req = req.bearer_auth(t);
        }
        let Ok(resp) = req.send().await else { continue };
        if resp.status() == reqwest::StatusCode::MISDIRECTED_REQUEST {
            let named = resp.json::<Value>().await.ok().and_then(|v| v["leader"].as_str().map(str::to_owned));
            if let Some(named) = named.filter(|n| n != &addr && !targets.is_empty()) {
                targets.retain(|t| t != &named);
                targets.push(named);
            }
            continue;
        }
        // Success, or 409: the leader is past pausing (the watch brings the next step).
        return Some(addr);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_from_pausing_to_promoting_only() {
        let state =
            |kind: &str, phase: &str| serde_json::json!({"operation": {"kind": kind, "phase": phase, "started_ms": 7}});
        assert_eq!(pausing_operation(&state("switchover", "checking")), None);
        for phase in ["pausing", "stopping", "catching_up", "promoting"] {
            assert_eq!(pausing_operation(&state("switchover", phase)), Some(7), "{phase}");
        }
        assert_eq!(pausing_operation(&state("failover", "catching_up")), None);
        assert_eq!(pausing_operation(&serde_json::json!({"operation": null})), None);
    }
}
