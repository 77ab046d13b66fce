//! `tandem demo`: a whole local cluster from one command.
//!
//! Three PostgreSQL servers (one primary, two physical standbys made as
//! `tandem replica add` makes them), the WAL relay in the primary's sync quorum,
//! the proxy and a witness group of three, all on loopback. `--logical` keeps the opt-in logical setup
//! instead (two empty servers fed by the logical replicator). With `--data-dir`
//! the servers and the relay's WAL (or change log) survive between runs;
//! otherwise everything lives in a temporary directory removed on Ctrl-C.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use tandem_localpg::{LocalServer, ServerSettings};
use tandem_proxy::config::NodeConfig;
use tandem_proxy::ProxyConfig;
use tandem_replicator::physical::standby::{self, StandbySpec};
use tandem_replicator::{Mode, ReplicaConfig, Replication, ReplicatorConfig};
use tokio_util::sync::CancellationToken;

/// Flags of `tandem demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Keep the cluster here between runs (default: a temporary directory removed on exit).
    #[arg(long, env = "TANDEM_DEMO_DIR")]
    data_dir: Option<PathBuf>,
    /// Port of the proxy; the PostgreSQL servers take the next three ports, the
    /// replicator's status endpoint the one after, the three witnesses the next three, and
    /// the servers' agents the three after those (11 ports in all).
    #[arg(long, default_value_t = 6432)]
    port: u16,
    /// `sync`: a commit returns once one quorum member has it (physical: flushed by a standby
    /// or the relay; logical: applied by a replica). `async`: it does not wait.
    #[arg(long, default_value = "sync")]
    mode: Mode,
    /// Logical replication (the opt-in mode) instead of physical standbys.
    #[arg(long)]
    logical: bool,
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
    let replication = if args.logical { Replication::Logical } else { Replication::Physical };
    let setup = primary.clone();
    tokio::task::spawn_blocking(move || start_primary(&setup, replication)).await??;
    match replication {
        Replication::Logical => {
            let setup = replicas.clone();
            tokio::task::spawn_blocking(move || setup.iter().try_for_each(|r| init_and_start(r, Replication::Logical)))
                .await??
        }
        Replication::Physical => add_standbys(&primary, &replicas, &root).await?,
    }
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

fn start_primary(primary: &LocalServer, replication: Replication) -> anyhow::Result<()> {
    init_and_start(primary, replication)
}

/// Initialises `s` (if new) as a server Tandem can replicate from, then starts it.
fn init_and_start(s: &LocalServer, replication: Replication) -> anyhow::Result<()> {
    if !s.exists() {
        println!("initialising {} on port {} ...", s.name(), s.port);
        let wal_level = match replication {
            Replication::Logical => "logical",
            Replication::Physical => "replica",
        };
        let extra = vec![
            format!("wal_level = {wal_level}"),
            "max_replication_slots = 20".to_owned(),
            "max_wal_senders = 20".to_owned(),
            "shared_buffers = 64MB".to_owned(),
            // pg_rewind (an old primary rejoining as a standby) needs it.
            "wal_log_hints = on".to_owned(),
        ];
        s.init(&ServerSettings { port: s.port, extra }).with_context(|| format!("initialise {}", s.name()))?;
    }
    s.start().with_context(|| format!("start {} (port {} free?)", s.name(), s.port))
}

