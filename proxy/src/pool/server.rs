//! One connection from the proxy to a PostgreSQL server.
//!
//! `pool → server`: a [`ServerConn`] is what bb8 keeps in a pool. Besides the
//! socket it remembers what the session layer has done to the server-side
//! session, so that a connection can be handed to another client safely: which
//! prepared statements exist on it (by Tandem's content-derived names), which
//! session parameters were last applied, and whether it must be thrown away.

use std::mem::MaybeUninit;
use std::sync::Arc;
use std::time::Instant;

use super::connect::ServerStartup;
use crate::stream::ServerStream;
use bytes::BytesMut;
use tandem_core::NodeAddr;
use tokio::io::Interest;

/// Prepared statements one server connection may hold before it is retired
/// (closed at its next release), bounding server-side memory.
pub const MAX_PREPARED_PER_CONN: usize = 2000;

/// Where a server connection points and how to cancel what it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CancelKey {
    /// The server's address.
    pub addr: NodeAddr,
    /// Server backend process id.
    pub pid: i32,
    /// Server cancel secret.
    pub secret: i32,
}

/// A logged-in server connection.
pub struct ServerConn {
    /// The socket, plain or TLS.
    pub stream: ServerStream,
    /// Bytes read from the server and not yet handled.
    pub rbuf: BytesMut,
    /// How to cancel the query this connection runs.
    pub cancel_key: Arc<CancelKey>,
    /// ParameterStatus values the server sent at login.
    pub params: Arc<Vec<(String, String)>>,
    /// Hashes of the Tandem-named prepared statements that exist on this connection.
    pub prepared: foldhash::HashSet<u64>,
    /// Signature of the session parameters applied last (0: server defaults).
    pub params_signature: u64,
    /// Set when the connection's state is unknown or unusable; bb8 then drops it.
    pub broken: bool,
    /// A client's DEALLOCATE ALL / DISCARD ALL was sent and `prepared` emptied, but its
    /// CommandComplete has not arrived: if the request ends without it, the statements on
    /// the server are unknown and the connection is marked `broken`.
    pub statements_unsure: bool,
    /// A statement on this connection no longer matches the schema (its result type
    /// changed): the next unit deallocates them all first.
    pub statements_stale: bool,
    /// When the connection was opened.
    pub created: Instant,
    /// The pid given to the client whose session used this connection last (0: none yet).
    /// Notifications name the backend that sent them; see [`crate::cancel::CancelRegistry`].
    pub last_client: i32,
}

impl ServerConn {
    /// Wraps a freshly logged-in connection.
    pub fn new(addr: NodeAddr, startup: ServerStartup) -> ServerConn {
        ServerConn {
            stream: startup.stream,
            rbuf: startup.leftover,
            cancel_key: Arc::new(CancelKey { addr, pid: startup.backend_pid, secret: startup.backend_secret }),
            params: Arc::new(startup.params),
            prepared: foldhash::HashSet::default(),
            params_signature: 0,
            broken: false,
            statements_unsure: false,
            statements_stale: false,
            created: Instant::now(),
            last_client: 0,
        }
    }

    /// Whether the server spoke or hung up while the connection sat idle in the
    /// pool: an idle PostgreSQL backend only does that on its way out (a FATAL
    /// such as 57P01 when it is terminated or its postmaster died, then EOF), so
    /// such a connection must not be handed to a client, who would get that
    /// FATAL as the answer to its query. Costs no system call unless the
    /// runtime has seen the socket become readable.
    pub fn spoke_while_idle(&self) -> bool {
        if !self.rbuf.is_empty() {
            return true;
        }
        // `try_io` runs the peek only if the runtime saw the socket become readable, and a
        // WouldBlock from it clears that readiness (it can be left over from the last
        // answer). Unlike a poll, it registers no waker.
        let tcp = self.stream.tcp();
        let peeked = tcp.try_io(Interest::READABLE, || {
            let mut byte = [MaybeUninit::<u8>::uninit()];
            socket2::SockRef::from(tcp).peek(&mut byte)
        });
        peeked.is_ok()
    }

    /// Whether the connection holds so many prepared statements that it should be retired.
    pub fn over_statement_limit(&self) -> bool {
        self.prepared.len() > MAX_PREPARED_PER_CONN
    }
}

/// Server-side name of a Tandem-managed prepared statement.
///
/// Derived from the statement's text and parameter types, so identical
/// statements of different clients share one server-side statement.
pub fn statement_name(hash: u64) -> String {
    format!("tandem_{hash:016x}")
}
