//! Server connection pools, one per (node, user, database).
//!
//! `router → pool → server`: once the router has picked a node, the session
//! checks a [`ServerConn`] out of that node's pool for the client's user and
//! database. Pools are bb8 pools; [`ServerPool::acquire`] opens new
//! connections in the client's own task when the pool can grow, so that a
//! server's refusal (wrong database, bad password, node down) reaches the
//! client at once instead of surfacing as a bb8 timeout.
//!
//! Each worker thread (see `frontend::workers`) has its own share of every pool, so a
//! server connection is only ever polled by the event loop it was registered with.
//!
//! Here: [`Pools`], every pool by worker and key. One pool and its parking of idle
//! connections is in `server_pool.rs`, one connection in [`server`], opening and logging in
//! in [`connect`].

pub mod connect;
pub mod known;
pub mod server;
mod server_pool;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tandem_core::{NodeAddr, NodeId};

use crate::auth::ServerCredential;
use crate::server_tls::ServerTls;
pub use connect::ConnectError;
pub use server::{CancelKey, ServerConn};
pub use server_pool::{AcquireError, Checkout, PoolStats, ServerManager, ServerPool};

/// Identity of a pool.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    /// The node the connections go to.
    pub node: NodeId,
    /// Role the connections log in as.
    pub user: String,
    /// Database they connect to.
    pub database: String,
}

/// Pool settings shared by all pools.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    /// Maximum connections per pool.
    pub size: u32,
    /// Login deadline for a new server connection.
    pub connect_timeout: Duration,
    /// TLS towards the servers.
    pub tls: Arc<ServerTls>,
    /// How long a session waits for a connection of a full pool.
    pub wait_timeout: Duration,
    /// Idle connections are closed after this.
    pub idle_timeout: Duration,
}

/// All pools of the proxy: one set per worker thread.
pub struct Pools {
    settings: PoolSettings,
    /// Indexed by worker; each holds that worker's share of every pool.
    shards: Vec<Mutex<HashMap<PoolKey, Arc<ServerPool>>>>,
    /// Statements that parsed on some server, so a repeated `Parse` needs no server.
    pub known: known::KnownStatements,
}

/// One pool summed over the workers' shares, for admin output and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSummary {
    /// Which node, user and database.
    pub key: PoolKey,
    /// Where the node listens.
    pub addr: NodeAddr,
    /// Open server connections.
    pub open: u32,
    /// Of those, the idle ones.
    pub idle: u32,
    /// Sessions waiting for a connection.
    pub waiting: usize,
    /// Check-outs served.
    pub checkouts: u64,
    /// Connections opened over the pool's life.
    pub opened: u64,
}

impl Pools {
    /// An empty set of pools for `workers` worker threads. `settings.size` is split
    /// between them (see [`Pools::share`]); at most `settings.size` workers get a share.
    pub fn new(settings: PoolSettings, workers: usize) -> Pools {
        let workers = workers.clamp(1, settings.size.max(1) as usize);
        Pools {
            settings,
            shards: (0..workers).map(|_| Mutex::new(HashMap::new())).collect(),
            known: known::KnownStatements::default(),
        }
    }

    /// Connections worker `worker` may open per pool: the pool size split evenly, the
    /// first workers taking the remainder, so the shares add up to the pool size.
    pub fn share(&self, worker: usize) -> u32 {
        let n = self.shards.len() as u32;
        let w = (worker % self.shards.len()) as u32;
        self.settings.size / n + u32::from(w < self.settings.size % n)
    }

    /// The pool for `key` of worker `worker`, created on first use. Only that worker's
    /// tasks may use it: its connections belong to the worker's event loop.
    pub fn get(&self, worker: usize, key: &PoolKey, addr: &NodeAddr, cred: &ServerCredential) -> Arc<ServerPool> {
        let shard = &self.shards[worker % self.shards.len()];
        let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = map.get(key) {
            if p.addr == *addr {
                return p.clone();
            }
        }
        let sp = ServerPool::new(key, addr, cred, self.share(worker), &self.settings);
        map.insert(key.clone(), sp.clone());
        sp
    }

    /// Closes the idle connections of every pool of `database` (see [`ServerPool::close_idle`]).
    pub async fn close_idle(&self, database: &str) {
        for p in self.all().into_iter().filter(|p| p.key.database == database) {
            p.close_idle().await;
        }
    }

    /// Forgets the pools of nodes not at `keep` (the topology moved away from them) and closes
    /// their idle connections; connections sessions still hold go when those sessions let go
    /// (pinned ones end at their next unit, see `frontend/attach.rs`).
    pub async fn retire(&self, keep: &[NodeAddr]) {
        let mut gone = Vec::new();
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
            map.retain(|_, p| {
                let kept = keep.contains(&p.addr);
                if !kept {
                    gone.push(p.clone());
                }
                kept
            });
        }
        for p in gone {
            p.close_idle().await;
        }
    }

    /// Every worker's pools.
    fn all(&self) -> Vec<Arc<ServerPool>> {
        let shards = self.shards.iter().map(|m| m.lock().unwrap_or_else(PoisonError::into_inner));
        shards.flat_map(|map| map.values().cloned().collect::<Vec<_>>()).collect()
    }

    /// Each pool summed over the workers, sorted by key (for admin output and metrics).
    pub fn summaries(&self) -> Vec<PoolSummary> {
        let mut out: Vec<PoolSummary> = Vec::new();
        let mut pools = self.all();
        pools.sort_by(|a, b| a.key.cmp(&b.key));
        for p in pools {
            let (open, idle) = p.sizes();
            let waiting = p.stats.waiting.load(Ordering::Relaxed);
            let checkouts = p.stats.checkouts.load(Ordering::Relaxed);
            match out.last_mut() {
                Some(last) if last.key == p.key && last.addr == p.addr => {
                    last.open += open;
                    last.idle += idle;
                    last.waiting += waiting;
                    last.checkouts += checkouts;
                    last.opened += p.opened();
                }
                _ => out.push(PoolSummary {
                    key: p.key.clone(),
                    addr: p.addr.clone(),
                    open,
                    idle,
                    waiting,
                    checkouts,
                    opened: p.opened(),
                }),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_shares_add_up_to_the_pool_size() {
        let settings = |size| PoolSettings {
            size,
            connect_timeout: Duration::from_secs(1),
            tls: Arc::new(ServerTls::disabled()),
            wait_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
        };
        let shares = |size, workers| {
            let pools = Pools::new(settings(size), workers);
            (0..workers).map(|w| pools.share(w)).collect::<Vec<_>>()
        };
        assert_eq!(shares(20, 2), [10, 10]);
        assert_eq!(shares(5, 2), [3, 2]);
        assert_eq!(shares(7, 3), [3, 2, 2]);
        // More workers than connections: the extra workers share a pool with the first.
        assert_eq!(shares(1, 2), [1, 1]);
        assert_eq!(Pools::new(settings(1), 2).shards.len(), 1);
    }
}
