//! Prometheus metrics of the proxy, served at `/metrics`.
//!
//! Sessions bump counters as they route and finish requests; pool sizes are
//! read from the pools when Prometheus scrapes. Every series starts with
//! `tandem_`.

mod latency;

pub use latency::Latency;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use tokio::sync::watch;

use crate::router::{Node, Topology};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::pool::Pools;

/// Labels of per-node request counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    /// Node name.
    pub node: String,
    /// `primary` or `replica`.
    pub role: String,
}

/// Labels of error counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// What went wrong: `auth`, `protocol`, `server_connect`, `server_lost`, `pool_timeout`, ...
    pub kind: String,
}

/// Labels of server-connection gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    /// Node name.
    pub node: String,
    /// `active` (checked out) or `idle`.
    pub state: String,
}

/// All metric handles.
pub struct Metrics {
    registry: Registry,
    /// Connected clients.
    pub clients: Gauge,
    /// Client connections accepted since start.
    pub client_connections: Counter,
    /// Errors by kind.
    pub errors: Family<ErrorLabels, Counter>,
    /// Time from routing a request to its last response.
    pub latency: Latency,
    server_connections: Family<ServerLabels, Gauge>,
}

/// Per-node series read from the router's node state at scrape time, so the
/// data path only bumps an atomic counter on the node.
#[derive(Debug)]
struct NodeCollector {
    topology: watch::Receiver<Arc<Topology>>,
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let topo = self.topology.borrow().clone();
        let labels = |n: &Node| NodeLabels { node: n.id.to_string(), role: n.role.as_str().to_owned() };
        {
            let mut m = encoder.encode_descriptor(
                "queries_routed",
                "Requests (transactions or autocommit statements) routed, by node and role",
                None,
                MetricType::Counter,
            )?;
            for n in topo.nodes() {
                ConstCounter::new(n.routed.load(Ordering::Relaxed)).encode(m.encode_family(&labels(n))?)?;
            }
        }
        {
            let mut m =
                encoder.encode_descriptor("node_up", "1 if the node passes health checks", None, MetricType::Gauge)?;
            for n in topo.nodes() {
                ConstGauge::new(i64::from(n.is_healthy())).encode(m.encode_family(&labels(n))?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "node_requests_in_flight",
                "Requests running on the node",
                None,
                MetricType::Gauge,
            )?;
            for n in topo.nodes() {
                ConstGauge::new(n.outstanding() as i64).encode(m.encode_family(&labels(n))?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "replica_lag_bytes",
                "WAL bytes a replica is behind the primary (last health check)",
                None,
                MetricType::Gauge,
            )?;
            for n in &topo.replicas {
                let lag = topo.primary.lsn().bytes_since(n.lsn());
                ConstGauge::new(lag as i64).encode(m.encode_family(&labels(n))?)?;
            }
        }
        Ok(())
    }
}

impl Metrics {
    /// Metrics for `workers` worker threads, whose per-node series follow `topology`.
    pub fn new(topology: watch::Receiver<Arc<Topology>>, workers: usize) -> Metrics {
        let mut registry = Registry::with_prefix("tandem");
        let clients = Gauge::default();
        let client_connections = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let latency = Latency::new(workers);
        let server_connections = Family::<ServerLabels, Gauge>::default();
        registry.register("clients", "Connected clients", clients.clone());
        registry.register("client_connections", "Client connections accepted", client_connections.clone());
        registry.register("errors", "Errors, by kind", errors.clone());
        registry.register("query_duration_seconds", "Request latency through the proxy", latency.clone());
        registry.register("server_connections", "Server connections, by node and state", server_connections.clone());
        registry.register_collector(Box::new(NodeCollector { topology }));
        Metrics { registry, clients, client_connections, errors, latency, server_connections }
    }

    /// Counts an error of `kind`.
    pub fn error(&self, kind: &str) {
        self.errors.get_or_create(&ErrorLabels { kind: kind.to_owned() }).inc();
    }

    /// Renders the text exposition format, refreshing pool gauges first.
    pub fn render(&self, pools: &Pools) -> String {
        self.server_connections.clear();
        for p in pools.summaries() {
            let (open, idle) = (p.open, p.idle);
            let node = p.key.node.to_string();
            let active = i64::from(open.saturating_sub(idle));
            self.server_connections
                .get_or_create(&ServerLabels { node: node.clone(), state: "active".into() })
                .inc_by(active);
            self.server_connections.get_or_create(&ServerLabels { node, state: "idle".into() }).inc_by(i64::from(idle));
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// What the HTTP handler needs.
pub struct MetricsSource {
    /// The metric handles.
    pub metrics: Arc<Metrics>,
    /// The pools whose sizes are reported.
    pub pools: Arc<Pools>,
}

async fn handler(State(src): State<Arc<MetricsSource>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        src.metrics.render(&src.pools),
    )
}

/// Serves `/metrics` on `addr` until `shutdown`.
pub async fn serve(addr: SocketAddr, src: Arc<MetricsSource>, shutdown: CancellationToken) -> std::io::Result<()> {
    let app = axum::Router::new().route("/metrics", get(handler)).with_state(src);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics endpoint listening");
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}
