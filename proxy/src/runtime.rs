//! Starting and stopping the proxy: [`run`].
//!
//! Builds the shared [`ProxyContext`], starts the accept loop, health checks,
//! the function-volatility loader and the metrics endpoint, then waits for the
//! shutdown token. On shutdown the listener closes at once, idle clients get
//! a 57P01 FATAL, running transactions get `shutdown_timeout` to finish.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tandem_core::{Epoch, Role};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::SecretStore;
use crate::cancel::CancelRegistry;
use crate::config::{ConfigError, ProxyConfig};
use crate::context::{ClientList, ProxyContext};
use crate::frontend::workers::Workers;
use crate::gate::PauseGate;
use crate::metrics::{Metrics, MetricsSource};
use crate::pool::{PoolSettings, Pools};
use crate::router::classify::{Classifier, FunctionTable};
use crate::router::{health, Node, Router, Topology};
use crate::server_tls::ServerTls;

/// Re-reads the configuration for RELOAD.
pub type Reloader = Arc<dyn Fn() -> Result<ProxyConfig, String> + Send + Sync>;

/// The proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The configuration is invalid.
    #[error("invalid proxy configuration: {0}")]
    Config(#[from] ConfigError),
    /// TLS files are unusable.
    #[error("TLS setup failed")]
    Tls(#[from] crate::tls::TlsError),
    /// Server TLS cannot be set up.
    #[error(transparent)]
    ServerTls(#[from] crate::server_tls::ServerTlsError),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Classifier cache entries.
const CLASSIFIER_CACHE: usize = 10_000;

/// Builds the topology described by `cfg` at `epoch`.
fn topology(cfg: &ProxyConfig, epoch: Epoch) -> Result<Arc<Topology>, ConfigError> {
    let p = cfg.primary.as_ref().ok_or(ConfigError::NoPrimary)?;
    Ok(Arc::new(Topology {
        epoch,
        primary: Arc::new(Node::new(p.name.clone(), p.addr.clone(), Role::Primary, p.weight)),
        replicas: cfg
            .replicas
            .iter()
            .map(|r| Arc::new(Node::new(r.name.clone(), r.addr.clone(), Role::Replica, r.weight)))
            .collect(),
    }))
}

/// Runs the proxy until `shutdown` fires and its sessions have drained.
pub async fn run(
    cfg: Arc<ProxyConfig>,
    reloader: Option<Reloader>,
    shutdown: CancellationToken,
) -> Result<(), ProxyError> {
    cfg.validate()?;
    let tls = cfg.tls.as_ref().map(crate::tls::acceptor).transpose()?;
    let server_tls = Arc::new(ServerTls::new(&cfg)?);
    let listener =
        TcpListener::bind(cfg.listen).await.map_err(|source| ProxyError::Bind { addr: cfg.listen, source })?;
    let local = listener.local_addr().map_err(|source| ProxyError::Bind { addr: cfg.listen, source })?;
    let topo = topology(&cfg, Epoch(1))?;
    let (topo_tx, topo_rx) = watch::channel(topo.clone());
    let functions = Arc::new(FunctionTable::empty());
    let workers = cfg.workers();
    let metrics = Arc::new(Metrics::new(topo_rx.clone(), workers));
    let pools = Arc::new(Pools::new(
        PoolSettings {
            size: cfg.pool_size,
            connect_timeout: cfg.connect_timeout(),
            tls: server_tls.clone(),
            wait_timeout: Duration::from_secs(120),
            idle_timeout: Duration::from_millis(cfg.server_idle_timeout_ms),
        },
        workers,
    ));
    let tracker = TaskTracker::new();
    let health_token = Mutex::new(shutdown.child_token());
    let ctx = Arc::new(ProxyContext {
        router: Router::new(topo_rx, &cfg),
        pools: pools.clone(),
        classifier: Classifier::new(functions.clone(), CLASSIFIER_CACHE),
        functions: functions.clone(),
        secrets: SecretStore::new(&cfg, server_tls.clone()),
        cancels: Arc::new(CancelRegistry::default()),
        gate: Arc::new(PauseGate::new(workers)),
        tls,
        server_tls: server_tls.clone(),
        clients: ClientList::default(),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
        started: Instant::now(),
        reload: crate::context::ReloadHook { reloader, topology: topo_tx, health_token, tracker: tracker.clone() },
        lease: Arc::new(if cfg.witnesses.is_empty() {
            crate::group::WriteLease::unconditional()
        } else {
            crate::group::WriteLease::from_group()
        }),
        cfg: cfg.clone(),
    });
    if let Ok(token) = ctx.reload.health_token.lock() {
        health::spawn(topo.clone(), cfg.clone(), server_tls.clone(), token.clone(), &tracker);
    }
    tracker.spawn(function_loader(ctx.clone()));
    if ctx.lease.required() {
        tracker.spawn(crate::group::link::run(ctx.clone(), ctx.lease.clone(), shutdown.clone()));
        tracker.spawn(crate::group::topology::follow(ctx.clone(), shutdown.clone()));
    }
    if let Some(addr) = cfg.metrics_listen {
        let src = Arc::new(MetricsSource { metrics, pools });
        let token = shutdown.clone();
        tracker.spawn(async move {
            if let Err(e) = crate::metrics::serve(addr, src, token).await {
                tracing::error!(%addr, error = %e, "metrics endpoint failed");
            }
        });
    }
    tracing::info!(listen = %local, primary = %topo.primary.addr, replicas = topo.replicas.len(), pool_mode = ?cfg.pool_mode, workers, "tandem proxy listening");
    let workers = Workers::start(&ctx, workers, cfg.shutdown_timeout());
    crate::frontend::listener::accept_loop(ctx.clone(), listener, tracker.clone(), &workers).await;
    tracker.close();
    let (_, drained) = tokio::join!(workers.join(), tokio::time::timeout(cfg.shutdown_timeout(), tracker.wait()));
    if drained.is_err() {
        tracing::warn!(clients = ctx.clients.len(), "shutdown timeout: closing remaining sessions");
    }
    tracing::info!("tandem proxy stopped");
    Ok(())
}

/// Loads function volatilities from the primary, and again when the
/// classifier meets a function it does not know.
async fn function_loader(ctx: Arc<ProxyContext>) {
    let mut last_load: Option<Instant> = None;
    loop {
        let due = match last_load {
            None => true,
            Some(t) => t.elapsed() > Duration::from_secs(1) && ctx.classifier.take_refresh_request(),
        };
        if due {
            let primary = ctx.router.topology().primary.clone();
            let pg = health::control_config(&ctx.cfg, &primary, "tandem-catalog");
            match ctx.server_tls.connect_control(pg).await {
                Ok((client, conn_task)) => {
                    match FunctionTable::load(&client).await {
                        Ok(table) => {
                            ctx.functions.replace(table);
                            last_load = Some(Instant::now());
                        }
                        Err(e) => tracing::warn!(error = %e, "could not load function volatility"),
                    }
                    drop(client);
                    conn_task.abort();
                }
                Err(e) => tracing::debug!(error = %e, "cannot reach the primary to load function volatility"),
            }
        }
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(if last_load.is_some() { 250 } else { 1000 })) => {}
        }
    }
}

impl ProxyContext {
    /// RELOAD: re-reads the configuration and applies the node list.
    pub fn reload(&self) -> Result<String, String> {
        let reloader = self.reload.reloader.as_ref().ok_or("RELOAD needs the proxy to be started with --config")?;
        let fresh = reloader()?;
        fresh.validate().map_err(|e| e.to_string())?;
        let old = self.router.topology();
        let topo = topology(&fresh, old.epoch).map_err(|e| e.to_string())?;
        let same = old.primary.addr == topo.primary.addr
            && old.replicas.len() == topo.replicas.len()
            && old.replicas.iter().zip(&topo.replicas).all(|(a, b)| a.id == b.id && a.addr == b.addr);
        if same {
            return Ok("configuration re-read; node list unchanged".into());
        }
        self.switch_topology(topo.clone())?;
        Ok(format!("node list reloaded: primary {}, {} replica(s)", topo.primary.id, topo.replicas.len()))
    }

    /// Routes by `topo` from now on: health checks restart for its nodes, new units pick from
    /// it, and sessions pinned to a node that is no longer primary end at their next unit.
    pub fn switch_topology(&self, topo: Arc<Topology>) -> Result<(), String> {
        let mut token = self.reload.health_token.lock().map_err(|_| "internal lock poisoned")?;
        token.cancel();
        *token = self.shutdown.child_token();
        health::spawn(topo.clone(), self.cfg.clone(), self.server_tls.clone(), token.clone(), &self.reload.tracker);
        let keep: Vec<tandem_core::NodeAddr> = topo.nodes().map(|n| n.addr.clone()).collect();
        self.reload.topology.send_replace(topo);
        // The pools of nodes that left the topology (an old primary) go, idle connections first.
        let pools = self.pools.clone();
        self.reload.tracker.spawn(async move { pools.retire(&keep).await });
        Ok(())
    }
}
