//! Admin console commands and their result sets.

use std::sync::atomic::Ordering;

use bytes::BytesMut;

use crate::context::{ClientState, ProxyContext};
use crate::protocol::build::{self, sqlstate, Severity};

/// Runs one admin command, writing its result (or error) to `out`.
pub async fn run(ctx: &ProxyContext, sql: &str, out: &mut BytesMut) {
    let cmd = sql.trim_end_matches(';').trim().to_ascii_lowercase();
    let words: Vec<&str> = cmd.split_whitespace().collect();
    match words.as_slice() {
        [] => build::empty_query(out),
        ["show", "pools"] => show_pools(ctx, out),
        ["show", "clients"] => show_clients(ctx, out),
        ["show", "servers"] => show_servers(ctx, out),
        ["show", "nodes"] => show_nodes(ctx, out),
        ["show", "stats"] => show_stats(ctx, out),
        ["show", "version"] => table(out, &["version"], vec![vec![Some(version())]], "SHOW"),
        ["show", "help"] => table(
            out,
            &["command"],
            [
                "SHOW POOLS",
                "SHOW CLIENTS",
                "SHOW SERVERS",
                "SHOW NODES",
                "SHOW STATS",
                "SHOW VERSION",
                "PAUSE",
                "RESUME",
                "RELOAD",
            ]
            .iter()
            .map(|c| vec![Some((*c).to_owned())])
            .collect(),
            "SHOW",
        ),
        ["pause"] => {
            if ctx.gate.pause(ctx.cfg.shutdown_timeout()).await {
                build::command_complete(out, "PAUSE");
            } else {
                build::error(
                    out,
                    Severity::Error,
                    sqlstate::CANNOT_CONNECT_NOW,
                    "PAUSE timed out waiting for running transactions; the proxy stays paused, RESUME to undo",
                );
            }
        }
        ["resume"] => {
            ctx.gate.resume();
            build::command_complete(out, "RESUME");
        }
        ["reload"] => match ctx.reload() {
            Ok(msg) => {
                build::notice(out, &msg);
                build::command_complete(out, "RELOAD");
            }
            Err(e) => build::error(out, Severity::Error, sqlstate::FEATURE_NOT_SUPPORTED, &e),
        },
        _ => build::error(
            out,
            Severity::Error,
            sqlstate::SYNTAX_ERROR,
            &format!("unknown admin command \"{sql}\"; try SHOW HELP"),
        ),
    }
}

fn version() -> String {
    format!("tandem {}", env!("CARGO_PKG_VERSION"))
}

fn table(out: &mut BytesMut, cols: &[&str], rows: Vec<Vec<Option<String>>>, tag: &str) {
    build::row_description(out, cols);
    let n = rows.len();
    for r in rows {
        build::data_row(out, &r);
    }
    build::command_complete(out, &format!("{tag} {n}"));
}

fn s(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

fn show_pools(ctx: &ProxyContext, out: &mut BytesMut) {
    let mode = format!("{:?}", ctx.cfg.pool_mode).to_lowercase();
    let rows = ctx
        .pools
        .summaries()
        .iter()
        .map(|p| {
            vec![
                s(&p.key.database),
                s(&p.key.user),
                s(&p.key.node),
                s(p.open.saturating_sub(p.idle)),
                s(p.idle),
                s(p.waiting),
                s(p.checkouts),
                s(&mode),
            ]
        })
        .collect();
    table(
        out,
        &["database", "user", "node", "sv_active", "sv_idle", "cl_waiting", "checkouts", "pool_mode"],
        rows,
        "SHOW",
    );
}

fn show_clients(ctx: &ProxyContext, out: &mut BytesMut) {
    let rows = ctx
        .clients
        .all()
        .iter()
        .map(|c| {
            let (user, db) = c.login.lock().ok().and_then(|l| l.clone()).unwrap_or_default();
            let state = match c.state() {
                ClientState::Login => "login",
                ClientState::Idle => "idle",
                ClientState::Active => "active",
                ClientState::Waiting => "waiting",
            };
            let node = c.node().map(|n| n.id.to_string());
            let since = c.connected_at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            vec![
                s(c.id),
                s(c.addr),
                s(user),
                s(db),
                s(state),
                node,
                s(c.tls.load(Ordering::Relaxed)),
                s(since),
                s(c.requests.load(Ordering::Relaxed)),
            ]
        })
        .collect();
    table(out, &["id", "addr", "user", "database", "state", "node", "tls", "connect_time", "requests"], rows, "SHOW");
}

fn show_servers(ctx: &ProxyContext, out: &mut BytesMut) {
    let rows = ctx
        .pools
        .summaries()
        .iter()
        .map(|p| {
            vec![
                s(&p.key.node),
                s(&p.addr),
                s(&p.key.user),
                s(&p.key.database),
                s(p.open.saturating_sub(p.idle)),
                s(p.idle),
                s(p.opened),
            ]
        })
        .collect();
    table(out, &["node", "addr", "user", "database", "active", "idle", "opened"], rows, "SHOW");
}

fn show_nodes(ctx: &ProxyContext, out: &mut BytesMut) {
    let topo = ctx.router.topology();
    let rows = topo
        .nodes()
        .map(|n| {
            vec![
                s(&n.id),
                s(n.role),
                s(&n.addr),
                s(n.is_healthy()),
                s(n.lag_ok()),
                s(n.lsn()),
                s(n.outstanding()),
                s(n.routed.load(Ordering::Relaxed)),
                s(topo.epoch),
            ]
        })
        .collect();
    table(out, &["node", "role", "addr", "healthy", "lag_ok", "lsn", "outstanding", "routed", "epoch"], rows, "SHOW");
}

fn show_stats(ctx: &ProxyContext, out: &mut BytesMut) {
    let topo = ctx.router.topology();
    let uptime = ctx.started.elapsed().as_secs().max(1);
    let rows = topo
        .nodes()
        .map(|n| {
            let routed = n.routed.load(Ordering::Relaxed);
            vec![s(&n.id), s(n.role), s(routed), s(routed / uptime), s(n.outstanding())]
        })
        .collect();
    table(out, &["node", "role", "total_requests", "avg_req_per_sec", "in_flight"], rows, "SHOW");
}
