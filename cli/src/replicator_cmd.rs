//! `tandem replicator`: flags, `TANDEM_REPLICATOR_*` variables and the
//! `[replicator]` table of the cluster file → [`ReplicatorConfig`] →
//! [`tandem_replicator::run`] until SIGINT/SIGTERM.
//!
//! Precedence: the file's table is read first (it must be complete on its
//! own: `deny_unknown_fields`, required keys), then every flag given (or its
//! environment variable) replaces the matching setting. Without a file the
//! flags must name the primary, at least one replica, the mode and the data
//! directory.
//!
//! The variables carry a `REPLICATOR` infix because `tandem proxy` already
//! reads `TANDEM_PRIMARY` and `TANDEM_REPLICAS` with a different meaning
//! (HOST:PORT rather than a connection string), and one environment often
//! serves both commands.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use tandem_replicator::{Mode, ReplicaConfig, Replication, ReplicatorConfig};
use tokio_util::sync::CancellationToken;

/// Flags of `tandem replicator`; each overrides the `[replicator]` table of the cluster file.
#[derive(Args, Debug, Clone, Default)]
pub struct ReplicatorArgs {
    /// The primary: postgres://USER@HOST:PORT (or a key=value connection string); TLS per its
    /// sslmode (disable, prefer = default, require; certificates are not checked).
    #[arg(long, env = "TANDEM_REPLICATOR_PRIMARY")]
    primary: Option<String>,
    /// `physical` (default: standbys stream WAL from the primary; this process is a durable
    /// WAL relay in the commit quorum) or `logical` (opt-in: pgoutput → change log → apply).
    #[arg(long, env = "TANDEM_REPLICATOR_REPLICATION")]
    replication: Option<String>,
    /// A replica: NAME=postgres://USER@HOST:PORT; repeat for more (comma-separated in the
    /// variable). Physical mode: a standby (NAME is its cluster_name, made by `tandem replica add`).
    #[arg(long = "replica", env = "TANDEM_REPLICATOR_REPLICAS", value_delimiter = ',')]
    replicas: Vec<String>,
    /// A database to replicate; repeat for more [default: every non-template database].
    #[arg(long = "database", env = "TANDEM_REPLICATOR_DATABASES", value_delimiter = ',')]
    databases: Vec<String>,
    /// `sync` (commits wait until replicas have them: physical, flushed by k of the standbys
    /// and the relay; logical, applied by k replicas) or `async`.
    #[arg(long, env = "TANDEM_REPLICATOR_MODE")]
    mode: Option<String>,
    /// In sync mode, k: how many quorum members must have a commit [default: 1].
    #[arg(long, env = "TANDEM_REPLICATOR_SYNC_QUORUM")]
    sync_quorum: Option<usize>,
    /// Directory of the relay's WAL or the change log (created if missing).
    #[arg(long, env = "TANDEM_REPLICATOR_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// A witness of the group (HOST:PORT; repeat for each): physical mode reports the relay's
    /// position and status address to the group.
    #[arg(long = "witness", env = "TANDEM_REPLICATOR_WITNESSES", value_delimiter = ',')]
    witnesses: Vec<String>,
    /// The witnesses' bearer token (the cluster's token).
    #[arg(long, env = "TANDEM_WITNESS_TOKEN", hide_env_values = true)]
    witness_token: Option<String>,
    /// Serve status JSON at http://ADDR/status and Prometheus metrics at /metrics.
    #[arg(long, env = "TANDEM_REPLICATOR_STATUS_LISTEN")]
    status_listen: Option<SocketAddr>,
}

