//! The write lease: may this proxy send writes to the primary right now?

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tandem_core::Epoch;

/// Clock-rate difference bound between the proxy and the witnesses (ρ).
pub const DRIFT: f64 = 0.01;

/// The proxy's write lease, read on every unit bound for the primary (two relaxed loads).
#[derive(Debug)]
pub struct WriteLease {
    /// False when no witness group is configured: always valid.
    required: bool,
    /// Origin of the monotonic nanosecond counts below.
    base: Instant,
    /// Valid while `base.elapsed()` is below this (nanoseconds).
    until_ns: AtomicU64,
    /// The epoch the lease was granted for.
    epoch: AtomicU64,
    /// Wakes the renewal loop before its period (a switchover's commit: writes are waiting
    /// for a lease of the new epoch).
    renew: tokio::sync::Notify,
}

impl WriteLease {
    /// A lease that is always valid (no witness group).
    pub fn unconditional() -> WriteLease {
        WriteLease {
            required: false,
            base: Instant::now(),
            until_ns: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            renew: Default::default(),
        }
    }

    /// A lease that must be granted by the group before writes may go out.
    pub fn from_group() -> WriteLease {
        WriteLease {
            required: true,
            base: Instant::now(),
            until_ns: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            renew: Default::default(),
        }
    }

    /// Whether the group decides (false: no witnesses configured).
    pub fn required(&self) -> bool {
        self.required
    }

    /// Whether writes may go to the primary now.
    pub fn is_valid(&self) -> bool {
        !self.required || (self.base.elapsed().as_nanos() as u64) < self.until_ns.load(Ordering::Acquire)
    }

    /// Time left, for status output (None: not required; zero: expired).
    pub fn remaining(&self) -> Option<Duration> {
        self.required.then(|| {
            let now = self.base.elapsed().as_nanos() as u64;
            Duration::from_nanos(self.until_ns.load(Ordering::Acquire).saturating_sub(now))
        })
    }

    /// The epoch of the last grant.
    pub fn epoch(&self) -> Epoch {
        Epoch(self.epoch.load(Ordering::Acquire))
    }

    /// Records a grant of `granted` for `epoch`, for a request sent at `sent`. Never shortens
    /// a lease (a late answer to an older request is worth less than a newer grant).
    pub fn grant(&self, sent: Instant, granted: Duration, epoch: Epoch) {
        let valid = granted.mul_f64(1.0 - DRIFT);
        let until = sent.saturating_duration_since(self.base) + valid;
        self.until_ns.fetch_max(until.as_nanos() as u64, Ordering::AcqRel);
        self.epoch.store(epoch.0, Ordering::Release);
    }

    /// Asks the renewal loop to renew now.
    pub fn renew_now(&self) {
        self.renew.notify_one();
    }

    /// Resolves when [`Self::renew_now`] was called (at most one call is remembered).
    pub async fn renewal_requested(&self) {
        self.renew.notified().await
    }

    /// Ends the lease now (the group refused it: the primary is declared failed).
    pub fn revoke(&self) {
        self.until_ns.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_the_send_and_never_shrinks() {
        assert!(WriteLease::unconditional().is_valid());
        let l = WriteLease::from_group();
        assert!(!l.is_valid(), "no grant yet");
        let sent = Instant::now();
        l.grant(sent, Duration::from_secs(60), Epoch(3));
        assert!(l.is_valid());
        assert_eq!(l.epoch(), Epoch(3));
        let left = l.remaining().unwrap();
        assert!(left <= Duration::from_secs(60).mul_f64(1.0 - DRIFT), "{left:?}");
        // An older request's answer does not shorten it.
        l.grant(sent, Duration::from_secs(1), Epoch(3));
        assert!(l.remaining().unwrap() > Duration::from_secs(50));
        l.revoke();
        assert!(!l.is_valid());
        // A grant that lasts no longer than its round trip is already expired.
        l.grant(Instant::now(), Duration::ZERO, Epoch(3));
        assert!(!l.is_valid());
    }
}
