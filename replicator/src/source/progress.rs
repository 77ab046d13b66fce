//! Which positions the source may report to the primary: the rule that makes
//! sync mode mean "applied on the quorum" and async mode "durable in the change log".
//!
//! Pure bookkeeping, fed by the stream loop (`pipeline.rs`) with three kinds
//! of facts, and read back as a [`Feedback`]:
//! - a transaction (commit, end) is durable in the change log;
//! - a keepalive says nothing of ours lies before `wal_end` (only when no
//!   transaction is open in the decoder);
//! - the replicas' applied commit LSNs changed.
//!
//! `flush` moves to a transaction's end LSN only once that transaction is done
//! (durable in async mode; applied by `quorum` replicas in sync mode), and
//! never past a transaction that is not.

use std::collections::VecDeque;

use tandem_core::Lsn;

use super::stream::Feedback;
use crate::config::Mode;

#[derive(Clone, Copy, Debug)]
struct Pending {
    commit: Lsn,
    end: Lsn,
    /// False for keepalive markers: nothing to apply, only a position to pass.
    needs_apply: bool,
}

/// Tracks durable and applied positions of one database's stream.
#[derive(Debug)]
pub struct FlushTracker {
    mode: Mode,
    quorum: usize,
    written: Lsn,
    flushed: Lsn,
    pending: VecDeque<Pending>,
    /// The replicas' applied positions last reported: a transaction can be
    /// applied before the stream loop learns it is durable (the applier reads
    /// the change log as soon as the fsync is done), so `durable` checks them too.
    last_applied: Vec<Lsn>,
}

impl FlushTracker {
    /// Starts at `start` (a position the slot has already confirmed).
    pub fn new(mode: Mode, quorum: usize, start: Lsn) -> Self {
        FlushTracker {
            mode,
            quorum: quorum.max(1),
            written: start,
            flushed: start,
            pending: VecDeque::new(),
            last_applied: Vec::new(),
        }
    }

    /// A transaction is durable in the change log (or was already there).
    pub fn durable(&mut self, commit: Lsn, end: Lsn) {
        self.written = self.written.max(end);
        match self.mode {
            Mode::Async => self.flushed = self.flushed.max(end),
            Mode::Sync => {
                self.pending.push_back(Pending { commit, end, needs_apply: true });
                self.release();
            }
        }
    }

    /// The server has sent everything before `wal_end` and the decoder holds no
    /// open transaction: no change of ours lies before it.
    pub fn idle_until(&mut self, wal_end: Lsn) {
        self.written = self.written.max(wal_end);
        if self.mode == Mode::Async || self.pending.is_empty() {
            self.flushed = self.flushed.max(wal_end);
            return;
        }
        match self.pending.back_mut() {
            Some(last) if !last.needs_apply => last.end = last.end.max(wal_end),
            _ => self.pending.push_back(Pending { commit: wal_end, end: wal_end, needs_apply: false }),
        }
        self.release();
    }

    /// The replicas' applied commit LSNs (one per replica) changed.
    pub fn applied(&mut self, applied: &[Lsn]) {
        if self.mode == Mode::Async {
            return;
        }
        self.last_applied.clear();
        self.last_applied.extend_from_slice(applied);
        self.release();
    }

    /// Confirms the pending transactions the quorum has applied.
    fn release(&mut self) {
        let quorum_lsn = quorum_lsn(&self.last_applied, self.quorum);
        while let Some(front) = self.pending.front() {
            if front.needs_apply && (quorum_lsn.is_none() || Some(front.commit) > quorum_lsn) {
                break;
            }
            self.flushed = self.flushed.max(front.end);
            self.pending.pop_front();
        }
    }

    /// Transactions durable but not yet confirmed (sync mode).
    pub fn unconfirmed(&self) -> usize {
        self.pending.iter().filter(|p| p.needs_apply).count()
    }

    /// What to report to the primary now.
    pub fn feedback(&self) -> Feedback {
        Feedback { write: self.written, flush: self.flushed, apply: self.flushed }
    }
}

/// The highest commit LSN that at least `quorum` replicas have applied.
pub fn quorum_lsn(applied: &[Lsn], quorum: usize) -> Option<Lsn> {
    if quorum == 0 || applied.len() < quorum {
        return None;
    }
    let mut v = applied.to_vec();
    v.sort_unstable_by(|a, b| b.cmp(a));
    Some(v[quorum - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn async_flushes_what_is_durable() {
        let mut t = FlushTracker::new(Mode::Async, 1, Lsn(10));
        t.durable(Lsn(20), Lsn(25));
        assert_eq!(t.feedback(), Feedback { write: Lsn(25), flush: Lsn(25), apply: Lsn(25) });
        t.idle_until(Lsn(40));
        assert_eq!(t.feedback().flush, Lsn(40));
        t.idle_until(Lsn(30));
        assert_eq!(t.feedback().flush, Lsn(40));
    }

    #[test]
    fn sync_waits_for_the_quorum() {
        let mut t = FlushTracker::new(Mode::Sync, 2, Lsn(10));
        t.durable(Lsn(20), Lsn(25));
        t.durable(Lsn(30), Lsn(35));
        t.idle_until(Lsn(50));
        t.idle_until(Lsn(60));
        assert_eq!(t.feedback(), Feedback { write: Lsn(60), flush: Lsn(10), apply: Lsn(10) });
        t.applied(&[Lsn(30), Lsn(0), Lsn(5)]);
        assert_eq!(t.feedback().flush, Lsn(10), "one replica is not a quorum of 2");
        t.applied(&[Lsn(30), Lsn(20), Lsn(5)]);
        assert_eq!(t.feedback().flush, Lsn(25));
        assert_eq!(t.unconfirmed(), 1);
        t.applied(&[Lsn(30), Lsn(30), Lsn(5)]);
        // The keepalive marker behind the last transaction passes with it.
        assert_eq!(t.feedback().flush, Lsn(60));
        assert_eq!(t.unconfirmed(), 0);
        t.idle_until(Lsn(70));
        assert_eq!(t.feedback().flush, Lsn(70));
    }

    #[test]
    fn applied_before_durable_is_not_forgotten() {
        let mut t = FlushTracker::new(Mode::Sync, 1, Lsn(10));
        t.applied(&[Lsn(20)]);
        t.durable(Lsn(20), Lsn(25));
        assert_eq!(t.feedback().flush, Lsn(25));
        assert_eq!(t.unconfirmed(), 0);
    }

    #[test]
    fn quorum_is_the_kth_highest() {
        assert_eq!(quorum_lsn(&[Lsn(1), Lsn(3), Lsn(2)], 1), Some(Lsn(3)));
        assert_eq!(quorum_lsn(&[Lsn(1), Lsn(3), Lsn(2)], 2), Some(Lsn(2)));
        assert_eq!(quorum_lsn(&[Lsn(1)], 2), None);
    }
}
