//! Tandem's test kit and end-to-end suites.
//!
//! Every end-to-end test of Tandem sits at the edge of the data flow: it starts real
//! PostgreSQL servers (primary, physical standbys) and real `tandem` processes, sends traffic
//! through them and checks what PostgreSQL itself says. The [`kit`] module holds the pieces;
//! the most used ones are re-exported here so tests can `use tandem_tests::*`.

pub mod kit;

pub use kit::bin::{pg_bin_dir, tandem_bin};
pub use kit::init_tracing;
pub use kit::pg::{PgOptions, PgServer};
pub use kit::port::free_port;
pub use kit::process::TandemProcess;
