//! Replicator settings: what `tandem replicator` flags and the `[replicator]`
//! section of `tandem.toml` turn into, checked once before [`crate::run`] starts.
//!
//! Every other module reads its knobs from [`ReplicatorConfig`]; nothing here
//! touches the network.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use tandem_core::NodeId;

/// Everything the replicator needs to run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicatorConfig {
    /// DSN (URL or `key=value`) of the primary: the source of changes. Its
    /// database part is ignored; each replicated database gets its own connection.
    pub primary: String,
    /// The servers to keep in step with the primary.
    pub replicas: Vec<ReplicaConfig>,
    /// Databases to replicate; empty means every non-template database that allows connections.
    #[serde(default)]
    pub databases: Vec<String>,
    /// Whether the primary waits for replicas (`sync`) or only for the change log (`async`).
    pub mode: Mode,
    /// In sync mode, how many replicas must have applied a commit before the primary may acknowledge it.
    #[serde(default = "default_sync_quorum")]
    pub sync_quorum: usize,
    /// Where the change log lives (one sub-directory per database).
    pub data_dir: PathBuf,
    /// Address of the HTTP status and `/metrics` endpoint; none disables it.
    #[serde(default)]
    pub status_listen: Option<SocketAddr>,
    /// Prefix of the logical slots Tandem creates on the primary (`<prefix>_<database oid>`).
    #[serde(default = "default_slot_prefix")]
    pub slot_prefix: String,
    /// Publication (`FOR ALL TABLES`) Tandem creates in every replicated database.
    #[serde(default = "default_publication")]
    pub publication: String,
    /// `application_name` of the replication connections; per database it is
    /// suffixed with the database OID, and those names go into
    /// `synchronous_standby_names` in sync mode.
    #[serde(default = "default_application_name")]
    pub application_name: String,
    /// How often a standby status update is sent even when nothing changed
    /// (must stay well under the primary's `wal_sender_timeout`).
    #[serde(default = "default_feedback_interval_ms")]
    pub feedback_interval_ms: u64,
    /// Bound of the queue between the socket reader and the decoder, in messages.
    #[serde(default = "default_stream_buffer")]
    pub stream_buffer: usize,
    /// Which copy the replicas are: physical standbys fed by a durable WAL relay (the
    /// default, and the only kind failover promotes) or logical replicas (opt-in).
    #[serde(default)]
    pub replication: Replication,
    /// Physical mode: the relay's replication slot and `application_name` on the primary
    /// (the name that stands for the relay in `synchronous_standby_names`).
    #[serde(default = "default_relay_name")]
    pub relay_name: String,
    /// Physical mode: how many of the newest complete WAL segments the relay keeps even
    /// when every standby has them (a standby rebuilt from a backup may still need them).
    #[serde(default = "default_relay_keep_segments")]
    pub relay_keep_segments: u64,
    /// Physical mode: the witness group's API addresses (`host:port`); the relay reports its
    /// position and status address to the group. Empty: no group.
    #[serde(default)]
    pub witnesses: Vec<String>,
    /// Bearer token for the witnesses' mutating API (the cluster's `token`).
    #[serde(default)]
    pub witness_token: Option<String>,
}

/// What kind of copy the replicator keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Replication {
    /// Physical standbys stream WAL from the primary; the replicator is a durable WAL relay
    /// in the primary's synchronous quorum and serves its WAL back through `restore_command`.
    #[default]
    Physical,
    /// pgoutput from a slot into the change log, applied to each replica exactly once.
    Logical,
}

impl Replication {
    /// Lower-case name for status output and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Replication::Physical => "physical",
            Replication::Logical => "logical",
        }
    }
}

impl fmt::Display for Replication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One replica server.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaConfig {
    /// The node's name in status output, metrics and the progress table.
    pub name: NodeId,
    /// DSN of the replica (a superuser: the apply session writes everywhere).
    pub dsn: String,
}

/// When the primary may acknowledge a commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Only after `sync_quorum` replicas applied it (RPO 0, read-your-writes there).
    Sync,
    /// As soon as the change log holds it durably.
    Async,
}

impl Mode {
    /// Lower-case name for status output and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Async => "async",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sync" => Ok(Mode::Sync),
            "async" => Ok(Mode::Async),
            other => Err(ConfigError::Mode(other.to_owned())),
        }
    }
}

