//! The test kit: real PostgreSQL servers and `tandem` subprocesses for end-to-end tests.
//!
//! Data flow of a typical test: [`port::free_port`] hands out loopback ports,
//! [`pg::PgServer`] runs PostgreSQL on them (copied from a template made by [`template`]),
//! [`process::TandemProcess`] runs the `tandem` binary found by [`bin::tandem_bin`] pointed at
//! those servers, and the test talks to both with `tokio_postgres` or `psql`. Everything a
//! test starts is stopped on `Drop`, also when the test panics.

pub mod bin;
pub mod fault_proxy;
pub mod pg;
pub mod port;
pub mod process;
pub mod procs;
pub(crate) mod run;
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
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// Polls `check` every 50 ms until it returns `Some`, failing after `timeout` with `what`.
///
/// Why: replication, failover and restarts are asynchronous, so end-to-end tests wait for an
/// observable outcome ("the standby has the row") instead of sleeping a guessed time.
pub fn wait_until<T>(
    what: &str,
    timeout: std::time::Duration,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if std::time::Instant::now() >= deadline {
            return Err(anyhow::anyhow!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn wait_until_returns_value_or_times_out() {
        let mut n = 0;
        let v = super::wait_until("n to reach 3", Duration::from_secs(5), || {
            n += 1;
            (n >= 3).then_some(n)
        });
        assert_eq!(v.unwrap(), 3);
        let err = super::wait_until("never", Duration::from_millis(100), || None::<()>);
        assert!(err.unwrap_err().to_string().contains("never"));
    }
}
