//! `tandem status` output: the cluster as one table, in the style of `patronictl list`.

use std::fmt::Write as _;

use tandem_witness::api::ClusterView;
use tandem_witness::state::NodeRole;

/// Whether the cluster is healthy: a leader, a primary that is not declared failed, and the
/// answering witness reaches it.
pub fn healthy(v: &ClusterView) -> bool {
    let Some(primary) = &v.state.primary else { return false };
    v.leader.is_some()
        && v.state.primary_failed_ms.is_none()
        && v.state.operation.is_none()
        && v.probes.get(primary.as_str()).is_some_and(|p| p.reachable && p.in_recovery == Some(false))
}

/// The table.
pub fn render(v: &ClusterView) -> String {
    let s = &v.state;
    let mut out = String::new();
    let primary = s.primary.as_ref().map(|p| p.to_string()).unwrap_or_else(|| "none".into());
    let _ = writeln!(
        out,
        "Cluster: epoch {} · primary {primary}{}{} · witness leader {} (term {}), answered by witness {}",
        s.epoch,
        if s.primary_failed_ms.is_some() { " (DECLARED FAILED)" } else { "" },
        if s.maintenance { " · MAINTENANCE" } else { "" },
        v.leader.map(|l| l.to_string()).unwrap_or_else(|| "none".into()),
        v.term,
        v.witness,
    );
    let primary_lsn = s.primary.as_ref().and_then(|p| v.probes.get(p.as_str())).and_then(|p| p.lsn);
    let mut rows = vec![["Node", "Address", "Role", "State", "LSN", "Lag (bytes)", "Priority"].map(String::from)];
    for n in s.nodes.values() {
        let probe = v.probes.get(n.name.as_str());
        let role = match n.role {
            NodeRole::Primary => "primary",
            NodeRole::Standby => "standby",
            NodeRole::Fenced => "fenced",
        };
        let state = match probe {
            None => "unknown".to_owned(),
            Some(p) if !p.reachable => format!("unreachable ({} ms)", p.failing_for_ms),
            Some(p) if n.role == NodeRole::Primary && p.in_recovery == Some(true) => "in recovery!".into(),
            Some(p) if n.role != NodeRole::Primary && p.in_recovery == Some(false) => "not in recovery!".into(),
            Some(_) => "running".into(),
        };
        let lsn = probe.and_then(|p| p.lsn);
        let lag = match (n.role, primary_lsn, lsn) {
            (NodeRole::Primary, _, _) => String::new(),
            (_, Some(p), Some(l)) => p.bytes_since(l).to_string(),
            _ => "unknown".into(),
        };
        rows.push([
            n.name.to_string(),
            n.addr.clone(),
            role.into(),
            state,
            lsn.map(|l| l.to_string()).unwrap_or_default(),
            lag,
            n.priority.to_string(),
        ]);
    }
    table(&mut out, &rows);
    let mut rows = vec![["Witness", "Address", "Role", "Raft index"].map(String::from)];
    for w in &v.witnesses {
        rows.push([
            w.id.to_string(),
            w.addr.clone(),
            w.role.clone(),
            w.matched_index.map(|i| i.to_string()).unwrap_or_default(),
        ]);
    }
    table(&mut out, &rows);
    if !s.leases.is_empty() {
        let now = tandem_witness::node::now_ms();
        let mut rows = vec![["Proxy", "Lease epoch", "Lease (ms)", "Valid for (ms)"].map(String::from)];
        for l in s.leases.values() {
            // On the leader's wall clock: for display (the proxy counts its own lease).
            let left = (l.granted_ms + l.duration_ms).saturating_sub(now);
            let left = if left == 0 { "expired".to_owned() } else { left.to_string() };
            rows.push([l.holder.clone(), l.epoch.to_string(), l.duration_ms.to_string(), left]);
        }
        table(&mut out, &rows);
    }
    if let Some(op) = &s.operation {
        let now = tandem_witness::node::now_ms();
        let _ = writeln!(
            out,
            "In progress: {}{} of {} → {}, phase {}{}{}",
            if op.manual && op.kind == tandem_witness::state::OperationKind::Failover { "forced " } else { "" },
            op.kind,
            op.from.as_ref().map(|n| n.as_str()).unwrap_or("?"),
            op.to.as_ref().map(|n| n.as_str()).unwrap_or("(choosing)"),
            op.phase.as_str(),
            match op.not_before_ms {
                Some(at) if at > now => format!(" (scheduled: starts in {} s)", (at - now).div_ceil(1000)),
                _ => String::new(),
            },
            op.blocked.as_ref().map(|b| format!(" · BLOCKED: {b}")).unwrap_or_default()
        );
    }
    if let Some(last) = s.history.back() {
        let _ = writeln!(out, "Last change: {} (epoch {})", last.event, last.epoch);
    }
    out
}

fn table<const N: usize>(out: &mut String, rows: &[[String; N]]) {
    let widths: Vec<usize> = (0..N).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let line: String = widths.iter().map(|w| format!("+{}", "-".repeat(w + 2))).collect::<String>() + "+";
    let _ = writeln!(out, "{line}");
    for (i, row) in rows.iter().enumerate() {
        let cells: String = row.iter().zip(&widths).map(|(c, w)| format!("| {c:<w$} ")).collect();
        let _ = writeln!(out, "{cells}|");
        if i == 0 {
            let _ = writeln!(out, "{line}");
        }
    }
    let _ = writeln!(out, "{line}");
}
