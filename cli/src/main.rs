//! The `tandem` command: parses flags and hands over to the library parts.
//!
//! `tandem proxy` runs the PostgreSQL endpoint, `tandem replicator` the WAL relay (or
//! the logical change stream), `tandem replica add` and `tandem wal-fetch` make and feed
//! physical standbys, `tandem rejoin` makes a fenced old primary a standby of the new one
//! after a failover, `tandem agent` stops and starts one node's server for the witness
//! leader (a switchover), `tandem witness` is one member of the witness group and `tandem
//! status` shows what the group sees, `tandem failover`, `pause` and `resume` ask it to act,
//! `tandem demo` runs a whole local cluster. Settings come
//! from `--config tandem.toml`, then `TANDEM_*` environment variables, then flags
//! (highest wins).

mod agent_cmd;
mod demo;
mod demo_witnesses;
mod file;
mod operate_cmd;
mod proxy_cmd;
mod rejoin_cmd;
mod replica_cmd;
mod replicator_cmd;
mod signals;
mod status_table;
mod switchover_cmd;
mod witness_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Tandem: PostgreSQL high availability — proxy, change stream and failover in one binary.
#[derive(Parser, Debug)]
#[command(name = "tandem", version, about, long_about = None)]
struct Cli {
    /// Cluster file (tandem.toml) with [cluster], [proxy] and [replicator] tables.
    #[arg(long, short = 'c', global = true, env = "TANDEM_CONFIG")]
    config: Option<PathBuf>,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `tandem_proxy=debug`.
    #[arg(long, global = true, env = "TANDEM_LOG", default_value = "info,openraft=error")]
    log: String,
    /// Worker threads. `tandem proxy`: event loops serving clients, each with its own share
    /// of every pool [default: one per core, at most one per 8 connections of --pool-size].
    /// Others: tokio runtime threads [default: one per core; `tandem replicator` on up to 2
    /// cores: 1, a single-threaded runtime (its change-log writer keeps its own thread)].
    #[arg(long, global = true, env = "TANDEM_THREADS")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Run the PostgreSQL proxy: writes to the primary, reads spread over replicas.
    Proxy(Box<proxy_cmd::ProxyArgs>),
    /// Run the replicator: by default a durable WAL relay for physical standbys, in the
    /// primary's commit quorum (`--replication logical`: the logical change stream).
    Replicator(replicator_cmd::ReplicatorArgs),
    /// Manage physical standbys (`tandem replica add NAME --from PRIMARY ...`).
    #[command(subcommand)]
    Replica(replica_cmd::ReplicaCommand),
    /// Copy a WAL file from the relay (a standby's restore_command): exit 0 when copied, 1
    /// when the relay does not have it, or has only a partial copy holding no more valid WAL
    /// than the standby's own pg_wal.
    WalFetch(replica_cmd::WalFetchArgs),
    /// Make a fenced old primary a standby of the new primary after a failover: list the
    /// transactions it loses, pg_rewind it (or re-clone it when pg_rewind cannot), start it
    /// streaming, and tell the witness group.
    Rejoin(rejoin_cmd::RejoinArgs),
    /// Run the node agent beside one PostgreSQL server: an HTTP API (GET /v1/node, POST
    /// /v1/stop, POST /v1/start) the witness leader uses to stop it cleanly and start it
    /// again, as a standby of a new primary after a switchover.
    Agent(agent_cmd::AgentArgs),
    /// Run one member of the witness group (3 or 5 form a Raft group that judges the cluster).
    Witness(witness_cmd::WitnessArgs),
    /// Show the cluster as the witness group sees it (exit status 1 when it is not healthy).
    Status(witness_cmd::StatusArgs),
    /// Force a failover now (`--to NODE` picks the standby): asks for confirmation, then
    /// shows each phase until the new primary is published.
    Failover(operate_cmd::FailoverArgs),
    /// Planned switchover to a standby with no client error: the proxies pause, the primary
    /// stops cleanly (through its `tandem agent`), the standby is promoted, the proxies resume
    /// on it, and the old primary restarts as its standby (`--at` schedules; `--cancel`).
    Switchover(switchover_cmd::SwitchoverArgs),
    /// Maintenance mode: no automatic failover until `tandem resume` (shown in status).
    Pause(operate_cmd::PauseArgs),
    /// Leave maintenance mode: automatic failover again.
    Resume(operate_cmd::PauseArgs),
    /// Start a local cluster (primary, 2 physical standbys, WAL relay, proxy, 3 witnesses)
    /// and print how to connect.
    Demo(demo::DemoArgs),
}

