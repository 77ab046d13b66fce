//! Proxy configuration: what `tandem proxy` flags and the `[proxy]` table of
//! `tandem.toml` turn into.
//!
//! Loaded once, checked by [`ProxyConfig::validate`], then shared read-only as
//! `Arc<ProxyConfig>` by every task of the proxy.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tandem_core::{NodeAddr, NodeId};

/// Everything the proxy needs to know to serve clients.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Address clients connect to.
    pub listen: SocketAddr,
    /// The node that takes writes.
    pub primary: Option<NodeConfig>,
    /// Nodes that serve reads.
    pub replicas: Vec<NodeConfig>,
    /// When a server connection goes back to its pool.
    pub pool_mode: PoolMode,
    /// How clients prove who they are.
    pub auth: AuthMethod,
    /// Users with passwords known to the proxy. Users not listed are looked up
    /// on the primary with `auth_query` (when `auth` is not `trust`).
    pub users: Vec<UserConfig>,
    /// Query returning `(usename, passwd)` for a user name (`$1`), run on the
    /// primary as the control user, like PgBouncer's `auth_query`.
    pub auth_query: String,
    /// Credentials for the proxy's own connections: health checks, function
    /// volatility look-ups and `auth_query`.
    pub control: ControlConfig,
    /// Server connections per (node, user, database) pool.
    pub pool_size: u32,
    /// Maximum number of client connections; more are refused with 53300.
    pub max_client_conn: usize,
    /// Send reads to replicas. Off: everything goes to the primary.
    pub read_from_replicas: bool,
    /// How reads are spread over healthy replicas.
    pub load_balance: LoadBalance,
    /// A replica further behind the primary than this many bytes of WAL gets no reads.
    pub max_replica_lag: u64,
    /// After a client's write, its reads go only to replicas that have replayed it.
    pub read_your_writes: bool,
    /// How often nodes are health-checked, in milliseconds.
    pub health_interval_ms: u64,
    /// Time allowed to connect and log in to a server, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Time a client has to finish startup and authentication, in milliseconds.
    pub login_timeout_ms: u64,
    /// Server connections idle longer than this are closed, in milliseconds.
    pub server_idle_timeout_ms: u64,
    /// Time running transactions get to finish on shutdown, in milliseconds.
    pub shutdown_timeout_ms: u64,
    /// Largest protocol message accepted from a client, in bytes. Large CopyData is
    /// streamed to the server instead, up to PostgreSQL's own limit (1 GiB).
    pub max_message_size: usize,
    /// TLS for client connections; without it SSLRequest is answered 'N'.
    pub tls: Option<TlsConfig>,
    /// TLS towards the servers, as libpq's `sslmode` (PgBouncer's `server_tls_sslmode`):
    /// pooled connections, health checks, catalog look-ups and `auth_query` alike.
    pub server_tls_mode: ServerTlsMode,
    /// PEM file of the CA certificates that sign the servers' certificates; needed by
    /// `verify-ca` and `verify-full`.
    pub server_tls_ca_file: Option<PathBuf>,
    /// Users allowed into the admin console (database `tandem`). With `trust`
    /// auth and an empty list, anyone may connect to it.
    pub admin_users: Vec<String>,
    /// Address of the Prometheus `/metrics` endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// Threads serving clients, each with its own event loop and share of every pool
    /// (0: see [`ProxyConfig::workers`]).
    pub threads: usize,
    /// The witness group's API addresses (`host:port`). When set, writes go to the primary
    /// only while the group grants this proxy a write lease. Empty: no group, no lease.
    pub witnesses: Vec<String>,
    /// Bearer token for the witnesses' mutating API (the cluster's `token`).
    pub witness_token: Option<String>,
    /// Length of the write lease asked of the group, in milliseconds (renewed every quarter).
    pub write_lease_ms: u64,
    /// How long a write waits for a lease before it is refused with 25006, in milliseconds:
    /// during a failover (about 2 s) writes pause instead of failing. 0: refuse at once.
    pub write_lease_wait_ms: u64,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 6432)),
            primary: None,
            replicas: Vec::new(),
            pool_mode: PoolMode::Transaction,
            auth: AuthMethod::Trust,
            users: Vec::new(),
            auth_query: "SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1".into(),
            control: ControlConfig::default(),
            pool_size: 20,
            max_client_conn: 10_000,
            read_from_replicas: true,
            load_balance: LoadBalance::LeastOutstanding,
            max_replica_lag: 16 * 1024 * 1024,
            read_your_writes: true,
            health_interval_ms: 1000,
            connect_timeout_ms: 5000,
            login_timeout_ms: 15_000,
            server_idle_timeout_ms: 600_000,
            shutdown_timeout_ms: 30_000,
            max_message_size: 256 * 1024 * 1024,
            tls: None,
            server_tls_mode: ServerTlsMode::Prefer,
            server_tls_ca_file: None,
            admin_users: Vec::new(),
            metrics_listen: None,
            threads: 0,
            witnesses: Vec::new(),
            witness_token: None,
            write_lease_ms: 2000,
            write_lease_wait_ms: 5000,
        }
    }
}

