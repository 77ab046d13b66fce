//! Health checks: keeping each [`Node`]'s state true.
//!
//! One task per node runs a small SQL probe over tokio-postgres every
//! `health_interval`: whether the node answers, and its WAL position (insert
//! position on the primary, replay position on a physical standby, the
//! replicator's applied position on a Tandem-fed replica). A failed probe takes
//! the node out of rotation; the next good one puts it back. Replica lag is the
//! primary's position minus the replica's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_core::{Lsn, Role};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::node::{Node, Topology};
use crate::config::ProxyConfig;
use crate::server_tls::ServerTls;

/// How a replica reports how far it has replayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Position {
    /// `pg_current_wal_lsn()` on the primary.
    Insert,
    /// `pg_last_wal_replay_lsn()` on a physical standby.
    Replay,
    /// The Tandem replicator's progress table.
    Applied,
    /// Nothing known (a replica that is neither).
    Unknown,
}

/// Starts one probe task per node of `topology`.
pub fn spawn(
    topology: Arc<Topology>,
    cfg: Arc<ProxyConfig>,
    tls: Arc<ServerTls>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    for node in topology.nodes() {
        let (node, primary, cfg, shutdown) = (node.clone(), topology.primary.clone(), cfg.clone(), shutdown.clone());
        let tls = tls.clone();
        tracker.spawn(async move {
            shutdown.run_until_cancelled(probe_loop(node, primary, cfg, tls)).await;
        });
    }
}

/// A tokio-postgres configuration for the proxy's own connections to `node`.
pub fn control_config(cfg: &ProxyConfig, node: &Node, purpose: &str) -> tokio_postgres::Config {
    let mut pg = tokio_postgres::Config::new();
    pg.host(&node.addr.host)
        .port(node.addr.port)
        .user(&cfg.control.user)
        .dbname(&cfg.control.database)
        .application_name(purpose)
        .connect_timeout(cfg.connect_timeout());
    if let Some(pw) = &cfg.control.password {
        pg.password(pw);
    }
    pg
}

async fn probe_loop(node: Arc<Node>, primary: Arc<Node>, cfg: Arc<ProxyConfig>, tls: Arc<ServerTls>) {
    let interval = cfg.health_interval();
    loop {
        // The whole login and first query are bounded, not only the TCP connect: a server
        // that accepts but never answers (stopped, or its host partitioned after the
        // handshake) must not freeze this node's health state.
        let login = tokio::time::timeout(cfg.connect_timeout(), connect(&cfg, &tls, &node)).await;
        match login {
            Ok(Ok((client, position))) => loop {
                let sent = Instant::now();
                match tokio::time::timeout(cfg.connect_timeout(), probe(&client, position)).await {
                    Ok(Ok(Probed::InRecovery)) => {
                        // A primary that is a standby (not promoted yet, or demoted) takes no
                        // writes: not healthy as a primary.
                        if node.is_healthy() {
                            tracing::warn!(node = %node.id, "the primary is in recovery: not healthy as a primary");
                        }
                        node.set_healthy(false);
                    }
                    Ok(Ok(Probed::At(lsn))) => {
                        node.set_healthy(true);
                        if let Some(lsn) = lsn {
                            if node.role == Role::Primary {
                                node.record_sample(sent, lsn);
                            } else {
                                node.set_lsn(lsn);
                                let behind = primary.lsn().bytes_since(lsn);
                                node.set_lag_ok(behind <= cfg.max_replica_lag);
                            }
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(node = %node.id, error = %e, "health check failed");
                        node.set_healthy(false);
                        break;
                    }
                    Err(_) => {
                        tracing::warn!(node = %node.id, "health check timed out");
                        node.set_healthy(false);
                        break;
                    }
                }
                tokio::time::sleep(interval).await;
            },
            Ok(Err(e)) => {
                tracing::debug!(node = %node.id, error = %e, "health check cannot connect");
                node.set_healthy(false);
            }
            Err(_) => {
                tracing::debug!(node = %node.id, "health check login timed out");
                node.set_healthy(false);
            }
        }
        tokio::time::sleep(interval.max(Duration::from_millis(100))).await;
    }
}

async fn connect(
    cfg: &ProxyConfig,
    tls: &ServerTls,
    node: &Node,
) -> Result<(tokio_postgres::Client, Position), tokio_postgres::Error> {
    // The connection task ends when the client is dropped.
    let (client, _connection) = tls.connect_control(control_config(cfg, node, "tandem-health")).await?;
    let row = client.query_one("SELECT pg_is_in_recovery(), to_regclass('tandem.applied') IS NOT NULL", &[]).await?;
    let (in_recovery, has_progress): (bool, bool) = (row.get(0), row.get(1));
    let position = match (node.role, in_recovery, has_progress) {
        (Role::Primary, _, _) => Position::Insert,
        (_, true, _) => Position::Replay,
        (Role::Replica, false, true) => Position::Applied,
        (Role::Replica, false, false) => Position::Unknown,
    };
    Ok((client, position))
}

/// What one probe found.
enum Probed {
    /// The node's position (none when it cannot tell).
    At(Option<Lsn>),
    /// A node expected to be primary is in recovery.
    InRecovery,
}

async fn probe(client: &tokio_postgres::Client, position: Position) -> Result<Probed, tokio_postgres::Error> {
    let sql = match position {
        Position::Insert => "SELECT CASE WHEN pg_is_in_recovery() THEN 'recovery' ELSE pg_current_wal_lsn()::text END",
        Position::Replay => "SELECT pg_last_wal_replay_lsn()::text",
        Position::Applied => "SELECT max(lsn)::text FROM tandem.applied",
        Position::Unknown => "SELECT NULL::text",
    };
    let row = client.query_one(sql, &[]).await?;
    let text: Option<String> = row.get(0);
    if text.as_deref() == Some("recovery") {
        return Ok(Probed::InRecovery);
    }
    Ok(Probed::At(text.and_then(|t| t.parse().ok())))
}
