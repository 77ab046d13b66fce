//! Query cancellation across the proxy.
//!
//! Clients get a BackendKeyData made up by the proxy (under session pooling its pid is the
//! client's own backend's, the secret still the proxy's). A CancelRequest arrives
//! on a fresh connection carrying that key; the [`CancelRegistry`] finds the
//! client's session, and if the session has a server connection busy right
//! now, the proxy sends a CancelRequest with *that server's* key to that
//! server. Sessions keep their entry current through a [`CancelHandle`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use rand::Rng;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::pool::CancelKey;

const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// Lowest process id handed to clients: above `PID_MAX_LIMIT` (2^22) on Linux.
pub const FIRST_CLIENT_PID: i32 = 1 << 22;

#[derive(Debug)]
struct Entry {
    secret: i32,
    target: Arc<Target>,
}

/// Where a session's cancel requests go.
#[derive(Debug, Default)]
struct Target {
    /// The server connection the session used last.
    key: Mutex<Option<Arc<CancelKey>>>,
    /// Whether that connection runs the session's request now. Set and cleared per request
    /// with a plain store; `key` changes (under its lock) only when the connection does.
    armed: AtomicBool,
}

impl Target {
    /// The key to cancel with, if a request runs now.
    fn current(&self) -> Option<Arc<CancelKey>> {
        if !self.armed.load(Ordering::Acquire) {
            return None;
        }
        self.key.lock().ok().and_then(|k| k.clone())
    }
}

/// All live client cancel keys, and which client used each server backend last.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<i32, Entry>>,
    /// Client pid by server and backend pid, set when a session starts to use a connection
    /// another session used before (see [`CancelRegistry::note_backend_user`]).
    backend_users: Mutex<HashMap<tandem_core::NodeAddr, HashMap<i32, i32>>>,
}

/// Backends remembered per server in [`CancelRegistry::backend_users`] before it starts over
/// (closed connections leave entries behind).
const MAX_BACKEND_USERS: usize = 16 * 1024;

/// A session's entry in the registry; removed on drop.
#[derive(Debug)]
pub struct CancelHandle {
    /// Process id handed to the client.
    pub pid: i32,
    /// Secret handed to the client.
    pub secret: i32,
    target: Arc<Target>,
    /// The key last stored in `target` (compared by pointer, so an unchanged connection
    /// costs no lock).
    last: Option<Arc<CancelKey>>,
    registry: Weak<CancelRegistry>,
}

impl CancelHandle {
    /// Points cancellation at the server connection now in use (or none).
    pub fn set_target(&mut self, key: Option<&Arc<CancelKey>>) {
        let Some(key) = key else {
            self.target.armed.store(false, Ordering::Release);
            return;
        };
        if !self.last.as_ref().is_some_and(|last| Arc::ptr_eq(last, key)) {
            if let Ok(mut k) = self.target.key.lock() {
                *k = Some(key.clone());
            }
            self.last = Some(key.clone());
        }
        self.target.armed.store(true, Ordering::Release);
    }
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        if let Some(reg) = self.registry.upgrade() {
            if let Ok(mut map) = reg.map.lock() {
                map.remove(&self.pid);
            }
        }
    }
}

impl CancelRegistry {
    /// Issues a fresh key for a new session.
    pub fn register(self: &Arc<Self>) -> CancelHandle {
        self.register_as(None)
    }

    /// Issues a key for a new session with process id `pid` if given and free (session
    /// pooling gives the client its backend's own pid), else a fresh one.
    pub fn register_as(self: &Arc<Self>, pid: Option<i32>) -> CancelHandle {
        let mut rng = rand::thread_rng();
        let target = Arc::new(Target::default());
        let mut map = match self.map.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let mut wanted = pid.filter(|p| *p > 0);
        loop {
            // Made-up pids lie above every real process id (Linux caps pid_max at 2^22): a
            // client that passes its pid to pg_terminate_backend() or pg_cancel_backend() must
            // not hit some other backend.
            let pid = wanted.take().unwrap_or_else(|| rng.gen_range(FIRST_CLIENT_PID..i32::MAX));
            if map.contains_key(&pid) {
                continue;
            }
            let secret = rng.gen::<i32>();
            map.insert(pid, Entry { secret, target: target.clone() });
            return CancelHandle { pid, secret, target, last: None, registry: Arc::downgrade(self) };
        }
    }

    /// Records that the client with `client_pid` now uses the backend of `key`. Sessions
    /// call this when the connection they attach was last used by someone else, so with
    /// connections that stay with their client it is not called per transaction.
    pub fn note_backend_user(&self, key: &CancelKey, client_pid: i32) {
        let Ok(mut users) = self.backend_users.lock() else { return };
        // The server's map is found without building a key (this runs as connections change
        // hands, which under transaction pooling can be every transaction).
        let backends = match users.get_mut(&key.addr) {
            Some(backends) => backends,
            None => users.entry(key.addr.clone()).or_default(),
        };
        if backends.len() >= MAX_BACKEND_USERS {
            backends.clear();
        }
        backends.insert(key.pid, client_pid);
    }

