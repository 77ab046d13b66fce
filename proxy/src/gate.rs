//! PAUSE and RESUME.
//!
//! While paused, sessions finish the transactions they are in but start no new
//! ones: a session that needs a server connection waits at the gate. PAUSE
//! returns once no session holds a server connection for a transaction, which
//! is the quiet point a planned switchover needs; RESUME lets everyone go on,
//! possibly towards a new primary.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// The pause switch and the count of transactions in progress.
#[derive(Debug)]
pub struct PauseGate {
    paused: watch::Sender<bool>,
    busy: AtomicUsize,
    idle: tokio::sync::Notify,
}

impl Default for PauseGate {
    fn default() -> Self {
        PauseGate { paused: watch::channel(false).0, busy: AtomicUsize::new(0), idle: tokio::sync::Notify::new() }
    }
}

/// A session's claim on a server connection; released on drop.
#[derive(Debug)]
pub struct Busy {
    gate: Arc<PauseGate>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        // Only a PAUSE waits for the count to reach zero; skip the wake-up otherwise.
        if self.gate.busy.fetch_sub(1, Ordering::AcqRel) == 1 && self.gate.is_paused() {
            self.gate.idle.notify_waiters();
        }
    }
}

impl PauseGate {
    /// Whether new work is being held.
    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Waits until the gate is open.
    pub async fn wait_open(&self) {
        let mut rx = self.paused.subscribe();
        let _ = rx.wait_for(|p| !*p).await;
    }

    /// Counts a session as using a server connection.
    pub fn enter(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy { gate: self.clone() }
    }

    /// Sessions holding a server connection now.
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Acquire)
    }

    /// Closes the gate and waits up to `timeout` for running work to finish.
    /// Returns whether the proxy went quiet in time.
    pub async fn pause(&self, timeout: Duration) -> bool {
        self.paused.send_replace(true);
        let quiet = async {
            loop {
                let notified = self.idle.notified();
                if self.busy() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, quiet).await.is_ok()
    }

    /// Opens the gate.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pause_waits_for_running_work() {
        let gate = Arc::new(PauseGate::default());
        let g2 = gate.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(async move {
            let _busy = g2.enter();
            let _ = rx.await;
        });
        tokio::task::yield_now().await;
        while gate.busy() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(!gate.pause(Duration::from_millis(20)).await, "busy work must hold pause");
        let _ = tx.send(());
        worker.await.unwrap();
        assert!(gate.pause(Duration::from_secs(5)).await);
        assert!(gate.is_paused());
        gate.resume();
        gate.wait_open().await;
    }
}
