//! Routing: which node serves a unit of work.
//!
//! `frontend → router → pool`: the session asks [`classify`] whether a
//! statement reads or writes, then [`Router::pick`] chooses a node: the primary
//! for writes, a healthy, caught-up replica for reads (via [`balance`]), the
//! primary again when no replica qualifies. [`health`] keeps the node states
//! that these choices read fresh.

pub mod balance;
pub mod classify;
pub mod health;
pub mod node;

use std::sync::Arc;
use std::time::Instant;

use tandem_core::Lsn;
use tokio::sync::watch;

use crate::config::ProxyConfig;
use balance::Balancer;
use classify::Route;
pub use node::{InFlight, Node, Topology};

/// Per-client memory that makes reads see the client's own writes.
///
/// After a write on the primary the client's reads need a replica that has
/// replayed it. The proxy does not learn a commit's LSN, but any primary
/// position sampled *after* the commit is at least as far: until such a sample
/// exists, the client's reads stay on the primary; after that, only replicas
/// at or past the sampled position qualify.
#[derive(Clone, Debug, Default)]
pub struct ReadFloor {
    wrote_at: Option<Instant>,
    min_lsn: Lsn,
}

impl ReadFloor {
    /// Notes that a write by this client has just completed.
    pub fn wrote(&mut self) {
        self.wrote_at = Some(Instant::now());
    }
}

/// Chooses nodes for sessions.
pub struct Router {
    topology: watch::Receiver<Arc<Topology>>,
    balancer: Balancer,
    read_from_replicas: bool,
    read_your_writes: bool,
}

impl Router {
    /// A router over the topology channel, configured from `cfg`.
    pub fn new(topology: watch::Receiver<Arc<Topology>>, cfg: &ProxyConfig) -> Router {
        Router {
            topology,
            balancer: Balancer::new(cfg.load_balance),
            read_from_replicas: cfg.read_from_replicas,
            read_your_writes: cfg.read_your_writes,
        }
    }

    /// The current topology.
    pub fn topology(&self) -> Arc<Topology> {
        self.topology.borrow().clone()
    }

    /// Picks the node for a unit with the given route.
    pub fn pick(&self, route: Route, floor: &mut ReadFloor) -> Arc<Node> {
        let topo = self.topology();
        if route == Route::Write || !self.read_from_replicas || topo.replicas.is_empty() {
            return topo.primary.clone();
        }
        if self.read_your_writes {
            if let Some(wrote_at) = floor.wrote_at {
                match topo.primary.sample() {
                    Some((sent, lsn)) if sent >= wrote_at => {
                        floor.min_lsn = floor.min_lsn.max(lsn);
                        floor.wrote_at = None;
                    }
                    _ => return topo.primary.clone(),
                }
            }
        }
        let eligible =
            |r: &&Arc<Node>| r.is_healthy() && r.lag_ok() && (!self.read_your_writes || r.lsn() >= floor.min_lsn);
        // Small clusters (the common case) pick without allocating.
        let mut few: [Option<&Arc<Node>>; 8] = [None; 8];
        let mut n = 0;
        let mut many = Vec::new();
        for r in topo.replicas.iter().filter(eligible) {
            if n < few.len() {
                few[n] = Some(r);
            } else {
                many.push(r);
            }
            n += 1;
        }
        let picked = if n <= few.len() {
            let arr: [&Arc<Node>; 8] = std::array::from_fn(|i| few[i].unwrap_or(&topo.primary));
            self.balancer.pick(&arr[..n])
        } else {
            many.splice(0..0, few.iter().flatten().copied());
            self.balancer.pick(&many)
        };
        match picked {
            Some(n) => n.clone(),
            None => topo.primary.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;
    use tandem_core::{Epoch, Role};

    fn setup(cfg: &ProxyConfig) -> (Router, Arc<Topology>) {
        let mk = |n: &NodeConfig, role| Arc::new(Node::new(n.name.clone(), n.addr.clone(), role, n.weight));
        let topo = Arc::new(Topology {
            epoch: Epoch(1),
            primary: mk(cfg.primary.as_ref().unwrap(), Role::Primary),
            replicas: cfg.replicas.iter().map(|r| mk(r, Role::Replica)).collect(),
        });
        let (_tx, rx) = watch::channel(topo.clone());
        std::mem::forget(_tx);
        (Router::new(rx, cfg), topo)
    }

    fn cfg() -> ProxyConfig {
        toml::from_str(
            r#"
            primary = { name = "p", addr = "127.0.0.1:1" }
            replicas = [{ name = "r1", addr = "127.0.0.1:2" }, { name = "r2", addr = "127.0.0.1:3" }]
            "#,
        )
        .unwrap()
    }

    #[test]
    fn writes_go_to_primary_reads_to_replicas() {
        let (router, _) = setup(&cfg());
        let mut floor = ReadFloor::default();
        assert_eq!(router.pick(Route::Write, &mut floor).id.as_str(), "p");
        assert_eq!(router.pick(Route::Read, &mut floor).role, Role::Replica);
    }

    #[test]
    fn unhealthy_or_lagging_replicas_are_skipped() {
        let (router, topo) = setup(&cfg());
        let mut floor = ReadFloor::default();
        topo.replicas[0].set_healthy(false);
        for _ in 0..5 {
            assert_eq!(router.pick(Route::Read, &mut floor).id.as_str(), "r2");
        }
        topo.replicas[1].set_lag_ok(false);
        assert_eq!(router.pick(Route::Read, &mut floor).id.as_str(), "p");
    }

    #[test]
    fn reads_after_a_write_wait_for_a_caught_up_replica() {
        let (router, topo) = setup(&cfg());
        let mut floor = ReadFloor::default();
        floor.wrote();
        // No primary sample since the write: stay on the primary.
        assert_eq!(router.pick(Route::Read, &mut floor).id.as_str(), "p");
        topo.primary.record_sample(Instant::now(), Lsn(100));
        topo.replicas[0].set_lsn(Lsn(50));
        topo.replicas[1].set_lsn(Lsn(100));
        for _ in 0..5 {
            assert_eq!(router.pick(Route::Read, &mut floor).id.as_str(), "r2");
        }
    }
}
