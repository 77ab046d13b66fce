//! Choosing one replica among the eligible ones.
//!
//! Least outstanding requests by default: the replica with the fewest
//! requests in flight, ties broken at random so that an idle cluster still
//! spreads reads. Round-robin, random and weighted-random are options.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rand::Rng;

use super::node::Node;
use crate::config::LoadBalance;

/// Picks replicas according to a [`LoadBalance`] policy.
#[derive(Debug)]
pub struct Balancer {
    policy: LoadBalance,
    next: AtomicUsize,
}

impl Balancer {
    /// A balancer with the given policy.
    pub fn new(policy: LoadBalance) -> Balancer {
        Balancer { policy, next: AtomicUsize::new(0) }
    }

    /// Picks one of `candidates` (which must not be empty to get `Some`).
    pub fn pick<'a>(&self, candidates: &[&'a Arc<Node>]) -> Option<&'a Arc<Node>> {
        let n = candidates.len();
        if n <= 1 {
            return candidates.first().copied();
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        match self.policy {
            LoadBalance::RoundRobin => Some(candidates[turn % n]),
            LoadBalance::Random => Some(candidates[rand::thread_rng().gen_range(0..n)]),
            LoadBalance::Weighted => {
                let total: u64 = candidates.iter().map(|c| u64::from(c.weight)).sum();
                if total == 0 {
                    return Some(candidates[turn % n]);
                }
                let mut x = rand::thread_rng().gen_range(0..total);
                for c in candidates {
                    let w = u64::from(c.weight);
                    if x < w {
                        return Some(c);
                    }
                    x -= w;
                }
                candidates.last().copied()
            }
            LoadBalance::LeastOutstanding => {
                // Ties are broken at random, not in turn: a client whose every statement
                // costs two picks (prepare, then execute) would otherwise have all its
                // executions land on the same replica of two.
                let min = candidates.iter().map(|c| c.outstanding()).min()?;
                let tied = candidates.iter().filter(|c| c.outstanding() == min).count();
                let k = if tied > 1 { rand::thread_rng().gen_range(0..tied) } else { 0 };
                candidates
                    .iter()
                    .filter(|c| c.outstanding() == min)
                    .nth(k)
                    .or_else(|| candidates.iter().min_by_key(|c| c.outstanding()))
                    .copied()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::Role;

    fn node(name: &str, weight: u32) -> Arc<Node> {
        Arc::new(Node::new(name.parse().unwrap(), "127.0.0.1:1".parse().unwrap(), Role::Replica, weight))
    }

    #[test]
    fn least_outstanding_prefers_idle_replica() {
        let (a, b) = (node("a", 1), node("b", 1));
        let _busy = a.begin_request();
        let bal = Balancer::new(LoadBalance::LeastOutstanding);
        for _ in 0..10 {
            assert_eq!(bal.pick(&[&a, &b]).unwrap().id.as_str(), "b");
        }
    }

    #[test]
    fn least_outstanding_spreads_ties() {
        let (a, b) = (node("a", 1), node("b", 1));
        let bal = Balancer::new(LoadBalance::LeastOutstanding);
        let picks: Vec<_> = (0..64).map(|_| bal.pick(&[&a, &b]).unwrap().id.to_string()).collect();
        assert!(picks.contains(&"a".to_string()) && picks.contains(&"b".to_string()), "{picks:?}");
    }

    #[test]
    fn weighted_respects_zero_weight() {
        let (a, b) = (node("a", 0), node("b", 5));
        let bal = Balancer::new(LoadBalance::Weighted);
        for _ in 0..50 {
            assert_eq!(bal.pick(&[&a, &b]).unwrap().id.as_str(), "b");
        }
    }

    #[test]
    fn empty_gives_none() {
        assert!(Balancer::new(LoadBalance::Random).pick(&[]).is_none());
    }
}