/// Connections of `pool_size` each worker thread gets at least when the thread count is
/// chosen automatically: a thread's share of a pool too small to cover its clients' bursts
/// would make them wait while another thread has connections free.
const MIN_POOL_SHARE: u32 = 8;

impl ProxyConfig {
    /// How many worker threads serve clients: `threads` if set, else one per core but
    /// no more than one per [`MIN_POOL_SHARE`] connections of `pool_size`; never more
    /// than `pool_size`, since every worker needs a connection of each pool.
    pub fn workers(&self) -> usize {
        let cap = self.pool_size.max(1) as usize;
        if self.threads > 0 {
            return self.threads.min(cap);
        }
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        cores.min(self.pool_size.div_ceil(MIN_POOL_SHARE) as usize).clamp(1, cap)
    }
}

/// One PostgreSQL server the proxy routes to.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Name used in admin output, metrics and logs.
    pub name: NodeId,
    /// Where the server listens.
    pub addr: NodeAddr,
    /// Share of reads under `load_balance = "weighted"`.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// Server-connection lifetime, as in PgBouncer.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A client keeps its server connections until it disconnects.
    Session,
    /// A client holds a server connection only for the length of a transaction.
    Transaction,
}

/// Client authentication method.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// Anyone may log in as anyone (local demos, tests).
    Trust,
    /// MD5 challenge; works with md5 or plain secrets.
    Md5,
    /// SCRAM-SHA-256; works with SCRAM or plain secrets.
    Scram,
    /// Drop-in: the primary decides per user, as its pg_hba.conf says (trust, password,
    /// md5, SCRAM-SHA-256), and the client answers the server through the proxy (see
    /// `auth::passthrough`). `auth_query` may be empty here.
    Passthrough,
}

/// A user the proxy knows the password of.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Role name.
    pub name: String,
    /// Plain password, `md5...` hash or `SCRAM-SHA-256$...` secret, as in pg_authid.
    pub password: String,
}

/// The proxy's own login to the servers.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Role for health checks, look-ups and `auth_query`.
    pub user: String,
    /// Its password, if the servers ask for one.
    pub password: Option<String>,
    /// Database those connections use.
    pub database: String,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig { user: "postgres".into(), password: None, database: "postgres".into() }
    }
}

/// Certificate and key for client TLS.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Whether and how the proxy encrypts its connections to servers; the names and meanings
/// are libpq's `sslmode`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTlsMode {
    /// Never: plain TCP.
    Disable,
    /// TLS when the server offers it, plain otherwise; the certificate is not checked.
    #[default]
    Prefer,
    /// TLS or no connection; the certificate is not checked.
    Require,
    /// TLS with a certificate signed by `server_tls_ca_file`, for any host name.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the host the node is addressed by.
    VerifyFull,
}

/// Read load-balancing policy.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalance {
    /// The replica with the fewest requests in flight (ties: round-robin).
    LeastOutstanding,
    /// Each replica in turn.
    RoundRobin,
    /// A uniformly random replica.
    Random,
    /// Random, in proportion to each replica's `weight`.
    Weighted,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No primary was given.
    #[error("no primary configured: pass --primary HOST:PORT or set [proxy.primary]")]
    NoPrimary,
    /// Two nodes share a name.
    #[error("node name {0} is used twice")]
    DuplicateNode(String),
    /// A number is out of range.
    #[error("{field} must be {rule}")]
    OutOfRange {
        /// The offending setting.
        field: &'static str,
        /// What it must be.
        rule: &'static str,
    },
    /// The auth query has no `$1`.
    #[error("auth_query must take the user name as $1")]
    AuthQuery,
    /// A verifying server TLS mode without the CA to verify with.
    #[error("server_tls_mode verify-ca and verify-full need server_tls_ca_file (--server-tls-ca-file)")]
    NoServerCa,
}

