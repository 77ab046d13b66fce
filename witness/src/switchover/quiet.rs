//! The proxies' answers to a switchover's prepare: which of them went quiet.
//!
//! Place in the data flow: a proxy sees phase `pausing` on its watch → closes its PAUSE gate
//! → once no transaction of its own is running, `POST /v1/switchover/quiet` → **recorded
//! here, on the leader, in memory** → the switchover stops the old primary once every proxy
//! that may hold a write lease is quiet. A new leader knows no answers: the proxies repeat
//! theirs while the phase lasts, so it learns them again within a report interval.

use std::collections::{BTreeMap, BTreeSet};

use crate::state::ClusterState;

/// Quiet proxies of one switchover (identified by its `started_ms`).
#[derive(Debug, Default)]
pub struct QuietReports {
    operation: u64,
    /// Proxy (lease holder id) → clients connected to it when it reported.
    proxies: BTreeMap<String, u64>,
}

impl QuietReports {
    /// Records that `holder` is quiet for the switchover `operation`.
    pub fn record(&mut self, operation: u64, holder: &str, clients: u64) {
        if self.operation != operation {
            self.operation = operation;
            self.proxies.clear();
        }
        self.proxies.insert(holder.to_owned(), clients);
    }

    /// The quiet proxies of `operation` and their clients.
    pub fn of(&self, operation: u64) -> BTreeMap<String, u64> {
        if self.operation == operation {
            self.proxies.clone()
        } else {
            BTreeMap::new()
        }
    }
}

/// The proxies that must be quiet before the old primary stops: every holder of a lease of
/// the current epoch that was valid at some point since pausing began (`since_ms`, the
/// leader's clock, with `slack_ms` for clock differences between leaders). A proxy whose
/// lease ran out before that writes nothing without a new one, and leases are refused from
/// `stopping` on.
pub fn must_be_quiet(state: &ClusterState, since_ms: u64, slack_ms: u64) -> BTreeSet<String> {
    state
        .leases
        .values()
        .filter(|l| l.epoch == state.epoch && l.granted_ms + l.duration_ms + slack_ms >= since_ms)
        .map(|l| l.holder.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Lease;
    use tandem_core::Epoch;

    #[test]
    fn only_leases_that_may_still_be_valid_count() {
        let mut state = ClusterState::default();
        state.epoch = Epoch(3);
        let lease = |holder: &str, epoch, granted_ms| Lease {
            holder: holder.into(),
            epoch: Epoch(epoch),
            granted_ms,
            duration_ms: 2000,
        };
        for l in [lease("fresh", 3, 9_500), lease("expired", 3, 1_000), lease("old-epoch", 2, 9_900)] {
            state.leases.insert(l.holder.clone(), l);
        }
        let must = must_be_quiet(&state, 10_000, 100);
        assert_eq!(must.into_iter().collect::<Vec<_>>(), vec!["fresh".to_owned()]);
    }

    #[test]
    fn answers_belong_to_one_switchover() {
        let mut q = QuietReports::default();
        q.record(1, "p1", 10);
        q.record(1, "p2", 0);
        assert_eq!(q.of(1).len(), 2);
        q.record(2, "p1", 3);
        assert_eq!(q.of(2), BTreeMap::from([("p1".to_owned(), 3)]));
        assert!(q.of(1).is_empty());
    }
}
