//! Tracked wake-ups for the session's poll (see `Session::poll_io`): a poll site whose
//! last poll was `Pending` is not polled again until its own waker ran.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

/// Wakes the session's task and notes that it did so.
struct FlagWaker {
    fired: AtomicBool,
    task: Waker,
}

impl Wake for FlagWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

/// One poll site (a socket's read side, the shutdown future) whose wake-ups are tracked: a
/// `Pending` poll leaves [`WakeWatch::waker`] registered, and until that waker runs nothing
/// changed there, so polling again (a lock in tokio's bookkeeping) is skipped.
pub(super) struct WakeWatch {
    flag: Arc<FlagWaker>,
    /// `flag` as a waker, built once.
    waker: Waker,
    /// The last poll returned `Pending` with `waker`.
    armed: bool,
}

impl WakeWatch {
    pub(super) fn new(cx: &Context<'_>) -> WakeWatch {
        let flag = Arc::new(FlagWaker { fired: AtomicBool::new(false), task: cx.waker().clone() });
        WakeWatch { waker: Waker::from(Arc::clone(&flag)), flag, armed: false }
    }

    /// Runs `poll` with the watch's waker, unless the last poll was `Pending` and its
    /// waker has not run since (then `Pending` without polling).
    #[inline]
    pub(super) fn poll<T>(&mut self, poll: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
        if self.armed && !self.flag.fired.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let polled = poll(&mut Context::from_waker(&self.waker));
        self.armed = polled.is_pending();
        polled
    }
}
