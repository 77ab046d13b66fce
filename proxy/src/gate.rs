//! PAUSE and RESUME.
//!
//! While paused, sessions finish the transactions they are in but start no new
//! ones: a session that needs a server connection waits at the gate. PAUSE
//! returns once no session holds a server connection for a transaction, which
//! is the quiet point a planned switchover needs; RESUME lets everyone go on,
//! possibly towards a new primary.
//!
//! A session counts itself busy first and then looks at the switch; PAUSE throws the
//! switch first and then looks at the count (both sequentially consistent). So either the
//! session sees the gate closed and steps back, or PAUSE sees it busy and waits: no
//! transaction starts after PAUSE has found the proxy quiet. Each worker thread counts
//! in a shard of its own, so starting a transaction writes no memory other workers use.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

/// The pause switch and the count of transactions in progress.
#[derive(Debug)]
pub struct PauseGate {
    signal: Arc<Signal>,
    /// One per worker thread.
    shards: Box<[Arc<BusyShard>]>,
}

/// What busy sessions and PAUSE tell each other.
#[derive(Debug)]
struct Signal {
    /// The switch, read on the data path without a lock.
    closed: AtomicBool,
    /// The same switch, for sessions waiting for RESUME.
    paused: watch::Sender<bool>,
    /// Woken when a busy count drops to zero while closed.
    idle: Notify,
}

/// A worker's count of sessions holding a server connection.
#[derive(Debug)]
#[repr(align(128))] // its own cache lines (adjacent-line prefetch pairs lines on x86)
struct BusyShard {
    busy: AtomicUsize,
    signal: Arc<Signal>,
}

impl Default for PauseGate {
    fn default() -> Self {
        PauseGate::new(1)
    }
}

/// A session's claim on a server connection; released on drop.
#[derive(Debug)]
pub struct Busy {
    shard: Arc<BusyShard>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        // Only a PAUSE waits for the count to reach zero; skip the wake-up otherwise.
        if self.shard.busy.fetch_sub(1, Ordering::SeqCst) == 1 && self.shard.signal.closed.load(Ordering::SeqCst) {
            self.shard.signal.idle.notify_waiters();
        }
    }
}

impl PauseGate {
    /// An open gate for `workers` worker threads.
    pub fn new(workers: usize) -> PauseGate {
        let signal =
            Arc::new(Signal { closed: AtomicBool::new(false), paused: watch::channel(false).0, idle: Notify::new() });
        let shards = (0..workers.max(1))
            .map(|_| Arc::new(BusyShard { busy: AtomicUsize::new(0), signal: signal.clone() }))
            .collect();
        PauseGate { signal, shards }
    }

    /// Whether new work is being held.
    pub fn is_paused(&self) -> bool {
        self.signal.closed.load(Ordering::SeqCst)
    }

    /// Waits until the gate is open.
    pub async fn wait_open(&self) {
        let mut rx = self.signal.paused.subscribe();
        let _ = rx.wait_for(|p| !*p).await;
    }

    /// Counts a session of worker `worker` as using a server connection, unless the gate
    /// is closed (then `None`: wait with [`Self::wait_open`] and try again).
    pub fn try_enter(&self, worker: usize) -> Option<Busy> {
        let shard = &self.shards[worker % self.shards.len()];
        shard.busy.fetch_add(1, Ordering::SeqCst);
        let busy = Busy { shard: shard.clone() };
        if self.signal.closed.load(Ordering::SeqCst) {
            return None; // dropping `busy` steps back (and wakes a PAUSE waiting for zero)
        }
        Some(busy)
    }

    /// Sessions holding a server connection now.
    pub fn busy(&self) -> usize {
        self.shards.iter().map(|s| s.busy.load(Ordering::SeqCst)).sum()
    }

    /// Closes the gate and waits up to `timeout` for running work to finish.
    /// Returns whether the proxy went quiet in time.
    pub async fn pause(&self, timeout: Duration) -> bool {
        self.signal.closed.store(true, Ordering::SeqCst);
        self.signal.paused.send_replace(true);
        let quiet = async {
            loop {
                let notified = self.signal.idle.notified();
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
        self.signal.closed.store(false, Ordering::SeqCst);
        self.signal.paused.send_replace(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pause_waits_for_running_work() {
        let gate = Arc::new(PauseGate::new(2));
        let g2 = gate.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(async move {
            let _busy = g2.try_enter(1).expect("open gate");
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
        // While closed, nobody gets in, and stepping back leaves no count behind.
        assert!(gate.try_enter(0).is_none());
        assert_eq!(gate.busy(), 0);
        gate.resume();
        gate.wait_open().await;
        assert!(gate.try_enter(0).is_some());
    }
}