/// Makes each standby that does not exist yet (`tandem replica add`), then starts them all.
async fn add_standbys(primary: &LocalServer, standbys: &[LocalServer], root: &std::path::Path) -> anyhow::Result<()> {
    let tandem = std::env::current_exe().context("find the tandem program for restore_command")?;
    let relay_wal = root.join("relay").join("wal");
    for s in standbys {
        if !s.exists() {
            println!("copying the primary into {} (port {}) ...", s.name(), s.port);
            let spec = StandbySpec {
                name: s.name().parse()?,
                primary: url(primary),
                data_dir: s.data_dir.clone(),
                port: s.port,
                relay: Some(relay_wal.display().to_string()),
                tandem: tandem.clone(),
            };
            standby::add(&spec).await.with_context(|| format!("make standby {}", s.name()))?;
        }
        let server = s.clone();
        tokio::task::spawn_blocking(move || server.start())
            .await?
            .with_context(|| format!("start {} (port {} free?)", s.name(), s.port))?;
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
    let physical = !args.logical;
    let mut rcfg = ReplicatorConfig::new(
        url(primary),
        replicas
            .iter()
            .map(|r| Ok(ReplicaConfig { name: r.name().parse()?, dsn: url(r) }))
            .collect::<anyhow::Result<_>>()?,
        args.mode,
        root.join(if physical { "relay" } else { "replicator" }),
    );
    rcfg.replication = if physical { Replication::Physical } else { Replication::Logical };
    let status_port = port_after(args.port, 4)?;
    rcfg.status_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], status_port)));
    // The witnesses first: the relay reports to them and the proxy takes its write lease from
    // them (both retry until the group has formed).
    let witness_port = port_after(args.port, 5)?;
    let servers: Vec<&LocalServer> = std::iter::once(primary).chain(replicas).collect();
    let (agents, agent_addrs) = crate::demo_witnesses::start_agents(port_after(args.port, 8)?, &servers, &shutdown)?;
    let (witnesses, witness_addrs) =
        crate::demo_witnesses::start(root, witness_port, primary, replicas, &agent_addrs, &shutdown)?;
    rcfg.witnesses = witness_addrs.clone();
    rcfg.validate()?;
    let replicator = tokio::spawn(tandem_replicator::run(Arc::new(rcfg), shutdown.clone()));

    if physical {
        println!("waiting for the standbys and the WAL relay to stream ...");
        wait_for_streaming(primary, replicas, &replicator).await?;
    } else {
        println!("copying the primary to the replicas ...");
        wait_for_initial_copy(replicas, &replicator).await?;
    }

    let pcfg = ProxyConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], args.port)),
        primary: Some(node(primary)?),
        replicas: replicas.iter().map(node).collect::<anyhow::Result<_>>()?,
        health_interval_ms: 200,
        witnesses: witness_addrs.clone(),
        ..ProxyConfig::default()
    };
    let proxy = tokio::spawn(tandem_proxy::run(Arc::new(pcfg), None, shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    if proxy.is_finished() {
        return proxy.await?.context("proxy failed to start");
    }
    println!();
    crate::demo_witnesses::print_status(&witness_addrs).await;
    println!();
    println!(
        "Tandem demo is running ({} {} replication{}).",
        if args.mode == Mode::Sync { "synchronous" } else { "asynchronous" },
        if physical { "physical" } else { "logical" },
        if physical { ", WAL relay in the commit quorum" } else { "" }
    );
    println!("  connect:  psql \"postgres://postgres@127.0.0.1:{}/postgres\"", args.port);
    println!("  admin:    psql \"postgres://postgres@127.0.0.1:{}/tandem\" -c 'SHOW NODES'", args.port);
    println!(
        "  nodes:    primary :{}, {}",
        primary.port,
        replicas.iter().map(|r| format!("{} :{}", r.name(), r.port)).collect::<Vec<_>>().join(", ")
    );
    println!("  relay:    curl http://127.0.0.1:{status_port}/status");
    let witness_flags: Vec<String> =
        witness_addrs.iter().enumerate().map(|(i, a)| format!("--witness {}={a}", i + 1)).collect();
    println!("  status:   tandem status {}", witness_flags.join(" "));
    if physical {
        let to = replicas.first().map(LocalServer::name).unwrap_or_default();
        println!("  switch:   tandem switchover --to {to} {}", witness_flags.join(" "));
    }
    match &args.data_dir {
        Some(_) => println!("  data:     {} (kept)", root.display()),
        None => println!("  data:     {} (removed on exit)", root.display()),
    }
    println!("Press Ctrl-C to stop.");
    let (mut proxy, mut replicator) = (proxy, replicator);
    tokio::select! {
        r = &mut proxy => r?.context("proxy stopped")?,
        r = &mut replicator => r?.context("replicator stopped")?,
        _ = shutdown.cancelled() => {}
    }
    // Let both finish their clean stop (the relay leaves the commit quorum) before the
    // servers go down.
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        let _ = proxy.await;
        let _ = replicator.await;
        for w in witnesses {
            let _ = w.await;
        }
        for a in agents {
            let _ = a.await;
        }
    })
    .await;
    Ok(())
}

fn node(s: &LocalServer) -> anyhow::Result<NodeConfig> {
    Ok(NodeConfig { name: s.name().parse()?, addr: format!("127.0.0.1:{}", s.port).parse()?, weight: 1 })
}

fn port_after(base: u16, offset: u16) -> anyhow::Result<u16> {
    base.checked_add(offset).context("--port too high: the demo uses the next four ports")
}

/// Waits until the primary streams to every standby and to the relay.
async fn wait_for_streaming(
    primary: &LocalServer,
    standbys: &[LocalServer],
    replicator: &tokio::task::JoinHandle<Result<(), tandem_replicator::ReplicatorError>>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut wanted: Vec<String> = standbys.iter().map(|s| s.name()).collect();
    wanted.push("tandem_relay".into());
    loop {
        if replicator.is_finished() {
            bail!("the WAL relay stopped (see the log above)");
        }
        if let Ok((client, conn)) = tokio_postgres::connect(&url(primary), tokio_postgres::NoTls).await {
            let task = tokio::spawn(conn);
            let rows = client
                .query("SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'", &[])
                .await
                .unwrap_or_default();
            task.abort();
            let streaming: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            if wanted.iter().all(|w| streaming.contains(w)) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the standbys and the relay did not all start streaming within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
