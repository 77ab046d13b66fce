//! One server connection pool: the connections of one (node, user, database) on one worker.
//!
//! `pool → server`: bb8 owns opening ([`ServerManager`]), the size limit, waiting with a
//! timeout and closing; between transactions a connection is *parked* in the pool's own LIFO
//! stack ([`ServerPool::acquire`] and `release`), and a reaper task closes parked connections
//! left unused for the idle timeout.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use tandem_core::NodeAddr;

use super::connect::{self, ConnectError};
use super::server::ServerConn;
use super::{PoolKey, PoolSettings};
use crate::auth::ServerCredential;
use crate::server_tls::ServerTls;

/// Opens server connections for one pool (bb8's connection manager).
pub struct ServerManager {
    addr: NodeAddr,
    user: String,
    database: String,
    shared: Arc<ManagerShared>,
    connect_timeout: Duration,
    tls: Arc<ServerTls>,
    /// Connections are closed when given back instead of kept idle (see [`keeps_idle`]).
    close_on_release: bool,
}

/// Whether idle connections to `database` may be kept. Not to the template databases:
/// `CREATE DATABASE` (from template1 unless told otherwise) fails while anyone else is
/// connected to its template, also when it is run directly on the server.
pub fn keeps_idle(database: &str) -> bool {
    !matches!(database, "template0" | "template1")
}

/// Manager state the pool owner also reads and updates.
struct ManagerShared {
    /// Latest credential a client of this user proved; refreshed at each login.
    credential: RwLock<ServerCredential>,
    /// Connections opened over the pool's life.
    opened: AtomicU64,
}

impl ServerManager {
    async fn open(&self) -> Result<ServerConn, ConnectError> {
        let cred = self.shared.credential.read().map(|c| c.clone()).unwrap_or(ServerCredential::None);
        let params = [("application_name".to_owned(), "tandem".to_owned())];
        let startup =
            connect::connect(&self.addr, &self.user, &self.database, &params, &cred, self.connect_timeout, &self.tls)
                .await?;
        self.shared.opened.fetch_add(1, Ordering::Relaxed);
        Ok(ServerConn::new(self.addr.clone(), startup))
    }
}

impl bb8::ManageConnection for ServerManager {
    type Connection = ServerConn;
    type Error = ConnectError;

    async fn connect(&self) -> Result<ServerConn, ConnectError> {
        self.open().await
    }

    async fn is_valid(&self, _conn: &mut ServerConn) -> Result<(), ConnectError> {
        // Not called: test_on_check_out is off. A dead pooled connection shows
        // up as an I/O error on first use, which the session handles.
        Ok(())
    }

    fn has_broken(&self, conn: &mut ServerConn) -> bool {
        conn.broken || conn.over_statement_limit() || self.close_on_release
    }
}

/// A checked-out server connection; returns to its pool when dropped. Boxed: it is moved
/// in and out of the park and the session on every transaction, and the connection with
/// its buffers is a few hundred bytes.
pub type Checkout = Box<bb8::PooledConnection<'static, ServerManager>>;

/// Why no server connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    /// Opening a connection failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The pool stayed full for the whole wait.
    #[error("timed out waiting for a free server connection")]
    PoolTimeout,
}

/// Counters shown by `SHOW POOLS` / `SHOW STATS`.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Connections currently checked out by sessions.
    pub active: AtomicUsize,
    /// Sessions currently waiting for a connection.
    pub waiting: AtomicUsize,
    /// Check-outs served.
    pub checkouts: AtomicU64,
}

/// One pool with its identity and counters.
pub struct ServerPool {
    /// Which node, user and database.
    pub key: PoolKey,
    /// Where the node listens.
    pub addr: NodeAddr,
    pool: bb8::Pool<ServerManager>,
    /// Usage counters.
    pub stats: PoolStats,
    max_size: u32,
    shared: Arc<ManagerShared>,
    /// ParameterStatus values of the first login, greeted to later clients.
    params: std::sync::OnceLock<Arc<Vec<(String, String)>>>,
    /// Idle connections between transactions (see [`Parked`]).
    parked: Mutex<Parked>,
    /// Maintenance ticks so far; parked connections remember the tick they were parked at.
    tick: AtomicU64,
    /// The server's verdicts on clients' startup settings.
    pub settings_checks: crate::frontend::login_params::SettingsChecks,
    /// Given-back connections are closed, not parked (see [`keeps_idle`]).
    close_on_release: bool,
}

/// Connections that finished a transaction, kept checked out of bb8 for the
/// next one. A bb8 check-out and return (its queue, a timeout future, moving
/// the connection in and out) was a large share of the proxy's CPU per
/// transaction; a parked connection costs one uncontended lock each way.
/// bb8 still owns opening, the size limit, waiting with a timeout and closing.
#[derive(Default)]
struct Parked {
    /// LIFO stack, oldest first.
    conns: Vec<ParkedConn>,
    /// Sessions inside bb8's queue (they get released connections first).
    waiting: usize,
    /// Until then released connections are closed, not parked: a `DROP DATABASE` of the
    /// pool's database waits (up to 5 s in PostgreSQL) for its other sessions to end.
    close_until: Option<Instant>,
}

