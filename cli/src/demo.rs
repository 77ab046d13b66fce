//! `tandem demo`: a whole local cluster from one command.
//!
//! Three PostgreSQL servers (one primary, two replicas fed by Tandem's own
//! replicator), the replicator and the proxy, all on loopback. With
//! `--data-dir` the servers and the change log survive between runs;
//! otherwise everything lives in a temporary directory removed on Ctrl-C.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use tandem_localpg::{LocalServer, ServerSettings};
use tandem_proxy::config::NodeConfig;
use tandem_proxy::ProxyConfig;
use tandem_replicator::{Mode, ReplicaConfig, ReplicatorConfig};
use tokio_util::sync::CancellationToken;

/// Flags of `tandem demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Keep the cluster here between runs (default: a temporary directory removed on exit).
    #[arg(long, env = "TANDEM_DEMO_DIR")]
    data_dir: Option<PathBuf>,
    /// Port of the proxy; the PostgreSQL servers take the next three ports.
    #[arg(long, default_value_t = 6432)]
    port: u16,
    /// Replicate synchronously (a commit returns once a replica has applied it).
    #[arg(long)]
    sync: bool,
}

const REPLICAS: usize = 2;

/// Runs the demo until Ctrl-C.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let (root, _temp) = match &args.data_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let t =
                tempfile::Builder::new().prefix("tandem-demo-").tempdir().context("create a temporary directory")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let root = std::path::absolute(&root).context("resolve the data directory")?;
    let port = |i: u16| args.port.checked_add(i).context("--port too high: the servers use the next three ports");
    let primary = LocalServer::at(root.join("primary"), port(1)?);
    let replicas: Vec<LocalServer> = (0..REPLICAS)
        .map(|i| Ok(LocalServer::at(root.join(format!("replica{}", i + 1)), port(2 + i as u16)?)))
        .collect::<anyhow::Result<_>>()?;

    let servers: Vec<LocalServer> = std::iter::once(primary.clone()).chain(replicas.iter().cloned()).collect();
    let setup = servers.clone();
    tokio::task::spawn_blocking(move || start_servers(&setup)).await??;
    let shutdown = CancellationToken::new();
    crate::signals::cancel_on_signal(shutdown.clone());
    let result = serve(&args, &root, &primary, &replicas, shutdown.clone()).await;
    shutdown.cancel();
    println!("stopping PostgreSQL servers ...");
    tokio::task::spawn_blocking(move || {
        for s in servers.iter().rev() {
            if let Err(e) = s.stop() {
                eprintln!("tandem: stopping {}: {e}", s.name());
            }
        }
    })
    .await?;
    result
}

fn start_servers(servers: &[LocalServer]) -> anyhow::Result<()> {
    for s in servers {
        if !s.exists() {
            println!("initialising {} on port {} ...", s.name(), s.port);
            let extra = vec![
                "wal_level = logical".to_owned(),
                "max_replication_slots = 20".to_owned(),
                "max_wal_senders = 20".to_owned(),
                "shared_buffers = 64MB".to_owned(),
            ];
            s.init(&ServerSettings { port: s.port, extra }).with_context(|| format!("initialise {}", s.name()))?;
        }
        s.start().with_context(|| format!("start {} (port {} free?)", s.name(), s.port))?;
    }
    Ok(())
}

fn url(s: &LocalServer) -> String {
    format!("postgres://postgres@127.0.0.1:{}/postgres", s.port)
}

async fn serve(
    args: &DemoArgs,
    root: &std::path::Path,
    primary: &LocalServer,
    replicas: &[LocalServer],
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mode = if args.sync { Mode::Sync } else { Mode::Async };
    let mut rcfg = ReplicatorConfig::new(
        url(primary),
        replicas
            .iter()
            .map(|r| Ok(ReplicaConfig { name: r.name().parse()?, dsn: url(r) }))
            .collect::<anyhow::Result<_>>()?,
        mode,
        root.join("replicator"),
    );
    rcfg.validate()?;
    rcfg.databases = Vec::new();
    let replicator = tokio::spawn(tandem_replicator::run(Arc::new(rcfg), shutdown.clone()));

    println!("copying the primary to the replicas ...");
    wait_for_initial_copy(replicas, &replicator).await?;

    let pcfg = ProxyConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], args.port)),
        primary: Some(node(primary)?),
        replicas: replicas.iter().map(node).collect::<anyhow::Result<_>>()?,
        health_interval_ms: 200,
        ..ProxyConfig::default()
    };
    let proxy = tokio::spawn(tandem_proxy::run(Arc::new(pcfg), None, shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    if proxy.is_finished() {
        return proxy.await?.context("proxy failed to start");
    }
    println!();
    println!("Tandem demo is running ({} replication).", if args.sync { "synchronous" } else { "asynchronous" });
    println!("  connect:  psql \"postgres://postgres@127.0.0.1:{}/postgres\"", args.port);
    println!("  admin:    psql \"postgres://postgres@127.0.0.1:{}/tandem\" -c 'SHOW NODES'", args.port);
    println!(
        "  nodes:    primary :{}, {}",
        primary.port,
        replicas.iter().map(|r| format!("{} :{}", r.name(), r.port)).collect::<Vec<_>>().join(", ")
    );
    match &args.data_dir {
        Some(_) => println!("  data:     {} (kept)", root.display()),
        None => println!("  data:     {} (removed on exit)", root.display()),
    }
    println!("Press Ctrl-C to stop.");
    tokio::select! {
        r = proxy => r?.context("proxy stopped")?,
        r = replicator => r?.context("replicator stopped")?,
        _ = shutdown.cancelled() => {}
    }
    Ok(())
}

fn node(s: &LocalServer) -> anyhow::Result<NodeConfig> {
    Ok(NodeConfig { name: s.name().parse()?, addr: format!("127.0.0.1:{}", s.port).parse()?, weight: 1 })
}

/// Waits until every replica has its progress row, i.e. the initial copy committed.
async fn wait_for_initial_copy(
    replicas: &[LocalServer],
    replicator: &tokio::task::JoinHandle<Result<(), tandem_replicator::ReplicatorError>>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    for r in replicas {
        loop {
            if replicator.is_finished() {
                bail!("the replicator stopped during the initial copy (see the log above)");
            }
            if copied(r).await {
                break;
            }
            if Instant::now() > deadline {
                bail!("replica {} did not finish its initial copy in time", r.name());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    Ok(())
}

async fn copied(r: &LocalServer) -> bool {
    let Ok((client, conn)) = tokio_postgres::connect(&url(r), tokio_postgres::NoTls).await else { return false };
    let task = tokio::spawn(conn);
    let done =
        client.query_opt("SELECT 1 FROM tandem.applied LIMIT 1", &[]).await.map(|row| row.is_some()).unwrap_or(false);
    drop(client);
    task.abort();
    done
}
