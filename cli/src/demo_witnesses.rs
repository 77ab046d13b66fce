//! The demo's witness group: three witnesses in the demo process, on the ports after the
//! relay's status port, judging the demo's servers; and the `tandem status` table once the
//! group has formed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tandem_core::{ClusterSpec, NodeSpec, Role, WitnessSpec};
use tandem_localpg::LocalServer;
use tandem_witness::{ProbeLogin, Timing, WitnessConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How many witnesses the demo runs.
const WITNESSES: u16 = 3;

/// A running witness task.
pub type WitnessTask = JoinHandle<Result<(), tandem_witness::WitnessError>>;

/// Starts the witnesses on `first_port..` with data under `root/witnessN`; returns their
/// tasks and addresses.
pub fn start(
    root: &std::path::Path,
    first_port: u16,
    primary: &LocalServer,
    standbys: &[LocalServer],
    shutdown: &CancellationToken,
) -> anyhow::Result<(Vec<WitnessTask>, Vec<String>)> {
    let node = |s: &LocalServer, role| -> anyhow::Result<NodeSpec> {
        Ok(NodeSpec {
            name: s.name().parse()?,
            addr: format!("127.0.0.1:{}", s.port).parse()?,
            role,
            priority: 1,
            agent: None,
        })
    };
    let mut nodes = vec![node(primary, Role::Primary)?];
    for s in standbys {
        nodes.push(node(s, Role::Replica)?);
    }
    let witnesses: Vec<WitnessSpec> = (0..WITNESSES)
        .map(|i| {
            let port = first_port.checked_add(i).context("--port too high for the witnesses")?;
            Ok(WitnessSpec { id: u64::from(i) + 1, addr: format!("127.0.0.1:{port}") })
        })
        .collect::<anyhow::Result<_>>()?;
    let cluster = ClusterSpec { nodes, witnesses: witnesses.clone(), token: None };
    let mut tasks = Vec::new();
    for w in &witnesses {
        let cfg = WitnessConfig {
            id: w.id,
            data_dir: root.join(format!("witness{}", w.id)),
            cluster: cluster.clone(),
            probe: ProbeLogin::default(),
            timing: Timing::default(),
            failover: tandem_witness::FailoverSettings::default(),
        };
        cfg.validate()?;
        tasks.push(tokio::spawn(tandem_witness::run(Arc::new(cfg), shutdown.clone())));
    }
    Ok((tasks, witnesses.into_iter().map(|w| w.addr).collect()))
}

/// Prints the `tandem status` table once the group has a leader, the cluster state and the
/// proxy's lease (waits up to 15 s).
pub async fn print_status(addrs: &[String]) {
    let Ok(client) = tandem_witness::client::WitnessClient::new(addrs.to_vec(), Duration::from_secs(2)) else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(view) = client.cluster().await {
            // Formed, probing every node, and the proxy holds its write lease.
            let probing = view.probes.len() == view.state.nodes.len();
            if view.leader.is_some() && !view.state.nodes.is_empty() && probing && !view.state.leases.is_empty() {
                print!("{}", crate::status_table::render(&view));
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("(the witness group has not formed yet; try `tandem status` in a moment)");
}