impl FromStr for ReplicaConfig {
    type Err = ConfigError;
    /// Parses the `--replica NAME=DSN` flag form.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, dsn) = s.split_once('=').ok_or_else(|| ConfigError::ReplicaFlag(s.to_owned()))?;
        let name = NodeId::new(name).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(ReplicaConfig { name, dsn: dsn.to_owned() })
    }
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `--mode` is neither `sync` nor `async`.
    #[error("invalid mode {0:?}: expected sync or async")]
    Mode(String),
    /// `--replica` is not `NAME=DSN`.
    #[error("invalid replica {0:?}: expected NAME=postgres://USER@HOST:PORT")]
    ReplicaFlag(String),
    /// A DSN does not parse.
    #[error("invalid connection string for {what}: {reason}")]
    Dsn {
        /// Which server the DSN names.
        what: String,
        /// The parser's complaint.
        reason: String,
    },
    /// Any other inconsistent setting, with the reason.
    #[error("invalid replicator configuration: {0}")]
    Invalid(String),
}

fn default_sync_quorum() -> usize {
    1
}
fn default_slot_prefix() -> String {
    "tandem".into()
}
fn default_publication() -> String {
    "tandem".into()
}
fn default_application_name() -> String {
    "tandem_replicator".into()
}
fn default_feedback_interval_ms() -> u64 {
    10_000
}
fn default_stream_buffer() -> usize {
    1024
}
fn default_relay_name() -> String {
    "tandem_relay".into()
}
fn default_relay_keep_segments() -> u64 {
    8
}

impl ReplicatorConfig {
    /// A configuration with defaults for everything but the servers, mode and directory.
    pub fn new(primary: impl Into<String>, replicas: Vec<ReplicaConfig>, mode: Mode, data_dir: PathBuf) -> Self {
        ReplicatorConfig {
            primary: primary.into(),
            replicas,
            databases: Vec::new(),
            mode,
            sync_quorum: default_sync_quorum(),
            data_dir,
            status_listen: None,
            slot_prefix: default_slot_prefix(),
            publication: default_publication(),
            application_name: default_application_name(),
            feedback_interval_ms: default_feedback_interval_ms(),
            stream_buffer: default_stream_buffer(),
            replication: Replication::default(),
            relay_name: default_relay_name(),
            relay_keep_segments: default_relay_keep_segments(),
            witnesses: Vec::new(),
            witness_token: None,
        }
    }

    /// Parses the primary's DSN.
    pub fn primary_config(&self) -> Result<tokio_postgres::Config, ConfigError> {
        parse_dsn("the primary", &self.primary)
    }

    /// Checks everything that can be checked without connecting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        self.primary_config()?;
        let physical = self.replication == Replication::Physical;
        if self.replicas.is_empty() && !physical {
            return invalid("at least one replica is needed".into());
        }
        let mut names = HashSet::new();
        for r in &self.replicas {
            if !names.insert(&r.name) {
                return invalid(format!("replica name {} is used twice", r.name));
            }
            parse_dsn(&format!("replica {}", r.name), &r.dsn)?;
        }
        if self.sync_quorum == 0 {
            return invalid("sync_quorum must be at least 1".into());
        }
        // In physical mode the relay is a quorum member too.
        let members = self.replicas.len() + usize::from(physical);
        if self.sync_quorum > members {
            return invalid(format!(
                "sync_quorum {} is larger than the number of {} ({members})",
                self.sync_quorum,
                if physical { "standbys plus the relay" } else { "replicas" },
            ));
        }
        if physical {
            if !is_simple_identifier(&self.relay_name, 63) {
                return invalid(format!("relay_name {:?}: use 1 to 63 of a-z 0-9 _", self.relay_name));
            }
            if self.replicas.iter().any(|r| standby_slot_name(&r.name) == self.relay_name) {
                return invalid(format!("relay_name {:?} is also a standby's slot name", self.relay_name));
            }
        }
        let mut dbs = HashSet::new();
        for db in &self.databases {
            if db.is_empty() || db.contains('\0') {
                return invalid(format!("invalid database name {db:?}"));
            }
            if !dbs.insert(db) {
                return invalid(format!("database {db} is listed twice"));
            }
        }
        // Slot names allow [a-z0-9_] only; leave room for "_<oid>".
        if !is_simple_identifier(&self.slot_prefix, 48) {
            return invalid(format!("slot_prefix {:?}: use 1 to 48 of a-z 0-9 _", self.slot_prefix));
        }
        if !is_simple_identifier(&self.publication, 63) {
            return invalid(format!("publication {:?}: use 1 to 63 of a-z 0-9 _", self.publication));
        }
        if !is_simple_identifier(&self.application_name, 48) {
            return invalid(format!("application_name {:?}: use 1 to 48 of a-z 0-9 _", self.application_name));
        }
        if self.feedback_interval_ms == 0 || self.feedback_interval_ms > 60_000 {
            return invalid("feedback_interval_ms must be between 1 and 60000".into());
        }
        if self.stream_buffer == 0 {
            return invalid("stream_buffer must be at least 1".into());
        }
        if self.data_dir.as_os_str().is_empty() {
            return invalid("data_dir is required".into());
        }
        Ok(())
    }

    /// Name of the logical slot for the database with this OID.
    pub fn slot_name(&self, db_oid: u32) -> String {
        format!("{}_{}", self.slot_prefix, db_oid)
    }

    /// `application_name` of the replication connection for the database with this OID.
    pub fn stream_application_name(&self, db_oid: u32) -> String {
        format!("{}_{}", self.application_name, db_oid)
    }
}

