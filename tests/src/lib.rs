//! Tandem's test kit and end-to-end suites.
//!
//! Every end-to-end test of Tandem sits at the edge of the data flow: it starts real
//! PostgreSQL servers (primary, physical standbys) and real `tandem` processes, sends traffic
//! through them and checks what PostgreSQL itself says. The [`kit`] module holds the pieces;
//! the most used ones are re-exported here so tests can `use tandem_tests::*`.
//!
//! ```no_run
//! use std::time::Duration;
//! use tandem_tests::{free_port, wait_until, PgOptions, PgServer, TandemProcess};
//!
//! # fn main() -> anyhow::Result<()> {
//! let primary = PgServer::start("primary", PgOptions::default())?;
//! let replica = primary.start_standby("replica")?;
//! primary.psql("postgres", "CREATE TABLE t (id int); INSERT INTO t VALUES (1)")?;
//! wait_until("replica to replay", Duration::from_secs(30), || {
//!     (replica.psql("postgres", "SELECT count(*) FROM t").ok()? == "1").then_some(())
//! })?;
//!
//! let port = free_port();
//! let listen = format!("127.0.0.1:{port}");
//! let proxy = TandemProcess::spawn(&["proxy", "--listen", &listen])?;
//! proxy.wait_for_port(port, Duration::from_secs(10))?;
//! # Ok(())
//! # }
//! ```

pub mod checker;
pub mod cluster;
pub mod ha;
pub mod kit;
pub mod wire;

pub use cluster::{Cluster, ClusterOptions, POOLED_SESSION};
pub use kit::bin::{pg_bin_dir, tandem_bin};
pub use kit::fault_proxy::FaultProxy;
pub use kit::pg::{PgOptions, PgServer};
pub use kit::port::free_port;
pub use kit::process::TandemProcess;
pub use kit::{init_tracing, wait_until};
