//! `tandem demo`: a whole local cluster from one command (filled in below).

use std::path::PathBuf;

use clap::Args;

/// Flags of `tandem demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Keep the cluster's data here between runs (default: a temporary directory removed on exit).
    #[arg(long, env = "TANDEM_DEMO_DIR")]
    data_dir: Option<PathBuf>,
    /// Port of the proxy.
    #[arg(long, default_value_t = 6432)]
    port: u16,
}

/// Runs the demo until Ctrl-C.
pub async fn run(_args: DemoArgs) -> anyhow::Result<()> {
    anyhow::bail!("demo not built yet")
}