pub use tandem_core::standby_slot_name;

/// Parses a DSN in URL or `key=value` form, naming `what` in the error.
pub fn parse_dsn(what: &str, dsn: &str) -> Result<tokio_postgres::Config, ConfigError> {
    dsn.parse::<tokio_postgres::Config>().map_err(|e| {
        // tokio-postgres says only "invalid connection string"; which option is wrong is in
        // its source.
        let mut reason = match std::error::Error::source(&e) {
            Some(detail) => format!("{e}: {detail}"),
            None => e.to_string(),
        };
        if dsn.contains("sslmode=verify") {
            reason
                .push_str(" (the replicator takes sslmode disable, prefer or require; it does not check certificates)");
        }
        ConfigError::Dsn { what: what.to_owned(), reason }
    })
}

fn is_simple_identifier(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ReplicatorConfig {
        ReplicatorConfig::new(
            "postgres://postgres@127.0.0.1:5432",
            vec!["r1=postgres://postgres@127.0.0.1:5433".parse().unwrap()],
            Mode::Sync,
            "/tmp/x".into(),
        )
    }

    #[test]
    fn defaults_validate() {
        cfg().validate().unwrap();
        assert_eq!(cfg().slot_name(16384), "tandem_16384");
    }

    #[test]
    fn dsn_errors_name_the_option() {
        let err = parse_dsn("the primary", "postgres://u@h/db?sslmode=verify-full").unwrap_err().to_string();
        assert!(err.contains("invalid value for option `sslmode`"), "{err}");
        assert!(err.contains("disable, prefer or require"), "{err}");
        let config = parse_dsn("the primary", "postgres://u@h/db?sslmode=require").unwrap();
        assert_eq!(config.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
    }

    #[test]
    fn rejects_bad_settings() {
        let mut c = cfg();
        c.sync_quorum = 2;
        c.validate().unwrap(); // one standby and the relay
        c.sync_quorum = 3;
        assert!(c.validate().unwrap_err().to_string().contains("standbys plus the relay"));
        c.sync_quorum = 2;
        c.replication = Replication::Logical;
        assert!(c.validate().is_err());
        let mut c = cfg();
        c.replicas.clear();
        c.validate().unwrap(); // a relay without standbys
        c.replication = Replication::Logical;
        assert!(c.validate().is_err());
        let mut c = cfg();
        c.relay_name = "Relay-1".into();
        assert!(c.validate().is_err());
        assert_eq!(standby_slot_name(&"Node-1.east".parse().unwrap()), "tandem_standby_node_1_east");
        let mut c = cfg();
        c.replicas.push(c.replicas[0].clone());
        assert!(c.validate().unwrap_err().to_string().contains("twice"));
        let mut c = cfg();
        c.slot_prefix = "Bad-Name".into();
        assert!(c.validate().is_err());
        let mut c = cfg();
        c.primary = "postgres://[::1".into();
        assert!(matches!(c.validate(), Err(ConfigError::Dsn { .. })));
        assert!("r1".parse::<ReplicaConfig>().is_err());
        assert!("x".parse::<Mode>().is_err());
    }

    #[test]
    fn toml_round_trip_and_unknown_fields() {
        let text = r#"
            primary = "postgres://postgres@127.0.0.1:5432"
            mode = "async"
            data_dir = "/var/lib/tandem"
            status_listen = "127.0.0.1:9187"
            [[replicas]]
            name = "r1"
            dsn = "host=127.0.0.1 port=5433 user=postgres"
        "#;
        let c: ReplicatorConfig = toml::from_str(text).unwrap();
        assert_eq!(c.mode, Mode::Async);
        assert_eq!(c.sync_quorum, 1);
        c.validate().unwrap();
        let back: ReplicatorConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(toml::from_str::<ReplicatorConfig>(&format!("{text}\nbogus = 1")).is_err());
    }
}
