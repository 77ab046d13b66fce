//! Worker threads: where `client → frontend` runs.
//!
//! Every transaction passes through the proxy twice (request in, response out), so one
//! event loop is a serial point all clients queue at; when PostgreSQL and the clients
//! share the cores, that loop also waits for a core each time it wakes. The proxy
//! therefore runs one event loop per worker thread (a tokio current-thread runtime each,
//! with none of the work-stealing runtime's cross-thread wake-ups). A client lives on one
//! worker from accept to close, and uses that worker's share of each pool
//! ([`crate::pool::Pools::get`]), so its socket and its server connections are polled by
//! the same loop.
//!
//! The accept loop runs on worker 0 (the runtime [`crate::run`] was called on) and gives
//! each new client to the worker serving the fewest: as long as there are no more clients
//! than `pool_size`, no worker has more clients than its share of a pool (what session
//! pooling needs to never make a client wait while another worker has a connection free).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::context::ProxyContext;

/// A client handed to another worker: its socket, taken off the accepting loop, and its
/// count on that worker (taken at once, so that a burst of connections spreads).
type Handoff = (std::net::TcpStream, SocketAddr, LoadGuard);

/// Clients per worker, index 0 being the accepting runtime itself.
#[derive(Debug)]
pub struct WorkerLoad(Box<[AtomicUsize]>);

impl WorkerLoad {
    fn new(workers: usize) -> Arc<WorkerLoad> {
        Arc::new(WorkerLoad((0..workers.max(1)).map(|_| AtomicUsize::new(0)).collect()))
    }

    /// The worker serving the fewest clients (the first of equals).
    fn least(&self) -> usize {
        let mut best = 0;
        for (i, n) in self.0.iter().enumerate() {
            if n.load(Ordering::Relaxed) < self.0[best].load(Ordering::Relaxed) {
                best = i;
            }
        }
        best
    }

    /// Counts a client on `worker` until the returned guard drops.
    pub fn enter(self: &Arc<Self>, worker: usize) -> LoadGuard {
        let worker = worker % self.0.len();
        self.0[worker].fetch_add(1, Ordering::Relaxed);
        LoadGuard { load: self.clone(), worker }
    }
}

/// One client counted on its worker (see [`WorkerLoad::enter`]).
#[derive(Debug)]
pub struct LoadGuard {
    load: Arc<WorkerLoad>,
    worker: usize,
}

impl LoadGuard {
    /// The worker the client is counted on.
    pub fn worker(&self) -> usize {
        self.worker
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.load.0[self.worker].fetch_sub(1, Ordering::Relaxed);
    }
}

/// The worker threads besides the accepting runtime.
pub struct Workers {
    load: Arc<WorkerLoad>,
    /// Hand-off queues of workers 1.. (`None`: that thread could not start).
    queues: Vec<Option<mpsc::UnboundedSender<Handoff>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Starts `count - 1` worker threads (worker 0 is the caller's runtime). A thread that
    /// cannot start is left out and its clients are served by worker 0.
    pub fn start(ctx: &Arc<ProxyContext>, count: usize, drain: Duration) -> Workers {
        let load = WorkerLoad::new(count);
        let mut queues = Vec::new();
        let mut threads = Vec::new();
        for index in 1..count.max(1) {
            let (tx, rx) = mpsc::unbounded_channel();
            let ctx = ctx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("tandem-worker-{index}"))
                .spawn(move || worker_main(ctx, index, rx, drain));
            match spawned {
                Ok(handle) => {
                    queues.push(Some(tx));
                    threads.push(handle);
                }
                Err(e) => {
                    tracing::warn!(worker = index, error = %e, "cannot start worker thread");
                    queues.push(None);
                }
            }
        }
        Workers { load, queues, threads }
    }

    /// Serves a newly accepted client on the least busy worker; on worker 0 (this
    /// runtime), or when the chosen worker is gone, it runs in `tracker`.
    pub fn dispatch(&self, ctx: &Arc<ProxyContext>, tcp: TcpStream, peer: SocketAddr, tracker: &TaskTracker) {
        let worker = self.load.least();
        let queue = worker.checked_sub(1).and_then(|i| self.queues.get(i)).and_then(Option::as_ref);
        let tcp = match queue {
            None => tcp,
            Some(queue) => match self.hand_off(queue, worker, tcp, peer) {
                Ok(()) => return,
                Err(Some(tcp)) => tcp,
                Err(None) => return,
            },
        };
        self.serve_here(ctx, tcp, peer, tracker)
    }

    /// Moves `tcp` to `worker`'s queue. `Err(Some)`: the worker is gone, the socket is
    /// back on this runtime; `Err(None)`: the socket was lost (logged).
    fn hand_off(
        &self,
        queue: &mpsc::UnboundedSender<Handoff>,
        worker: usize,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> Result<(), Option<TcpStream>> {
        let lost = |e: std::io::Error| {
            tracing::warn!(%peer, error = %e, "client socket lost in hand-off");
            None
        };
        // Off this runtime's poller, so that the worker's can take it.
        let std = tcp.into_std().map_err(&lost)?;
        match queue.send((std, peer, self.load.enter(worker))) {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendError((std, _, _))) => Err(Some(TcpStream::from_std(std).map_err(lost)?)),
        }
    }

    fn serve_here(&self, ctx: &Arc<ProxyContext>, tcp: TcpStream, peer: SocketAddr, tracker: &TaskTracker) {
        tracker.spawn(super::listener::serve(ctx.clone(), tcp, peer, self.load.enter(0)));
    }

    /// Closes the hand-off queues and waits for the worker threads, which finish once
    /// their clients are gone (each gives its sessions `drain` after shutdown).
    pub async fn join(self) {
        drop(self.queues);
        for handle in self.threads {
            if !matches!(tokio::task::spawn_blocking(move || handle.join()).await, Ok(Ok(()))) {
                tracing::warn!("a worker thread panicked");
            }
        }
    }
}

/// A worker thread: serves the clients handed to it until the queue closes, then gives
/// them `drain` to finish.
fn worker_main(ctx: Arc<ProxyContext>, index: usize, mut queue: mpsc::UnboundedReceiver<Handoff>, drain: Duration) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            // Dropping the queue makes `dispatch` serve this worker's clients on worker 0.
            tracing::error!(worker = index, error = %e, "cannot start a worker's runtime");
            return;
        }
    };
    runtime.block_on(async move {
        let tracker = TaskTracker::new();
        while let Some((std, peer, counted)) = queue.recv().await {
            match TcpStream::from_std(std) {
                Ok(tcp) => {
                    tracker.spawn(super::listener::serve(ctx.clone(), tcp, peer, counted));
                }
                Err(e) => tracing::warn!(%peer, error = %e, "client socket lost in hand-off"),
            }
        }
        tracker.close();
        if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
            tracing::warn!(worker = index, "shutdown timeout: closing remaining sessions");
        }
    });
}
