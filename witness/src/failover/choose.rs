//! The failover's decisions, free of I/O: is it safe to go on, what must the candidate
//! have replayed, which standby is promoted, how long the lease wait is.
//!
//! Place in the data flow: the fence's findings ([`Consulted`]) → **these rules** → the
//! catch-up wait and the promotion in [`super`]. The safety argument they implement is in
//! docs/ARCHITECTURE.md ("Failover"): in sync mode (`ANY k` of N members) the fence must have
//! consulted N − k + 1 members — then one of them flushed every acknowledged commit, and at
//! most k − 1 remain attached to the old primary, too few to acknowledge anything more, which
//! is why no lease wait is needed. Otherwise (async mode) the proxies' write leases must run
//! out first, and the loss window is bounded by `max_lag_on_failover`.

use std::collections::BTreeMap;
use std::time::Duration;

use tandem_core::{Lsn, NodeId};

use super::sql::Positions;
use crate::state::Quorum;

/// Clock drift bound between a proxy and the leader (1 %).
const DRIFT: f64 = 0.01;
/// Margin for the message carrying the fence (and scheduling).
const DELTA: Duration = Duration::from_millis(50);

/// What the fence learned.
#[derive(Clone, Debug, Default)]
pub struct Consulted {
    /// Standbys detached from the old primary, with their positions and failover priority.
    pub standbys: BTreeMap<NodeId, (Positions, u32)>,
    /// The relay's slot name and its final flush position, when it confirmed its fence.
    pub relay: Option<(String, Option<Lsn>)>,
}

/// Whether the failover may go on without waiting out the write leases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Safety {
    /// Sync mode with enough members consulted: every acknowledged commit is on one of
    /// them, and the old primary can acknowledge nothing more.
    Sync,
    /// No commit quorum (async mode): wait out the leases; acknowledged commits may be lost
    /// (bounded by the lag).
    Async,
    /// Sync mode, too few members consulted: refuse rather than lose acknowledged commits.
    Refuse(String),
}

/// Judges the fence's findings against the quorum the relay last reported.
pub fn safety(quorum: Option<&Quorum>, consulted: &Consulted) -> Safety {
    let Some(q) = quorum.filter(|q| q.k > 0 && !q.members.is_empty()) else { return Safety::Async };
    let relay = consulted.relay.as_ref().map(|(slot, _)| slot.as_str());
    let reached: Vec<&str> = q
        .members
        .iter()
        .map(String::as_str)
        .filter(|m| Some(*m) == relay || consulted.standbys.keys().any(|s| s.as_str() == *m))
        .collect();
    if reached.len() >= q.needed() {
        Safety::Sync
    } else {
        Safety::Refuse(format!(
            "sync mode ANY {} of {:?}: only {:?} could be fenced and consulted, {} needed to be sure every \
             acknowledged commit is kept",
            q.k,
            q.members,
            reached,
            q.needed()
        ))
    }
}

/// The position the candidate must replay: the furthest any consulted member holds.
pub fn target(consulted: &Consulted) -> Option<Lsn> {
    let standbys = consulted.standbys.values().flat_map(|(p, _)| [p.received, p.replayed]).flatten();
    let relay = consulted.relay.as_ref().and_then(|(_, l)| *l);
    standbys.chain(relay).max()
}

/// The standby to promote among those that replayed `target`: the most advanced, ties by
/// priority (higher first), then by name. Priority 0 never, unless the operator named it.
pub fn choose(
    current: &BTreeMap<NodeId, (Positions, u32)>,
    target: Option<Lsn>,
    wanted: Option<&NodeId>,
) -> Option<NodeId> {
    current
        .iter()
        .filter(|(name, (_, priority))| match wanted {
            Some(w) => *name == w,
            None => *priority > 0,
        })
        .filter(|(_, (p, _))| p.in_recovery || wanted.is_some())
        .filter(|(_, (p, _))| match target {
            Some(t) => p.replayed.is_some_and(|r| r >= t),
            None => true,
        })
        .max_by(|(an, (ap, apr)), (bn, (bp, bpr))| (ap.replayed, apr).cmp(&(bp.replayed, bpr)).then_with(|| bn.cmp(an)))
        .map(|(name, _)| name.clone())
}

