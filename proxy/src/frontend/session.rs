//! One client session after login: the proxy's data path.
//!
//! `frontend → router → pool → server`: a [`Session`] reads the client's
//! messages, asks the router where each unit of work goes, checks out a server
//! connection from that node's pool, forwards the client's bytes, and relays
//! the server's answers back. All four directions (client read, client write,
//! server read, server write) are driven from one `select!` loop with bounded
//! buffers, so a client that pipelines without reading, or a server that
//! streams a large result, never deadlocks the session and never makes it
//! buffer without limit.
//!
//! The client-message side lives in [`super::client_side`], the
//! server-message side in [`super::server_side`].

use std::io;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use super::pipeline::Pipeline;
use super::state::{SessionParams, Statements};
use crate::auth::ServerCredential;
use crate::cancel::CancelHandle;
use crate::config::PoolMode;
use crate::context::{ClientInfo, ClientState, ProxyContext};
use crate::gate::Busy;
use crate::pool::{Checkout, ServerPool};
use crate::protocol::build::{self, sqlstate, Severity};
use crate::protocol::fields::TxStatus;
use crate::protocol::Frame;
use crate::router::classify::{Route, SessionEffect};
use crate::router::{InFlight, Node, ReadFloor};

/// Stop reading from one side while this much is queued for the other.
pub(super) const HIGH_WATER: usize = 256 * 1024;
/// Largest server message accepted (PostgreSQL's own limit is 1 GiB).
pub(super) const MAX_SERVER_MESSAGE: usize = 1 << 30;
/// Client frames kept for re-sending a read to another replica.
pub(super) const MAX_REPLAY_BYTES: usize = 1 << 20;

/// A server connection in use by this session.
pub(super) struct Attached {
    pub conn: Checkout,
    pub node: Arc<Node>,
    pub inflight: Option<InFlight>,
}

/// Why a session ended.
#[derive(Debug)]
pub(super) enum End {
    /// The client sent Terminate or closed its socket.
    ClientGone,
    /// The session ended with an error already queued for the client.
    Fatal,
}

/// Everything one client session knows.
pub struct Session {
    pub(super) ctx: Arc<ProxyContext>,
    pub(super) info: Arc<ClientInfo>,
    pub(super) user: String,
    pub(super) database: String,
    pub(super) cred: ServerCredential,
    pub(super) cancel: CancelHandle,
    pub(super) mode: PoolMode,
    pub(super) params: SessionParams,
    pub(super) statements: Statements,
    pub(super) floor: ReadFloor,
    pub(super) active: Option<Attached>,
    /// Pools this session has used, by node.
    pub(super) pools: Vec<(Arc<Node>, Arc<ServerPool>)>,
    /// Session mode: server connections kept for this client but not in use now.
    pub(super) held: Vec<Attached>,
    pub(super) pipeline: Pipeline,
    pub(super) tx: TxStatus,
    pub(super) pinned: bool,
    /// Session effects of the current transaction, applied when it commits.
    pub(super) pending: Vec<SessionEffect>,
    pub(super) unit_error: bool,
    pub(super) aborted: bool,
    pub(super) rolled_back: bool,
    pub(super) unit_wrote: bool,
    pub(super) unit_started: Option<Instant>,
    /// Client frames of the outstanding units, for retrying a read elsewhere.
    pub(super) replay: Vec<Frame>,
    pub(super) replay_bytes: usize,
    /// Some response of the outstanding units already went to the client.
    pub(super) forwarded: bool,
    /// After a failed unit: drop client messages up to the next Sync.
    pub(super) skip_until_sync: bool,
    pub(super) busy: Option<Busy>,
    pub(super) cin: BytesMut,
    pub(super) cout: BytesMut,
    pub(super) sout: BytesMut,
    pub(super) due: BytesMut,
    /// Complete client messages are waiting because the outgoing buffers are full.
    pub(super) client_backlog: bool,
    pub(super) closing: bool,
}

enum Io {
    ClientRead(io::Result<usize>),
    ClientWrote(io::Result<usize>),
    ServerRead(io::Result<usize>),
    ServerWrote(io::Result<usize>),
    Shutdown,
}

