//! Loopback ports for servers a test starts (PostgreSQL, tandem proxy, metrics ...).
//!
//! Tests run in parallel threads, so two servers must never be handed the same port.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, OnceLock};

/// Ports already handed out by this process.
///
/// This is the one piece of process-wide mutable state in the kit, and it is unavoidable:
/// the kernel may give the same ephemeral port to two `bind(:0)` calls once the first probe
/// socket is closed, and the servers bind those ports only later.
fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A free TCP port on 127.0.0.1 that this process has not handed out before.
///
/// Why: servers under test must use free loopback ports, never fixed ones. The port is found
/// by binding `127.0.0.1:0`; the probe socket is closed before returning, so the caller binds
/// it shortly after.
pub fn free_port() -> u16 {
    // A poisoned lock only means another test thread panicked while holding it; the set
    // itself is still valid.
    let mut seen = handed_out().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut last = 0;
    for _ in 0..1000 {
        let Ok(listener) = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)) else {
            continue;
        };
        let Ok(addr) = listener.local_addr() else {
            continue;
        };
        last = addr.port();
        if seen.insert(last) {
            return last;
        }
    }
    // Practically unreachable (1000 repeats in a ~28k-port range); a reused port beats a
    // panic, and the bind that follows will report a clear error if it is taken.
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_unique_and_bindable() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let unique: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len());
        assert!(ports.iter().all(|p| *p != 0));
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, ports[0]));
        assert!(l.is_ok());
    }
}
