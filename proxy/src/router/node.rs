//! The proxy's live view of the cluster's nodes.
//!
//! Health checks write into a [`Node`] (up or down, WAL position), sessions
//! read it when routing and count their in-flight requests on it. The set of
//! nodes and who is primary form a [`Topology`], published through a
//! `tokio::sync::watch` channel: today it is fixed at start-up (or by RELOAD);
//! the witness group will publish new epochs through the same channel.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tandem_core::{Epoch, Lsn, NodeAddr, NodeId, Role};

/// One PostgreSQL server as the router sees it.
#[derive(Debug)]
pub struct Node {
    /// Operator-given name.
    pub id: NodeId,
    /// Where it listens.
    pub addr: NodeAddr,
    /// Its role in the current epoch.
    pub role: Role,
    /// Share of reads under weighted balancing.
    pub weight: u32,
    healthy: AtomicBool,
    lag_ok: AtomicBool,
    outstanding: AtomicUsize,
    lsn: AtomicU64,
    /// For the primary: the latest (time the probe was sent, WAL insert LSN seen).
    sample: Mutex<Option<(Instant, Lsn)>>,
    /// Requests routed here (for SHOW STATS and metrics).
    pub routed: AtomicU64,
}

impl Node {
    /// A node assumed healthy until a check says otherwise.
    pub fn new(id: NodeId, addr: NodeAddr, role: Role, weight: u32) -> Node {
        Node {
            id,
            addr,
            role,
            weight,
            healthy: AtomicBool::new(true),
            lag_ok: AtomicBool::new(true),
            outstanding: AtomicUsize::new(0),
            lsn: AtomicU64::new(0),
            sample: Mutex::new(None),
            routed: AtomicU64::new(0),
        }
    }

    /// Whether the last check (or use) succeeded.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records a check result or a failed use.
    pub fn set_healthy(&self, up: bool) {
        let was = self.healthy.swap(up, Ordering::Relaxed);
        if was != up {
            if up {
                tracing::info!(node = %self.id, "node is back in rotation");
            } else {
                tracing::warn!(node = %self.id, "node taken out of rotation");
            }
        }
    }

    /// Whether the replica is within `max_replica_lag`.
    pub fn lag_ok(&self) -> bool {
        self.lag_ok.load(Ordering::Relaxed)
    }

    /// Records whether the replica is within `max_replica_lag`.
    pub fn set_lag_ok(&self, ok: bool) {
        self.lag_ok.store(ok, Ordering::Relaxed);
    }

    /// Replay (replica) or insert (primary) position last seen.
    pub fn lsn(&self) -> Lsn {
        Lsn(self.lsn.load(Ordering::Relaxed))
    }

    /// Records the position a check saw.
    pub fn set_lsn(&self, lsn: Lsn) {
        self.lsn.fetch_max(lsn.0, Ordering::Relaxed);
    }

    /// Records a primary position sample taken by a probe sent at `sent`.
    pub fn record_sample(&self, sent: Instant, lsn: Lsn) {
        self.set_lsn(lsn);
        if let Ok(mut s) = self.sample.lock() {
            *s = Some((sent, lsn));
        }
    }

    /// The primary's latest position sample.
    pub fn sample(&self) -> Option<(Instant, Lsn)> {
        self.sample.lock().ok().and_then(|s| *s)
    }

    /// Requests currently in flight on this node.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Counts a request starting here; the guard counts it finished.
    pub fn begin_request(self: &Arc<Self>) -> InFlight {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        self.routed.fetch_add(1, Ordering::Relaxed);
        InFlight { node: self.clone() }
    }
}

/// A request in flight on a node; decrements the node's counter on drop.
#[derive(Debug)]
pub struct InFlight {
    node: Arc<Node>,
}

impl InFlight {
    /// The node the request runs on.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.node.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Who is primary and who serves reads, at one epoch.
#[derive(Debug)]
pub struct Topology {
    /// Generation of this view.
    pub epoch: Epoch,
    /// The writable node.
    pub primary: Arc<Node>,
    /// The read-only nodes.
    pub replicas: Vec<Arc<Node>>,
}

impl Topology {
    /// Every node, primary first.
    pub fn nodes(&self) -> impl Iterator<Item = &Arc<Node>> {
        std::iter::once(&self.primary).chain(self.replicas.iter())
    }

    /// A node by name.
    pub fn node(&self, id: &NodeId) -> Option<&Arc<Node>> {
        self.nodes().find(|n| &n.id == id)
    }
}