/// A connection waiting in [`Parked`].
struct ParkedConn {
    conn: Checkout,
    /// Maintenance tick it was parked at.
    tick: u64,
    /// Its server process, kept here so that finding a session's previous connection scans
    /// one small vector rather than every connection's memory.
    server_pid: i32,
}

/// How long after [`ServerPool::close_idle`] released connections are closed.
const CLOSE_WINDOW: Duration = Duration::from_secs(5);

/// Counts a session waiting in bb8's queue until it got a connection or gave up.
struct WaitingGuard<'a>(&'a ServerPool);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        let mut parked = self.0.lock_parked();
        parked.waiting = parked.waiting.saturating_sub(1);
    }
}

impl Parked {
    /// The parked connection to server process `previous` if there is one, else the most
    /// recently parked. Removal keeps the oldest-first order the reaper relies on.
    fn take(&mut self, previous: Option<i32>) -> Option<Checkout> {
        let found = previous.and_then(|pid| self.conns.iter().rposition(|p| p.server_pid == pid));
        let parked = match found {
            Some(i) => self.conns.remove(i),
            None => self.conns.pop()?,
        };
        Some(parked.conn)
    }
}

impl ServerPool {
    /// Checks out a connection: a parked one if any, else from bb8, opening
    /// one here if the pool may grow.
    ///
    /// `previous`: the server process the session used last. If that connection is parked,
    /// the session gets it back rather than the most recently parked one: with as many
    /// connections as busy clients, every client then keeps talking to one backend, as in
    /// session pooling. That backend has the client's statements prepared already and its
    /// memory is warm. (On the 2-core bench machine the TPS difference to plain LIFO is
    /// within the machine's noise; see bench/results.)
    pub async fn acquire(&self, previous: Option<i32>) -> Result<Checkout, AcquireError> {
        // The common case needs no waiting: a parked connection. The rest (bb8's
        // queue, opening a connection) is a large future, boxed so that it does
        // not make every caller's future large too.
        loop {
            let Some(conn) = self.lock_parked().take(previous) else { break };
            if conn.spoke_while_idle() {
                discard_dead(conn);
                continue;
            }
            self.stats.checkouts.fetch_add(1, Ordering::Relaxed);
            return Ok(conn);
        }
        Box::pin(self.acquire_waiting()).await
    }

    async fn acquire_waiting(&self) -> Result<Checkout, AcquireError> {
        loop {
            let conn = self.checkout().await?;
            if conn.spoke_while_idle() {
                discard_dead(conn);
                continue;
            }
            self.stats.checkouts.fetch_add(1, Ordering::Relaxed);
            return Ok(conn);
        }
    }

    /// A parked connection, or one from bb8.
    async fn checkout(&self) -> Result<Checkout, AcquireError> {
        {
            let mut parked = self.lock_parked();
            if let Some(conn) = parked.take(None) {
                return Ok(conn);
            }
            // Counted under the lock, so a release either sees this waiter (and
            // hands its connection to bb8, which wakes it) or parked it before.
            parked.waiting += 1;
        }
        let _waiting = WaitingGuard(self);
        let state = self.pool.state();
        if state.idle_connections == 0 && state.connections < self.max_size {
            let conn = self.pool.dedicated_connection().await?;
            // The pool may have filled meanwhile; then the new connection is
            // simply closed and we wait like everyone else.
            let _ = self.pool.add(conn);
        }
        self.stats.waiting.fetch_add(1, Ordering::Relaxed);
        let got = self.pool.get_owned().await;
        self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
        match got {
            Ok(c) => Ok(Box::new(c)),
            Err(bb8::RunError::User(e)) => Err(AcquireError::Connect(e)),
            Err(bb8::RunError::TimedOut) => Err(AcquireError::PoolTimeout),
        }
    }

    /// Gives a clean connection back after a transaction. It stays parked here
    /// for the next [`Self::acquire`] unless someone waits in bb8's queue (then
    /// bb8 hands it over) or it must be closed.
    pub fn release(&self, mut conn: Checkout) {
        if conn.broken || conn.over_statement_limit() || self.close_on_release {
            return; // bb8 closes it (`has_broken`)
        }
        let mut parked = self.lock_parked();
        if let Some(until) = parked.close_until {
            if Instant::now() < until {
                drop(parked);
                conn.broken = true;
                return;
            }
            parked.close_until = None;
        }
        if parked.waiting > 0 || parked.conns.len() >= self.max_size as usize {
            drop(parked);
            return; // dropping `conn` returns it to bb8
        }
        let tick = self.tick.load(Ordering::Relaxed);
        let server_pid = conn.cancel_key.pid;
        parked.conns.push(ParkedConn { conn, tick, server_pid });
    }

    /// Closes parked connections unused for `idle_ticks` maintenance ticks
    /// and starts a new tick (called periodically, see [`Pools::get`]).
    fn reap_parked(&self, idle_ticks: u64) {
        let now = self.tick.fetch_add(1, Ordering::Relaxed);
        let stale: Vec<Checkout> = {
            let mut parked = self.lock_parked();
            // Parked in LIFO order: the oldest are at the front.
            let keep_from = parked.conns.iter().position(|p| now.saturating_sub(p.tick) < idle_ticks);
            let end = keep_from.unwrap_or(parked.conns.len());
            parked.conns.drain(..end).map(|p| p.conn).collect()
        };
        for mut conn in stale {
            conn.broken = true;
        }
    }