/// Builds the replicator configuration from the cluster file (if any) and the flags.
pub fn build_config(file: Option<&Path>, args: &ReplicatorArgs) -> anyhow::Result<ReplicatorConfig> {
    let (from_file, cluster) = match file {
        Some(path) => {
            let f = crate::file::load(path)?;
            (f.replicator, f.cluster)
        }
        None => (None, None),
    };
    let mut cfg = match from_file {
        Some(cfg) => cfg,
        None if cluster.is_some() && args.primary.is_none() => {
            // Physical mode from [cluster] alone: the nodes are described once.
            let cluster = cluster.as_ref().context("[cluster]")?;
            let mode = args.mode.as_deref().context("--mode is required")?;
            let data_dir = args.data_dir.clone().context("--data-dir is required")?;
            from_cluster(cluster, parse_mode(mode)?, data_dir)?
        }
        None => {
            let missing = |what: &str| {
                anyhow::anyhow!("{what} is required (or a [replicator] table in the cluster file given with --config)")
            };
            let primary = args.primary.clone().ok_or_else(|| missing("--primary"))?;
            let mode = args.mode.as_deref().ok_or_else(|| missing("--mode"))?;
            let data_dir = args.data_dir.clone().ok_or_else(|| missing("--data-dir"))?;
            let replication = args.replication.as_deref().map(parse_replication).transpose()?.unwrap_or_default();
            if args.replicas.is_empty() && replication == Replication::Logical {
                return Err(missing("--replica NAME=DSN"));
            }
            ReplicatorConfig::new(primary, Vec::new(), parse_mode(mode)?, data_dir)
        }
    };
    if let Some(p) = &args.primary {
        cfg.primary = p.clone();
    }
    if !args.replicas.is_empty() {
        cfg.replicas = args.replicas.iter().map(|r| parse_replica(r)).collect::<anyhow::Result<_>>()?;
    }
    if !args.databases.is_empty() {
        cfg.databases = args.databases.clone();
    }
    if let Some(m) = &args.mode {
        cfg.mode = parse_mode(m)?;
    }
    if let Some(r) = &args.replication {
        cfg.replication = parse_replication(r)?;
    }
    if let Some(q) = args.sync_quorum {
        cfg.sync_quorum = q;
    }
    if let Some(d) = &args.data_dir {
        cfg.data_dir = d.clone();
    }
    if let Some(a) = args.status_listen {
        cfg.status_listen = Some(a);
    }
    if !args.witnesses.is_empty() {
        cfg.witnesses = args.witnesses.clone();
    }
    if let Some(t) = &args.witness_token {
        cfg.witness_token = Some(t.clone());
    }
    cfg.validate()?;
    Ok(cfg)
}

/// A physical-mode configuration from `[cluster]`: the primary and standbys by their
/// addresses (as user `postgres`, database `postgres`; give `--primary`/`--replica` DSNs or a
/// `[replicator]` table for anything else), the witnesses and their token.
fn from_cluster(
    cluster: &tandem_core::ClusterSpec,
    mode: tandem_replicator::Mode,
    data_dir: std::path::PathBuf,
) -> anyhow::Result<ReplicatorConfig> {
    cluster.validate()?;
    let dsn = |addr: &tandem_core::NodeAddr| format!("postgres://postgres@{addr}/postgres");
    let primary = cluster.initial_primary().context("[cluster] has no primary")?;
    let standbys = cluster
        .nodes
        .iter()
        .filter(|n| n.role == tandem_core::Role::Replica)
        .map(|n| ReplicaConfig { name: n.name.clone(), dsn: dsn(&n.addr) })
        .collect();
    let mut cfg = ReplicatorConfig::new(dsn(&primary.addr), standbys, mode, data_dir);
    cfg.witnesses = cluster.witnesses.iter().map(|w| w.addr.clone()).collect();
    cfg.witness_token = cluster.token.clone();
    Ok(cfg)
}

fn parse_mode(text: &str) -> anyhow::Result<Mode> {
    text.parse::<Mode>().with_context(|| format!("--mode {text:?}"))
}

fn parse_replication(text: &str) -> anyhow::Result<Replication> {
    match text {
        "physical" => Ok(Replication::Physical),
        "logical" => Ok(Replication::Logical),
        other => bail!("--replication {other:?}: expected physical or logical"),
    }
}

fn parse_replica(spec: &str) -> anyhow::Result<ReplicaConfig> {
    if spec.trim().is_empty() {
        bail!("--replica: empty value, expected NAME=postgres://USER@HOST:PORT");
    }
    spec.parse::<ReplicaConfig>().with_context(|| format!("--replica {spec:?}"))
}