impl ProxyConfig {
    /// Checks the settings together; called once at load.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let primary = self.primary.as_ref().ok_or(ConfigError::NoPrimary)?;
        let mut names = vec![primary.name.as_str()];
        for r in &self.replicas {
            if names.contains(&r.name.as_str()) {
                return Err(ConfigError::DuplicateNode(r.name.to_string()));
            }
            names.push(r.name.as_str());
        }
        let range = |ok: bool, field, rule| if ok { Ok(()) } else { Err(ConfigError::OutOfRange { field, rule }) };
        range(self.pool_size >= 1 && self.pool_size <= 10_000, "pool_size", "between 1 and 10000")?;
        range(self.max_client_conn >= 1, "max_client_conn", "at least 1")?;
        range(self.threads <= 1024, "threads", "at most 1024 (0: automatic)")?;
        range(self.health_interval_ms >= 10, "health_interval_ms", "at least 10")?;
        range(self.connect_timeout_ms >= 10, "connect_timeout_ms", "at least 10")?;
        range(self.login_timeout_ms >= 10, "login_timeout_ms", "at least 10")?;
        range(self.server_idle_timeout_ms >= 100, "server_idle_timeout_ms", "at least 100")?;
        range(self.write_lease_ms >= 100 && self.write_lease_ms <= 30_000, "write_lease_ms", "between 100 and 30000")?;
        range(self.write_lease_wait_ms <= 60_000, "write_lease_wait_ms", "at most 60000")?;
        range(
            self.max_message_size >= 1024 && self.max_message_size <= 1 << 30,
            "max_message_size",
            "between 1 KiB and 1 GiB",
        )?;
        let optional_query = self.auth == AuthMethod::Passthrough && self.auth_query.trim().is_empty();
        if self.auth != AuthMethod::Trust && !optional_query && !self.auth_query.contains("$1") {
            return Err(ConfigError::AuthQuery);
        }
        let verifies = matches!(self.server_tls_mode, ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull);
        if verifies && self.server_tls_ca_file.is_none() {
            return Err(ConfigError::NoServerCa);
        }
        Ok(())
    }

    /// The health-check period.
    pub fn health_interval(&self) -> Duration {
        Duration::from_millis(self.health_interval_ms)
    }

    /// The server connect-and-login deadline.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The client startup-and-login deadline.
    pub fn login_timeout(&self) -> Duration {
        Duration::from_millis(self.login_timeout_ms)
    }

    /// The graceful-shutdown deadline.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, addr: &str) -> NodeConfig {
        NodeConfig { name: name.parse().unwrap(), addr: addr.parse().unwrap(), weight: 1 }
    }

    #[test]
    fn worker_count_keeps_a_useful_share_of_the_pool() {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let with = |pool_size, threads| ProxyConfig { pool_size, threads, ..ProxyConfig::default() }.workers();
        assert_eq!(with(20, 0), cores.min(3), "one per 8 connections, at most one per core");
        assert_eq!(with(8, 0), 1);
        assert_eq!(with(4, 2), 2, "set explicitly");
        assert_eq!(with(3, 16), 3, "never more workers than connections");
    }

    #[test]
    fn needs_a_primary() {
        assert!(matches!(ProxyConfig::default().validate(), Err(ConfigError::NoPrimary)));
    }

    #[test]
    fn rejects_duplicate_names() {
        let cfg = ProxyConfig {
            primary: Some(node("a", "127.0.0.1:5432")),
            replicas: vec![node("a", "127.0.0.1:5433")],
            ..Default::default()
        };
        assert!(matches!(cfg.validate(), Err(ConfigError::DuplicateNode(_))));
    }

    #[test]
    fn parses_toml_and_rejects_unknown_fields() {
        let cfg: ProxyConfig = toml::from_str(
            r#"
            listen = "127.0.0.1:7000"
            pool_mode = "session"
            load_balance = "round-robin"
            primary = { name = "pg1", addr = "127.0.0.1:5432" }
            replicas = [{ name = "pg2", addr = "127.0.0.1:5433", weight = 3 }]
            "#,
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.pool_mode, PoolMode::Session);
        assert_eq!(cfg.replicas[0].weight, 3);
        let err = toml::from_str::<ProxyConfig>("listen = \"127.0.0.1:1\"\nbogus = 1\n").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }
}