/// Async mode: the most advanced eligible standby when none reached the target, if it is
/// within `max_lag` bytes of the last position seen on the old primary.
pub fn best_within_lag(
    current: &BTreeMap<NodeId, (Positions, u32)>,
    last_primary: Option<Lsn>,
    max_lag: u64,
    wanted: Option<&NodeId>,
) -> Result<NodeId, String> {
    let best = choose(current, None, wanted).ok_or_else(|| "no standby can be promoted".to_owned())?;
    let replayed = current.get(&best).and_then(|(p, _)| p.replayed);
    match (last_primary, replayed) {
        (Some(primary), Some(r)) if primary.0.saturating_sub(r.0) > max_lag => Err(format!(
            "the most advanced standby {best} is {} bytes behind the old primary's last known position, \
             more than max_lag_on_failover ({max_lag})",
            primary.0 - r.0
        )),
        _ => Ok(best),
    }
}

/// How long writes through a proxy may still reach the old primary after the fence: a
/// lease of `lease` counted on the proxy's clock from before the last grant, stretched by
/// the drift bound both ways, plus a margin.
pub fn lease_wait(lease: Duration) -> Duration {
    lease.mul_f64((1.0 + DRIFT) / (1.0 - DRIFT)) + DELTA
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(received: u64, replayed: u64) -> Positions {
        Positions { in_recovery: true, received: Some(Lsn(received)), replayed: Some(Lsn(replayed)) }
    }

    fn id(s: &str) -> NodeId {
        s.parse().unwrap()
    }

    fn q(k: usize) -> Quorum {
        Quorum { k, members: vec!["s1".into(), "s2".into(), "tandem_relay".into()] }
    }

    #[test]
    fn sync_mode_needs_n_minus_k_plus_one_members() {
        let mut c = Consulted::default();
        c.standbys.insert(id("s1"), (pos(100, 90), 1));
        c.relay = Some(("tandem_relay".into(), Some(Lsn(120))));
        assert!(matches!(safety(Some(&q(1)), &c), Safety::Refuse(r) if r.contains("3 needed")));
        assert_eq!(safety(Some(&q(2)), &c), Safety::Sync);
        c.standbys.insert(id("s2"), (pos(80, 80), 1));
        assert_eq!(safety(Some(&q(1)), &c), Safety::Sync);
        assert_eq!(safety(None, &c), Safety::Async);
        assert_eq!(target(&c), Some(Lsn(120)));
    }

    #[test]
    fn the_most_advanced_wins_ties_by_priority() {
        let mut m = BTreeMap::new();
        m.insert(id("a"), (pos(100, 100), 1));
        m.insert(id("b"), (pos(100, 100), 5));
        m.insert(id("c"), (pos(100, 90), 9));
        m.insert(id("z"), (pos(200, 200), 0));
        assert_eq!(choose(&m, Some(Lsn(100)), None), Some(id("b")));
        assert_eq!(choose(&m, Some(Lsn(150)), None), None, "priority 0 never, and nobody else reached it");
        assert_eq!(choose(&m, Some(Lsn(150)), Some(&id("z"))), Some(id("z")), "unless named");
        assert_eq!(choose(&m, None, None), Some(id("b")));
        assert!(best_within_lag(&m, Some(Lsn(1000)), 100, None).is_err());
        assert_eq!(best_within_lag(&m, Some(Lsn(150)), 100, None), Ok(id("b")));
    }

    #[test]
    fn the_lease_wait_covers_drift() {
        let w = lease_wait(Duration::from_secs(2));
        assert!(w > Duration::from_millis(2090) && w < Duration::from_millis(2150), "{w:?}");
    }
}
