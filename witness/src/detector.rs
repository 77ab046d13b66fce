//! The leader's failure rule: the primary is failed only when a MAJORITY of witnesses have
//! failed to reach it for the failure timeout.
//!
//! Place in the data flow: probes on every witness → reports to the leader → **here** →
//! a `DeclarePrimaryFailed` (or `PrimaryRecovered`) request committed in Raft. Pure logic
//! over the latest report of each witness; the caller supplies the clock. A report counts
//! only while it is fresh: a witness that stopped reporting (crashed, cut off from the
//! leader) is no vote for "failed". So one witness cut off from the primary, or a primary
//! that stalls for less than the timeout, changes nothing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What one witness last said about the primary.
#[derive(Clone, Debug)]
pub struct Sighting {
    /// Which node it is about (the primary when it was made: after a failover, sightings
    /// of the old primary must not count against the new one).
    pub node: String,
    /// When the leader received it.
    pub received: Instant,
    /// How long that witness had been failing to reach the primary (None: its last probe
    /// succeeded).
    pub failing_for: Option<Duration>,
}

/// The verdict on the primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A majority have failed to reach it for the timeout: these witnesses.
    Failed(Vec<u64>),
    /// A majority reach it.
    Healthy,
    /// Neither (not enough fresh reports, or a minority failing).
    Undecided,
}

/// Judges `primary` from each witness's latest sighting of it (`members` is the group size).
pub fn judge(
    primary: &str,
    sightings: &BTreeMap<u64, Sighting>,
    members: usize,
    now: Instant,
    fresh: Duration,
    failure_timeout: Duration,
) -> Verdict {
    let majority = members / 2 + 1;
    let fresh_ones =
        sightings.iter().filter(|(_, s)| s.node == primary && now.saturating_duration_since(s.received) <= fresh);
    let mut failed = Vec::new();
    let mut healthy = 0;
    for (id, s) in fresh_ones {
        match s.failing_for {
            Some(d) if d >= failure_timeout => failed.push(*id),
            Some(_) => {}
            None => healthy += 1,
        }
    }
    if failed.len() >= majority {
        Verdict::Failed(failed)
    } else if healthy >= majority {
        Verdict::Healthy
    } else {
        Verdict::Undecided
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRESH: Duration = Duration::from_millis(800);
    const TIMEOUT: Duration = Duration::from_millis(1000);

    fn sight(now: Instant, age_ms: u64, failing_ms: Option<u64>) -> Sighting {
        Sighting {
            node: "pg1".into(),
            received: now - Duration::from_millis(age_ms),
            failing_for: failing_ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn a_majority_failing_for_the_timeout_is_needed() {
        let now = Instant::now() + Duration::from_secs(10);
        let mut s = BTreeMap::new();
        s.insert(1, sight(now, 0, Some(1500)));
        // One witness cut off from the primary: nothing.
        s.insert(2, sight(now, 0, None));
        s.insert(3, sight(now, 0, None));
        assert_eq!(judge("pg1", &s, 3, now, FRESH, TIMEOUT), Verdict::Healthy);
        // Two fail, but one only briefly (a stall shorter than the timeout): undecided.
        s.insert(2, sight(now, 0, Some(300)));
        assert_eq!(judge("pg1", &s, 3, now, FRESH, TIMEOUT), Verdict::Undecided);
        // Two for the timeout: failed.
        s.insert(2, sight(now, 0, Some(1000)));
        assert_eq!(judge("pg1", &s, 3, now, FRESH, TIMEOUT), Verdict::Failed(vec![1, 2]));
    }

    #[test]
    fn stale_reports_do_not_vote() {
        let now = Instant::now() + Duration::from_secs(10);
        let mut s = BTreeMap::new();
        s.insert(1, sight(now, 0, Some(5000)));
        s.insert(2, sight(now, 5000, Some(5000)));
        assert_eq!(judge("pg1", &s, 3, now, FRESH, TIMEOUT), Verdict::Undecided);
        // Five witnesses need three.
        s.insert(2, sight(now, 0, Some(5000)));
        assert_eq!(judge("pg1", &s, 5, now, FRESH, TIMEOUT), Verdict::Undecided);
        s.insert(3, sight(now, 0, Some(5000)));
        assert_eq!(judge("pg1", &s, 5, now, FRESH, TIMEOUT), Verdict::Failed(vec![1, 2, 3]));
        // Sightings of the old primary say nothing about a new one.
        assert_eq!(judge("s1", &s, 5, now, FRESH, TIMEOUT), Verdict::Undecided);
    }
}
