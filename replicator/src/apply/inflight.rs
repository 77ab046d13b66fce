//! Requests in flight on the writer session, answered in the order sent.
//!
//! Place in the data flow: the applier's send queue towards the replica.
//! tokio-postgres pipelines every request queued on a connection: a request
//! is handed to the connection task the first time its future is polled, and
//! answers come back in request order. [`InFlight::push`] polls each new
//! future once, right away, so requests go out in exactly the order they were
//! pushed and the applier can keep thousands in flight without waiting for a
//! single round trip; [`InFlight::next`] hands back the oldest answer.
//!
//! Only the oldest future is polled while waiting. That is enough: the
//! connection delivers answers in order, and each request has its own small
//! buffer, so the connection never needs a later future to be polled before
//! the oldest one can complete. (A caller that awaits *another* request on the
//! same client must first take every answer out of here, see the applier.)

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};

/// The answer to one request: rows affected, or the server's error.
pub type Reply = Result<u64, tokio_postgres::Error>;

/// A request's future; `'static` so that it can wait in the queue.
pub type RequestFuture = Pin<Box<dyn Future<Output = Reply> + Send>>;

enum Slot {
    Waiting(RequestFuture),
    Answered(Reply),
}

/// Requests sent and not yet looked at, oldest first, each with a tag `T`
/// saying what it was.
pub struct InFlight<T> {
    queue: VecDeque<(Slot, T)>,
}

impl<T> Default for InFlight<T> {
    fn default() -> Self {
        InFlight { queue: VecDeque::new() }
    }
}

impl<T> InFlight<T> {
    /// Sends a request now (its future's first poll queues it on the
    /// connection) and keeps it for [`Self::next`].
    pub fn push(&mut self, mut request: RequestFuture, tag: T) {
        // A no-op waker is fine here: this poll only hands the request to the
        // connection; `next` polls again with the real waker before waiting.
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        let slot = match request.as_mut().poll(&mut cx) {
            Poll::Ready(reply) => Slot::Answered(reply),
            Poll::Pending => Slot::Waiting(request),
        };
        self.queue.push_back((slot, tag));
    }

    /// Queues a tag with no request (answered `Ok(0)` in its turn), so that
    /// something happens in order with the requests around it.
    pub fn push_marker(&mut self, tag: T) {
        self.queue.push_back((Slot::Answered(Ok(0)), tag));
    }

    /// Requests (and markers) not yet taken out.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The oldest answer and its tag, waiting for it if needed; `None` when
    /// nothing is in flight. Cancel-safe: a request stays queued until its
    /// answer is returned.
    pub async fn next(&mut self) -> Option<(Reply, T)> {
        poll_fn(|cx| {
            let Some((slot, _)) = self.queue.front_mut() else {
                return Poll::Ready(None);
            };
            if let Slot::Waiting(fut) = slot {
                match fut.as_mut().poll(cx) {
                    Poll::Ready(reply) => *slot = Slot::Answered(reply),
                    Poll::Pending => return Poll::Pending,
                }
            }
            match self.queue.pop_front() {
                Some((Slot::Answered(reply), tag)) => Poll::Ready(Some((reply, tag))),
                // Just made `Answered` above; unreachable, but no panic on it.
                Some((Slot::Waiting(_), _)) | None => Poll::Ready(None),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_come_back_in_push_order() {
        let mut q = InFlight::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<u64>();
        q.push(Box::pin(async move { Ok(rx.await.unwrap_or(0)) }), "slow");
        q.push_marker("marker");
        q.push(Box::pin(async { Ok(7) }), "ready");
        assert_eq!(q.len(), 3);
        tx.send(5).unwrap();
        let mut got = Vec::new();
        while let Some((reply, tag)) = q.next().await {
            got.push((reply.unwrap(), tag));
        }
        assert_eq!(got, vec![(5, "slow"), (0, "marker"), (7, "ready")]);
        assert!(q.is_empty());
    }
}