    /// The pid given to the client whose session used server backend `pid` at `addr` last,
    /// if any. A NotificationResponse names the sending backend, and clients compare that
    /// with the pid they were given. PostgreSQL delivers a notification when the sender's
    /// transaction commits; under transaction pooling the sender has usually released the
    /// backend by the time the listener's session reads it, and it may have disconnected
    /// altogether (that pid is then what PostgreSQL would report too: a process that
    /// ended). Only a transaction of another client on the same backend in between would
    /// make the answer that client.
    pub fn client_pid_of(&self, addr: &tandem_core::NodeAddr, pid: i32) -> Option<i32> {
        let users = self.backend_users.lock().ok()?;
        users.get(addr)?.get(&pid).copied()
    }

    /// Handles a client's CancelRequest; unknown or wrong keys are ignored, as PostgreSQL does.
    pub async fn cancel(&self, pid: i32, secret: &[u8]) {
        let Ok(secret) = <[u8; 4]>::try_from(secret) else { return };
        let secret = i32::from_be_bytes(secret);
        let target = {
            let Ok(map) = self.map.lock() else { return };
            match map.get(&pid) {
                Some(e) if e.secret == secret => e.target.current(),
                _ => None,
            }
        };
        if let Some(key) = target {
            if let Err(e) = send_cancel(&key).await {
                tracing::warn!(server = %key.addr, error = %e, "could not forward cancel request");
            }
        }
    }
}

/// How long [`send_cancel`] waits for the server to take a cancel request.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends a CancelRequest for `key` to its server and waits until the server closes the
/// connection: PostgreSQL signals the backend before it closes, so when this returns the
/// cancel has landed. The client's own cancel connection is closed only after that, as
/// PostgreSQL does; drivers (asyncpg) wait for that close before they send the next query,
/// which a cancel still in flight would otherwise hit.
pub async fn send_cancel(key: &CancelKey) -> std::io::Result<()> {
    let work = async {
        let mut stream = TcpStream::connect((key.addr.host.as_str(), key.addr.port)).await?;
        let mut pkt = Vec::with_capacity(16);
        pkt.extend_from_slice(&16u32.to_be_bytes());
        pkt.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
        pkt.extend_from_slice(&key.pid.to_be_bytes());
        pkt.extend_from_slice(&key.secret.to_be_bytes());
        stream.write_all(&pkt).await?;
        let mut sink = [0u8; 64];
        while stream.read(&mut sink).await? != 0 {}
        Ok(())
    };
    tokio::time::timeout(CANCEL_TIMEOUT, work).await.unwrap_or_else(|_| {
        Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "server did not take the cancel request"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_removed_on_drop() {
        let reg = Arc::new(CancelRegistry::default());
        let a = reg.register();
        let b = reg.register();
        assert_ne!(a.pid, b.pid);
        drop(a);
        assert_eq!(reg.map.lock().unwrap().len(), 1);
        let real = reg.register_as(Some(4242));
        assert_eq!(real.pid, 4242, "a backend's own pid when free");
        let taken = reg.register_as(Some(4242));
        assert!(taken.pid >= FIRST_CLIENT_PID, "a made-up one when not");
    }

    #[tokio::test]
    async fn forwards_to_the_current_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let reg = Arc::new(CancelRegistry::default());
        let mut h = reg.register();
        let key = Arc::new(CancelKey { addr: format!("127.0.0.1:{port}").parse().unwrap(), pid: 42, secret: 7 });
        h.set_target(Some(&key));
        h.set_target(None);
        h.set_target(Some(&key));
        let (closed_tx, mut closed_rx) = tokio::sync::oneshot::channel();
        let accept = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 16];
            s.read_exact(&mut buf).await.unwrap();
            // Like the postmaster: signal the backend, then close.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = closed_tx.send(());
            buf
        });
        reg.cancel(h.pid, &h.secret.to_be_bytes()).await;
        assert!(closed_rx.try_recv().is_ok(), "cancel() returned before the server closed the connection");
        assert!(h.pid >= FIRST_CLIENT_PID, "client pids stay out of the real pid range");
        let got = accept.await.unwrap();
        assert_eq!(&got[8..12], &42i32.to_be_bytes());
        assert_eq!(&got[12..16], &7i32.to_be_bytes());
    }

    #[test]
    fn notifications_name_the_backends_last_client() {
        let reg = Arc::new(CancelRegistry::default());
        let key = CancelKey { addr: "127.0.0.1:5432".parse().unwrap(), pid: 42, secret: 7 };
        let other = CancelKey { addr: "127.0.0.1:5433".parse().unwrap(), pid: 42, secret: 7 };
        assert_eq!(reg.client_pid_of(&key.addr, 42), None);
        reg.note_backend_user(&key, 5_000_001);
        reg.note_backend_user(&other, 5_000_003);
        reg.note_backend_user(&key, 5_000_002);
        assert_eq!(reg.client_pid_of(&key.addr, 42), Some(5_000_002), "the last user");
        assert_eq!(reg.client_pid_of(&other.addr, 42), Some(5_000_003), "backends are per server");
        assert_eq!(reg.client_pid_of(&key.addr, 43), None);
        for pid in 0..MAX_BACKEND_USERS as i32 {
            reg.note_backend_user(&CancelKey { pid: 100 + pid, ..key.clone() }, 1);
        }
        assert!(reg.backend_users.lock().unwrap()[&key.addr].len() <= MAX_BACKEND_USERS, "bounded");
    }
}