/// The filter a `--log` value asks for.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // built once, at startup
enum LogFilter {
    /// Plain levels and targets (`info`, `tandem_proxy=debug,warn`).
    Static(tracing_subscriber::filter::Targets),
    /// Span and field directives (`[client]=debug`).
    Dynamic(tracing_subscriber::EnvFilter),
}

/// Reads `--log`. A filter of plain levels and targets becomes a static `Targets` filter.
/// EnvFilter, needed only for span and field directives, takes a lock and a map lookup each
/// time a span is entered or left, and the proxy enters its client's span on every wake-up of
/// the session. `Err` names what is wrong with a filter neither accepts.
fn log_filter(log: &str) -> Result<LogFilter, String> {
    let dynamic = log.contains(['[', '{']);
    match log.parse::<tracing_subscriber::filter::Targets>() {
        Ok(targets) if !dynamic => Ok(LogFilter::Static(targets)),
        _ => tracing_subscriber::EnvFilter::try_new(log).map(LogFilter::Dynamic).map_err(|e| e.to_string()),
    }
}

/// Installs the log subscriber for `--log`; an invalid filter is reported and `info` used.
fn init_logging(log: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // Colours only on a terminal: logs sent to files or journals stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let fmt = tracing_subscriber::fmt::layer().with_target(false).with_ansi(ansi);
    let registry = tracing_subscriber::registry().with(fmt);
    let filter = log_filter(log).unwrap_or_else(|e| {
        eprintln!("tandem: invalid --log filter {log:?} ({e}); logging at info");
        LogFilter::Static(tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO))
    });
    match filter {
        LogFilter::Static(targets) => registry.with(targets).init(),
        LogFilter::Dynamic(filter) => registry.with(filter).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    // The proxy starts its own worker threads, each on a current-thread runtime; this one
    // becomes its first worker.
    let one_thread = matches!(
        cli.command,
        Command::Proxy(_)
            | Command::WalFetch(_)
            | Command::Replica(_)
            | Command::Rejoin(_)
            | Command::Status(_)
            | Command::Failover(_)
            | Command::Switchover(_)
            | Command::Pause(_)
            | Command::Resume(_)
            | Command::Agent(_)
    ) || cores <= 2 && matches!(cli.command, Command::Replicator(_));
    let threads = if one_thread { 1 } else { cli.threads.unwrap_or(cores).max(1) };
    // One thread: tokio's current-thread scheduler, which has none of the
    // work-stealing bookkeeping of the multi-thread one.
    let built = if threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    };
    let runtime = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tandem: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Proxy(args) => proxy_cmd::run(cli.config, *args, cli.threads).await,
            Command::Replicator(args) => replicator_cmd::run(cli.config, args).await,
            Command::Replica(command) => replica_cmd::run(command).await,
            Command::Rejoin(args) => rejoin_cmd::run(cli.config, args).await,
            // Its own exit code: restore_command's contract.
            Command::WalFetch(args) => return Ok(replica_cmd::wal_fetch(args).await),
            Command::Agent(args) => agent_cmd::run(cli.config, args).await,
            Command::Witness(args) => witness_cmd::run(cli.config, args).await,
            Command::Status(args) => return witness_cmd::status(cli.config, args).await,
            Command::Failover(args) => operate_cmd::failover(cli.config, args).await,
            Command::Switchover(args) => switchover_cmd::switchover(cli.config, args).await,
            Command::Pause(args) => operate_cmd::pause(cli.config, args, true).await,
            Command::Resume(args) => operate_cmd::pause(cli.config, args, false).await,
            Command::Demo(args) => demo::run(args).await,
        }
        .map(|()| ExitCode::SUCCESS)
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tandem: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_log_filters_are_static_and_span_filters_dynamic() {
        for plain in ["info", "warn", "tandem_proxy=debug,warn", "debug,tokio_postgres=off"] {
            assert!(matches!(log_filter(plain), Ok(LogFilter::Static(_))), "{plain}");
        }
        for spans in ["[client]=debug", "info,[client{user=app}]=trace"] {
            assert!(matches!(log_filter(spans), Ok(LogFilter::Dynamic(_))), "{spans}");
        }
        for broken in ["[unclosed=debug", "info,target=notalevel"] {
            assert!(log_filter(broken).is_err(), "{broken}");
        }
    }
}
