//! The test kit: real PostgreSQL servers and `tandem` subprocesses for end-to-end tests.
//!
//! Data flow of a typical test: [`port::free_port`] hands out loopback ports,
//! [`pg::PgServer`] runs PostgreSQL on them (copied from a template made by [`template`]),
//! [`process::TandemProcess`] runs the `tandem` binary found by [`bin::tandem_bin`] pointed at
//! those servers, and the test talks to both with `tokio_postgres` or `psql`. Everything a
//! test starts is stopped on `Drop`, also when the test panics.

pub mod bin;
pub mod pg;
pub mod port;
pub mod process;
pub mod procs;
mod run;
mod template;

/// Installs a `tracing` subscriber for tests, once per process.
///
/// Why: test output is only readable when kit and library logs go through the test writer
/// (captured per test by libtest) and honour `RUST_LOG`. Calling it again is harmless.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // `try_init` fails only when a subscriber is already set, which is exactly the
    // idempotent case we want to ignore.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
