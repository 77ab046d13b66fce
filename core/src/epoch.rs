//! Topology generations.
//!
//! Every change of primary bumps the cluster's epoch. Proxies and the
//! replicator act only on the newest epoch they have seen, which is what makes
//! an old primary's late writes detectable (a fencing token). Until the witness
//! group lands, a proxy runs at the epoch it was started with.

use std::fmt;

/// A monotonically increasing topology generation (fencing token).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The epoch after this one.
    pub fn next(self) -> Epoch {
        Epoch(self.0 + 1)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_greater() {
        assert!(Epoch(3).next() > Epoch(3));
        assert_eq!(Epoch::default().next(), Epoch(1));
    }
}