    fn lock_parked(&self) -> MutexGuard<'_, Parked> {
        self.parked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes the pool's idle connections (parked, and idle in bb8): PostgreSQL refuses
    /// `DROP DATABASE` while any session is connected to the database, and a client that
    /// drops one must not be refused because of connections only the proxy keeps open.
    /// Connections released in the next [`CLOSE_WINDOW`] (sessions that just ended, still
    /// resetting their connection) are closed too.
    pub async fn close_idle(&self) {
        let parked: Vec<Checkout> = {
            let mut parked = self.lock_parked();
            parked.close_until = Some(Instant::now() + CLOSE_WINDOW);
            parked.conns.drain(..).map(|p| p.conn).collect()
        };
        for mut conn in parked {
            conn.broken = true;
        }
        for _ in 0..self.max_size {
            if self.pool.state().idle_connections == 0 {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(50), self.pool.get_owned()).await {
                Ok(Ok(mut conn)) => conn.broken = true, // dropped: bb8 closes it
                _ => break,
            }
        }
    }

    /// Records the credential of a client that just logged in as this pool's user.
    pub fn set_credential(&self, cred: &ServerCredential) {
        if let Ok(mut c) = self.shared.credential.write() {
            *c = cred.clone();
        }
    }

    /// Server parameters seen at the first successful login, if any.
    pub fn server_params(&self) -> Option<Arc<Vec<(String, String)>>> {
        self.params.get().cloned()
    }

    /// Keeps the server parameters of a successful login.
    pub fn remember_params(&self, params: Arc<Vec<(String, String)>>) {
        let _ = self.params.set(params);
    }

    /// (open connections, idle connections).
    pub fn sizes(&self) -> (u32, u32) {
        let s = self.pool.state();
        let parked = self.lock_parked().conns.len() as u32;
        (s.connections, s.idle_connections + parked)
    }

    /// Connections opened since the pool was created.
    pub fn opened(&self) -> u64 {
        self.shared.opened.load(Ordering::Relaxed)
    }
}

impl ServerPool {
    /// A new, empty pool of at most `max_size` connections to `addr` as `key.user` on
    /// `key.database`, logging in with `cred` until a client proves a newer one; its idle
    /// connections are reaped in the background for as long as the pool lives.
    pub fn new(
        key: &PoolKey,
        addr: &NodeAddr,
        cred: &ServerCredential,
        max_size: u32,
        settings: &PoolSettings,
    ) -> Arc<ServerPool> {
        let shared = Arc::new(ManagerShared { credential: RwLock::new(cred.clone()), opened: AtomicU64::new(0) });
        let manager = ServerManager {
            addr: addr.clone(),
            user: key.user.clone(),
            database: key.database.clone(),
            shared: shared.clone(),
            connect_timeout: settings.connect_timeout,
            tls: settings.tls.clone(),
            close_on_release: !keeps_idle(&key.database),
        };
        let pool = bb8::Pool::builder()
            .max_size(max_size)
            .min_idle(None)
            .test_on_check_out(false)
            .retry_connection(false)
            .connection_timeout(settings.wait_timeout)
            .idle_timeout(Some(settings.idle_timeout))
            .max_lifetime(None)
            .queue_strategy(bb8::QueueStrategy::Lifo)
            .build_unchecked(manager);
        let sp = Arc::new(ServerPool {
            key: key.clone(),
            addr: addr.clone(),
            pool,
            stats: PoolStats::default(),
            max_size,
            shared,
            params: std::sync::OnceLock::new(),
            parked: Mutex::new(Parked::default()),
            tick: AtomicU64::new(0),
            settings_checks: Default::default(),
            close_on_release: !keeps_idle(&key.database),
        });
        spawn_reaper(Arc::downgrade(&sp), settings.idle_timeout);
        sp
    }
}

/// Closes a connection whose server went away while it was idle (dropping the box hands it
/// back to bb8, which closes it because it is marked broken).
#[allow(clippy::boxed_local)]
fn discard_dead(mut conn: Checkout) {
    tracing::debug!(server = %conn.cancel_key.addr, "pooled server connection closed while idle; discarded");
    conn.broken = true;
}

/// Ticks per idle timeout: parked connections are closed after 4 to 5 ticks unused.
const REAP_TICKS: u64 = 4;

/// Closes parked connections of `pool` that stayed unused for `idle_timeout`;
/// ends with the pool (it holds only a weak reference).
fn spawn_reaper(pool: Weak<ServerPool>, idle_timeout: Duration) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
    let period = (idle_timeout / REAP_TICKS as u32).max(Duration::from_millis(100));
    rt.spawn(async move {
        let mut every = tokio::time::interval(period);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            let Some(pool) = pool.upgrade() else { return };
            pool.reap_parked(REAP_TICKS);
        }
    });
}
