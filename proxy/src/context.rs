//! The state every session shares, built once by [`crate::run`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::auth::SecretStore;
use crate::cancel::CancelRegistry;
use crate::config::ProxyConfig;
use crate::gate::PauseGate;
use crate::metrics::Metrics;
use crate::pool::Pools;
use crate::router::classify::{Classifier, FunctionTable};
use crate::router::Router;

/// Shared by all client sessions of one proxy.
pub struct ProxyContext {
    /// Settings.
    pub cfg: Arc<ProxyConfig>,
    /// Node choice.
    pub router: Router,
    /// Server connection pools.
    pub pools: Arc<Pools>,
    /// Statement classifier.
    pub classifier: Classifier,
    /// Function volatilities the classifier consults.
    pub functions: Arc<FunctionTable>,
    /// Where client secrets come from.
    pub secrets: SecretStore,
    /// Cancel keys of live sessions.
    pub cancels: Arc<CancelRegistry>,
    /// PAUSE / RESUME.
    pub gate: Arc<PauseGate>,
    /// TLS, when configured.
    pub tls: Option<TlsAcceptor>,
    /// TLS towards the servers (for the checks logins that do not go through a pool).
    pub server_tls: Arc<crate::server_tls::ServerTls>,
    /// Connected clients, for SHOW CLIENTS.
    pub clients: ClientList,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Fires when the proxy shuts down.
    pub shutdown: CancellationToken,
    /// When the proxy started.
    pub started: Instant,
    /// RELOAD support.
    pub reload: ReloadHook,
    /// May writes go to the primary (the witness group's lease; always, without a group).
    pub lease: Arc<crate::group::WriteLease>,
}

/// What a client is doing, for SHOW CLIENTS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    /// Logging in.
    Login = 0,
    /// Waiting for the client's next request.
    Idle = 1,
    /// Running a request on a server connection.
    Active = 2,
    /// Waiting for a server connection or for RESUME.
    Waiting = 3,
}

/// One connected client.
#[derive(Debug)]
pub struct ClientInfo {
    /// Proxy-wide client number.
    pub id: u64,
    /// Peer address.
    pub addr: SocketAddr,
    /// When it connected.
    pub connected_at: SystemTime,
    /// User and database once known.
    pub login: Mutex<Option<(String, String)>>,
    /// Whether the connection is encrypted.
    pub tls: std::sync::atomic::AtomicBool,
    state: AtomicU8,
    /// Node of the server connection used last (see [`ClientInfo::node`]).
    node: Mutex<Option<Arc<crate::router::Node>>>,
    /// Whether a server connection on `node` is in use now. Attaching to the same node
    /// again costs a plain store, not the lock.
    node_attached: std::sync::atomic::AtomicBool,
    /// Address of the `Node` in `node` (0: none).
    node_address: std::sync::atomic::AtomicUsize,
    /// Requests completed.
    pub requests: AtomicU64,
    /// The worker thread serving the client; its share of the pools is the one used.
    pub worker: usize,
}

impl ClientInfo {
    /// Sets the displayed state.
    pub fn set_state(&self, s: ClientState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    /// Notes that the client now uses a server connection on `node`.
    pub fn attach_node(&self, node: &Arc<crate::router::Node>) {
        // Only the session writes `node`, so comparing with the address it stored last is
        // exact; the `Arc` in `node` keeps that address from being reused.
        let address = Arc::as_ptr(node) as usize;
        if self.node_address.load(Ordering::Relaxed) != address {
            if let Ok(mut n) = self.node.lock() {
                *n = Some(node.clone());
                self.node_address.store(address, Ordering::Relaxed);
            }
        }
        self.node_attached.store(true, Ordering::Release);
    }

    /// Notes that the client gave its server connection back.
    pub fn detach_node(&self) {
        self.node_attached.store(false, Ordering::Release);
    }

    /// Node of the server connection in use, if any.
    pub fn node(&self) -> Option<Arc<crate::router::Node>> {
        if !self.node_attached.load(Ordering::Acquire) {
            return None;
        }
        self.node.lock().ok().and_then(|n| n.clone())
    }

    /// The displayed state.
    pub fn state(&self) -> ClientState {
        match self.state.load(Ordering::Relaxed) {
            0 => ClientState::Login,
            1 => ClientState::Idle,
            2 => ClientState::Active,
            _ => ClientState::Waiting,
        }
    }
}

/// The set of connected clients.
#[derive(Debug, Default)]
pub struct ClientList {
    next: AtomicU64,
    map: Mutex<HashMap<u64, Arc<ClientInfo>>>,
}

/// Removes a client from the list when its session ends.
pub struct ClientGuard<'a> {
    list: &'a ClientList,
    /// The client.
    pub info: Arc<ClientInfo>,
}

impl Drop for ClientGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.list.map.lock() {
            m.remove(&self.info.id);
        }
    }
}

impl ClientList {
    /// Adds a client served by worker `worker`; `None` if `max` clients are already connected.
    pub fn add(&self, addr: SocketAddr, max: usize, worker: usize) -> Option<ClientGuard<'_>> {
        let mut m = self.map.lock().ok()?;
        if m.len() >= max {
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let info = Arc::new(ClientInfo {
            id,
            addr,
            connected_at: SystemTime::now(),
            login: Mutex::new(None),
            tls: Default::default(),
            state: AtomicU8::new(ClientState::Login as u8),
            node: Mutex::new(None),
            node_attached: Default::default(),
            node_address: Default::default(),
            requests: AtomicU64::new(0),
            worker,
        });
        m.insert(id, info.clone());
        Some(ClientGuard { list: self, info })
    }

    /// Connected clients, oldest first.
    pub fn all(&self) -> Vec<Arc<ClientInfo>> {
        let mut v: Vec<_> = self.map.lock().map(|m| m.values().cloned().collect()).unwrap_or_default();
        v.sort_by_key(|c| c.id);
        v
    }

    /// Number of connected clients.
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether no client is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What RELOAD needs: the config source and the handles it replaces.
pub struct ReloadHook {
    /// Re-reads the configuration file, if there is one.
    pub reloader: Option<crate::runtime::Reloader>,
    /// Publishes a new topology to the router.
    pub topology: tokio::sync::watch::Sender<Arc<crate::router::Topology>>,
    /// Stops the current health-check tasks.
    pub health_token: Mutex<CancellationToken>,
    /// Where new background tasks go.
    pub tracker: tokio_util::task::TaskTracker,
}
