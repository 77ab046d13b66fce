//! `tandem replica add` (a new physical standby) and `tandem wal-fetch` (a standby's
//! `restore_command`): flags → [`tandem_replicator::physical`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use tandem_core::NodeId;
use tandem_localpg::LocalServer;
use tandem_replicator::physical::{fetch, standby};

/// `tandem replica ...`.
#[derive(Subcommand, Debug)]
pub enum ReplicaCommand {
    /// Make a physical standby of the primary: a slot, pg_basebackup, streaming settings and a
    /// restore_command reading the WAL relay; then start it.
    Add(AddArgs),
}

/// Flags of `tandem replica add`.
#[derive(Args, Debug)]
pub struct AddArgs {
    /// The standby's name: its cluster_name, the name in synchronous_standby_names, and its
    /// slot `tandem_standby_NAME` on the primary.
    name: NodeId,
    /// The primary: postgres://USER@HOST:PORT (a role with REPLICATION).
    #[arg(long = "from")]
    from: String,
    /// The new standby's data directory (must not exist, or be empty).
    #[arg(long)]
    data_dir: PathBuf,
    /// Port the standby listens on.
    #[arg(long)]
    port: u16,
    /// Where restore_command reads the relay's WAL: the relay's WAL directory
    /// (`<replicator --data-dir>/wal`) or its status endpoint http://HOST:PORT.
    #[arg(long)]
    relay: Option<String>,
    /// Only prepare the data directory; do not start the server.
    #[arg(long)]
    no_start: bool,
}

/// Flags of `tandem wal-fetch` (PostgreSQL runs it as `restore_command`).
#[derive(Args, Debug)]
pub struct WalFetchArgs {
    /// The relay's WAL directory or its status endpoint http://HOST:PORT.
    #[arg(long = "from")]
    from: String,
    /// The WAL file wanted (%f).
    name: String,
    /// Where to put it (%p).
    dest: PathBuf,
    /// The standby's data directory, whose pg_wal holds its own copy of the segment the relay
    /// is still writing (served only if the relay's holds more valid WAL) [default: the
    /// working directory, which is the data directory when PostgreSQL runs restore_command].
    #[arg(long)]
    pgdata: Option<PathBuf>,
}

/// Runs `tandem replica add`.
pub async fn run(command: ReplicaCommand) -> anyhow::Result<()> {
    let ReplicaCommand::Add(args) = command;
    let tandem = std::env::current_exe().context("find the tandem program for restore_command")?;
    let data_dir = std::path::absolute(&args.data_dir).context("resolve --data-dir")?;
    let spec = standby::StandbySpec {
        name: args.name.clone(),
        primary: args.from.clone(),
        data_dir: data_dir.clone(),
        port: args.port,
        relay: args.relay.clone(),
        tandem,
    };
    println!("copying the primary into {} ...", data_dir.display());
    let added = standby::add(&spec).await.with_context(|| format!("tandem replica add {}", args.name))?;
    for w in &added.warnings {
        eprintln!("tandem: warning: {w}");
    }
    if args.relay.is_none() {
        eprintln!("tandem: warning: no --relay: this standby cannot catch up from the WAL relay");
    }
    println!("standby {} ready (slot {} on the primary)", args.name, added.slot);
    if !args.no_start {
        let server = LocalServer::at(&data_dir, args.port);
        tokio::task::spawn_blocking(move || server.start())
            .await?
            .with_context(|| format!("start standby {} on port {}", args.name, args.port))?;
        println!("standby {} started on port {}", args.name, args.port);
    }
    Ok(())
}

/// Runs `tandem wal-fetch`: exit 0 when the relay's copy is in place, 1 when the relay does
/// not have it, has only a partial copy holding no more valid WAL than the standby's own
/// pg_wal (PostgreSQL then reads that), or it could not be fetched (restore_command's contract).
pub async fn wal_fetch(args: WalFetchArgs) -> ExitCode {
    let data_dir = args.pgdata.unwrap_or_else(|| PathBuf::from("."));
    match fetch::fetch(&args.from, &args.name, &args.dest, &data_dir).await {
        Ok(outcome) => {
            if let Some(warning) = &outcome.warning {
                eprintln!("tandem wal-fetch: {warning}");
            }
            match outcome.fetched {
                fetch::Fetched::Restored => ExitCode::SUCCESS,
                fetch::Fetched::NotInRelay | fetch::Fetched::LocalHoldsMore => ExitCode::from(1),
            }
        }
        Err(e) => {
            eprintln!("tandem wal-fetch: {e}");
            ExitCode::from(1)
        }
    }
}
