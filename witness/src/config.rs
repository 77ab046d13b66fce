//! Settings of one `tandem witness` process: which witness it is, where its Raft data lives,
//! the cluster it judges, and the timings that decide how fast it judges.
//!
//! The timing defaults serve the failover goal (≤ 3 s from a kill -9 of the primary to the
//! next write through the proxy). A killed primary refuses connections at once, so:
//! first failed probe ≤ `probe_interval` (200 ms) after the kill; a majority must then see
//! it failing for `failure_timeout` (1 000 ms); the leader looks at reports every probe
//! interval, so the primary is declared failed ≈ 1.2–1.4 s after the kill, leaving the
//! failover steps (fence, catch up, promote, publish) about 1.5 s. A frozen primary is
//! noticed by `probe_timeout` (500 ms) per probe instead. A witness leader lost to a crash is
//! replaced after an election timeout (250–500 ms, heartbeats every 100 ms: measured 0.5–0.75
//! s on a loaded 2-core machine), after which the new leader starts the failure clock again
//! from the reports it receives.

use std::path::PathBuf;
use std::time::Duration;

use tandem_core::ClusterSpec;

/// Everything one witness needs.
#[derive(Clone, Debug)]
pub struct WitnessConfig {
    /// This witness's id (must be in `cluster.witnesses`).
    pub id: u64,
    /// Where the Raft log, vote and snapshots live (`witness.redb`).
    pub data_dir: PathBuf,
    /// The nodes and the witnesses.
    pub cluster: ClusterSpec,
    /// How probes log in to PostgreSQL.
    pub probe: ProbeLogin,
    /// Probe and Raft timings.
    pub timing: Timing,
    /// How failover decides.
    pub failover: FailoverSettings,
}

/// Failover's limits.
#[derive(Clone, Debug)]
pub struct FailoverSettings {
    /// How long standbys may take to replay what the relay and the others hold before the
    /// failover is blocked (sync mode) or the most advanced is taken (async mode).
    pub catch_up_timeout: Duration,
    /// Async mode: a standby further than this many bytes behind the old primary's last
    /// known position is not promoted (Patroni's `maximum_lag_on_failover`, same default).
    pub max_lag_on_failover: u64,
    /// A switchover target further than this many bytes behind the primary is refused
    /// (catching it up would lengthen the write pause).
    pub max_lag_on_switchover: u64,
}

impl Default for FailoverSettings {
    fn default() -> Self {
        FailoverSettings {
            catch_up_timeout: Duration::from_secs(10),
            max_lag_on_failover: 1024 * 1024,
            max_lag_on_switchover: 16 * 1024 * 1024,
        }
    }
}

/// The login probes use (a role that may connect to `database`; no special privileges).
#[derive(Clone, Debug)]
pub struct ProbeLogin {
    /// User name.
    pub user: String,
    /// Password, if the servers ask for one.
    pub password: Option<String>,
    /// Database to connect to.
    pub database: String,
}

impl Default for ProbeLogin {
    fn default() -> Self {
        ProbeLogin { user: "postgres".into(), password: None, database: "postgres".into() }
    }
}

/// Timings (see the module docs for why these defaults).
#[derive(Clone, Debug)]
pub struct Timing {
    /// How often every node is probed.
    pub probe_interval: Duration,
    /// Bound on one probe (connect + query).
    pub probe_timeout: Duration,
    /// How long a majority must have failed to reach the primary before it is declared failed.
    pub failure_timeout: Duration,
    /// Raft heartbeat interval.
    pub heartbeat: Duration,
    /// Raft election timeout range.
    pub election_min: Duration,
    /// Upper end of the election timeout range.
    pub election_max: Duration,
    /// Bound on one replicated write (a leader cut off from its quorum never answers).
    pub write_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            probe_interval: Duration::from_millis(200),
            probe_timeout: Duration::from_millis(500),
            failure_timeout: Duration::from_millis(1000),
            heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(250),
            election_max: Duration::from_millis(500),
            write_timeout: Duration::from_secs(2),
        }
    }
}

/// Why a witness configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The cluster description is wrong.
    #[error(transparent)]
    Cluster(#[from] tandem_core::ClusterError),
    /// Anything else, with the reason.
    #[error("invalid witness configuration: {0}")]
    Invalid(String),
}

impl WitnessConfig {
    /// Checks the configuration before anything starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.cluster.validate()?;
        if self.cluster.witness(self.id).is_none() {
            let ids: Vec<u64> = self.cluster.witnesses.iter().map(|w| w.id).collect();
            return Err(ConfigError::Invalid(format!("witness id {} is not among the witnesses {ids:?}", self.id)));
        }
        let t = &self.timing;
        if t.election_min <= t.heartbeat * 2 || t.election_max <= t.election_min {
            return Err(ConfigError::Invalid("election timeouts must exceed twice the heartbeat, min < max".into()));
        }
        if t.failure_timeout < t.probe_interval * 2 {
            return Err(ConfigError::Invalid("failure_timeout must be at least two probe intervals".into()));
        }
        Ok(())
    }

    /// This witness's own API address.
    pub fn own_addr(&self) -> &str {
        self.cluster.witness(self.id).map(|w| w.addr.as_str()).unwrap_or_default()
    }
}