/// Runs `tandem replicator` until SIGINT/SIGTERM.
pub async fn run(file: Option<PathBuf>, args: ReplicatorArgs) -> anyhow::Result<()> {
    let cfg = Arc::new(build_config(file.as_deref(), &args)?);
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data directory {}", cfg.data_dir.display()))?;
    tracing::info!(
        replication = %cfg.replication,
        mode = %cfg.mode,
        replicas = cfg.replicas.len(),
        data_dir = %cfg.data_dir.display(),
        "starting the replicator"
    );
    let shutdown = CancellationToken::new();
    crate::signals::cancel_on_signal(shutdown.clone());
    tandem_replicator::run(cfg, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Wrap {
        #[command(flatten)]
        args: ReplicatorArgs,
    }

    fn args(flags: &[&str]) -> ReplicatorArgs {
        let mut v = vec!["tandem"];
        v.extend_from_slice(flags);
        Wrap::try_parse_from(v).unwrap().args
    }

    const FULL: &[&str] = &[
        "--primary",
        "postgres://postgres@127.0.0.1:5432",
        "--replica",
        "r1=postgres://postgres@127.0.0.1:5433",
        "--replica",
        "r2=postgres://postgres@127.0.0.1:5434",
        "--mode",
        "sync",
        "--sync-quorum",
        "2",
        "--data-dir",
        "/tmp/tandem-x",
        "--database",
        "app",
        "--status-listen",
        "127.0.0.1:9187",
    ];

    #[test]
    fn flags_alone_make_a_config() {
        let cfg = build_config(None, &args(FULL)).unwrap();
        assert_eq!(cfg.replication, Replication::Physical);
        assert_eq!(cfg.mode, Mode::Sync);
        assert_eq!(cfg.sync_quorum, 2);
        assert_eq!(cfg.replicas.len(), 2);
        assert_eq!(cfg.replicas[1].name.as_str(), "r2");
        assert_eq!(cfg.databases, vec!["app".to_string()]);
        assert_eq!(cfg.status_listen, Some("127.0.0.1:9187".parse().unwrap()));
    }

    #[test]
    fn missing_and_bad_flags_say_what_is_wrong() {
        let err = |flags: &[&str]| format!("{:#}", build_config(None, &args(flags)).unwrap_err());
        assert!(err(&["--mode", "sync"]).contains("--primary is required"));
        let mut f = FULL.to_vec();
        f[7] = "fast";
        assert!(err(&f).contains("invalid mode \"fast\""), "{}", err(&f));
        let mut f = FULL.to_vec();
        f[3] = "no-equals-sign";
        assert!(err(&f).contains("expected NAME="), "{}", err(&f));
        let mut f = FULL.to_vec();
        f[9] = "4";
        assert!(err(&f).contains("sync_quorum 4 is larger"), "{}", err(&f));
        let mut f = FULL.to_vec();
        f.extend(["--replication", "logical"]);
        f[9] = "3";
        assert!(err(&f).contains("sync_quorum 3 is larger"), "{}", err(&f));
        let mut f = FULL.to_vec();
        f.extend(["--replication", "both"]);
        assert!(err(&f).contains("expected physical or logical"), "{}", err(&f));
        let mut f = FULL.to_vec();
        f[1] = "postgres://[::1";
        assert!(err(&f).contains("the primary"), "{}", err(&f));
        assert!(Wrap::try_parse_from(["tandem", "--status-listen", "nowhere"]).is_err());
    }

    #[test]
    fn the_cluster_table_alone_describes_the_nodes() {
        let path = std::env::temp_dir().join(format!("tandem-replicator-cluster-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "[cluster]\ntoken = \"t\"\n\
             [[cluster.nodes]]\nname = \"pg1\"\naddr = \"10.0.0.1:5432\"\nrole = \"primary\"\n\
             [[cluster.nodes]]\nname = \"pg2\"\naddr = \"10.0.0.2:5432\"\nrole = \"replica\"\n\
             [[cluster.witnesses]]\nid = 1\naddr = \"10.0.1.1:7000\"\n",
        )
        .unwrap();
        let cfg = build_config(Some(&path), &args(&["--mode", "sync", "--data-dir", "/tmp/relay"]));
        let _ = std::fs::remove_file(&path);
        let cfg = cfg.unwrap();
        assert_eq!(cfg.replication, Replication::Physical);
        assert_eq!(cfg.primary, "postgres://postgres@10.0.0.1:5432/postgres");
        assert_eq!(cfg.replicas[0].name.as_str(), "pg2");
        assert_eq!(cfg.witnesses, vec!["10.0.1.1:7000".to_string()]);
        assert_eq!(cfg.witness_token.as_deref(), Some("t"));
    }

    #[test]
    fn flags_override_the_file() {
        let path = std::env::temp_dir().join(format!("tandem-replicator-cli-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            r#"
            [replicator]
            primary = "postgres://postgres@127.0.0.1:5432"
            mode = "async"
            data_dir = "/var/lib/tandem"
            databases = ["a", "b"]
            [[replicator.replicas]]
            name = "r1"
            dsn = "host=127.0.0.1 port=5433 user=postgres"
            "#,
        )
        .unwrap();
        let cfg = build_config(Some(&path), &ReplicatorArgs::default()).unwrap();
        assert_eq!(cfg.mode, Mode::Async);
        assert_eq!(cfg.databases.len(), 2);
        let cfg = build_config(Some(&path), &args(&["--mode", "sync", "--database", "c"])).unwrap();
        assert_eq!(cfg.mode, Mode::Sync);
        assert_eq!(cfg.databases, vec!["c".to_string()]);
        assert_eq!(cfg.replicas[0].name.as_str(), "r1");

        std::fs::write(&path, "[replicator]\nprimary = \"x\"\nbogus = 1\n").unwrap();
        let e = format!("{:#}", build_config(Some(&path), &ReplicatorArgs::default()).unwrap_err());
        let _ = std::fs::remove_file(&path);
        assert!(e.contains("invalid cluster file"), "{e}");
    }
}