impl Session {
    /// A session for a logged-in client.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ctx: Arc<ProxyContext>,
        info: Arc<ClientInfo>,
        user: String,
        database: String,
        cred: ServerCredential,
        cancel: CancelHandle,
        params: SessionParams,
        cin: BytesMut,
    ) -> Session {
        let mode = ctx.cfg.pool_mode;
        Session {
            ctx,
            info,
            user,
            database,
            cred,
            cancel,
            mode,
            params,
            statements: Statements::default(),
            floor: ReadFloor::default(),
            active: None,
            pools: Vec::new(),
            held: Vec::new(),
            pipeline: Pipeline::default(),
            tx: TxStatus::Idle,
            pinned: false,
            pending: Vec::new(),
            unit_error: false,
            aborted: false,
            rolled_back: false,
            unit_wrote: false,
            unit_started: None,
            replay: Vec::new(),
            replay_bytes: 0,
            forwarded: false,
            skip_until_sync: false,
            busy: None,
            cin,
            cout: BytesMut::new(),
            sout: BytesMut::new(),
            due: BytesMut::new(),
            client_backlog: false,
            closing: false,
        }
    }

    /// Runs the session until the client leaves, then cleans up its server connections.
    pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(mut self, stream: S) {
        let (mut rd, mut wr) = tokio::io::split(stream);
        self.info.set_state(ClientState::Idle);
        let end = self.main_loop(&mut rd, &mut wr).await;
        if !self.cout.is_empty() {
            let _ = tokio::time::timeout(self.ctx.cfg.connect_timeout(), wr.write_all(&self.cout)).await;
        }
        let _ = wr.shutdown().await;
        tracing::debug!(?end, "client session ended");
        self.release_all().await;
    }

    async fn main_loop<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        rd: &mut ReadHalf<S>,
        wr: &mut WriteHalf<S>,
    ) -> End {
        loop {
            if self.closing && self.active.is_none() && self.tx == TxStatus::Idle {
                build::error(&mut self.cout, Severity::Fatal, sqlstate::ADMIN_SHUTDOWN, "the proxy is shutting down");
                return End::Fatal;
            }
            if actionable(&self.cin, self.ctx.cfg.max_message_size) && !self.client_blocked() {
                if let Err(end) = self.process_client().await {
                    return end;
                }
                continue;
            }
            match self.next_io(rd, wr).await {
                Io::ClientRead(Ok(0)) | Io::ClientRead(Err(_)) | Io::ClientWrote(Err(_)) => return End::ClientGone,
                Io::ClientRead(Ok(_)) => {}
                Io::ClientWrote(Ok(_)) => {}
                Io::ServerRead(Ok(0)) | Io::ServerRead(Err(_)) | Io::ServerWrote(Err(_)) => {
                    if let Err(end) = self.server_lost().await {
                        return end;
                    }
                }
                Io::ServerRead(Ok(_)) => {
                    if let Err(end) = self.process_server().await {
                        return end;
                    }
                }
                Io::ServerWrote(Ok(_)) => {}
                Io::Shutdown => self.closing = true,
            }
        }
    }

    /// Whether client messages must wait for the outgoing buffers to drain.
    fn client_blocked(&self) -> bool {
        self.sout.len() >= HIGH_WATER || self.cout.len() >= HIGH_WATER
    }

    async fn next_io<S: AsyncRead + AsyncWrite + Unpin>(&mut self, rd: &mut ReadHalf<S>, wr: &mut WriteHalf<S>) -> Io {
        let read_client = !self.client_backlog && !self.client_blocked();
        let read_server = self.cout.len() < HIGH_WATER;
        let shutdown = self.ctx.shutdown.clone();
        let watch_shutdown = !self.closing;
        let (cin, cout, sout) = (&mut self.cin, &mut self.cout, &mut self.sout);
        match self.active.as_mut() {
            Some(a) => {
                let conn = &mut *a.conn;
                let (mut srd, mut swr) = conn.stream.split();
                let rbuf = &mut conn.rbuf;
                tokio::select! {
                    r = rd.read_buf(cin), if read_client => Io::ClientRead(r),
                    r = wr.write_buf(cout), if !cout.is_empty() => Io::ClientWrote(r),
                    r = srd.read_buf(rbuf), if read_server => Io::ServerRead(r),
                    r = swr.write_buf(sout), if !sout.is_empty() => Io::ServerWrote(r),
                    _ = shutdown.cancelled(), if watch_shutdown => Io::Shutdown,
                }
            }
            None => {
                tokio::select! {
                    r = rd.read_buf(cin), if read_client => Io::ClientRead(r),
                    r = wr.write_buf(cout), if !cout.is_empty() => Io::ClientWrote(r),
                    _ = shutdown.cancelled(), if watch_shutdown => Io::Shutdown,
                }
            }
        }
    }

    /// Queues an ErrorResponse for the client.
    pub(super) fn client_error(&mut self, severity: Severity, code: &str, message: &str) {
        build::error(&mut self.cout, severity, code, message);
    }

    /// Whether the current route must stay on the attached connection.
    pub(super) fn stuck_to_active(&self) -> bool {
        // A pin noted mid-unit on a replica (a session-changing statement sent before the
        // read unit's Sync) does not hold the session there: pinned sessions belong on the
        // primary, and writes cannot run on a replica.
        let pinned_here = self.pinned && self.active.as_ref().is_some_and(|a| a.node.role == tandem_core::Role::Primary);
        self.active.is_some() && (!self.pipeline.is_idle() || self.tx != TxStatus::Idle || pinned_here)
    }

    /// Route of a unit, given the route of its statement.
    pub(super) fn unit_route(&self, route: Route) -> Route {
        if self.pinned {
            Route::Write
        } else {
            route
        }
    }

    /// The client left or the proxy stops: return clean connections, discard the rest.
    async fn release_all(&mut self) {
        self.busy = None;
        let mut conns: Vec<Attached> = self.held.drain(..).collect();
        let clean = self.pipeline.is_idle() && self.tx == TxStatus::Idle;
        if let Some(a) = self.active.take() {
            if clean {
                conns.push(a);
            } else {
                discard(a);
            }
        }
        self.cancel.set_target(None);
        let needs_reset = self.mode == PoolMode::Session || self.pinned;
        for mut a in conns {
            if needs_reset && !reset(&mut a).await {
                a.conn.broken = true;
            }
        }
    }
}

/// Whether `buf` starts with a whole protocol message, or with the header of
/// one that is too large (which must be refused before it is read in full).
fn actionable(buf: &[u8], max: usize) -> bool {
    use crate::protocol::frame::{needed, HEADER_LEN};
    buf.len() >= HEADER_LEN && (needed(buf) == 0 || buf.len() + needed(buf) > max)
}

/// Throws away a connection in an unknown state, cancelling what it runs.
pub(super) fn discard(mut a: Attached) {
    a.conn.broken = true;
    let key = a.conn.cancel_key.clone();
    tokio::spawn(async move {
        let _ = crate::cancel::send_cancel(&key).await;
    });
}

/// Runs `DISCARD ALL` so the connection can serve another client.
async fn reset(a: &mut Attached) -> bool {
    let conn = &mut *a.conn;
    let mut out = BytesMut::new();
    build::query(&mut out, "DISCARD ALL");
    let work = async {
        conn.stream.write_all(&out).await?;
        loop {
            while let Some(f) = crate::protocol::frame::split_message(&mut conn.rbuf, MAX_SERVER_MESSAGE)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
            {
                match f.tag() {
                    b'E' => return Ok(false),
                    b'Z' => return Ok(true),
                    _ => {}
                }
            }
            if conn.stream.read_buf(&mut conn.rbuf).await? == 0 {
                return Ok(false);
            }
        }
    };
    let ok =
        matches!(tokio::time::timeout(std::time::Duration::from_secs(5), work).await, Ok(Ok::<bool, io::Error>(true)));
    if ok {
        conn.prepared.clear();
        conn.params_signature = 0;
    }
    ok
}

/// Keeps the compiler honest about the server stream type used in `next_io`.
#[allow(dead_code)]
fn _assert_stream(_: &TcpStream) {}
