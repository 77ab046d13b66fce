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

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::io::poll_read_buf;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::pipeline::Pipeline;
use super::state::{SessionParams, Statements};
use super::wake::WakeWatch;
use crate::auth::ServerCredential;
use crate::cancel::CancelHandle;
use crate::config::PoolMode;
use crate::context::{ClientInfo, ClientState, ProxyContext};
use crate::gate::Busy;
use crate::pool::{Checkout, ServerPool};
use crate::protocol::build::{self, sqlstate, Severity};
use crate::protocol::fields::TxStatus;
use crate::protocol::Frame;
use crate::router::classify::{Route, SessionEffect, StatementMemo};
use crate::router::{InFlight, Node, ReadFloor};
use crate::stream::ClientStream;

/// Stop reading from one side while this much is queued for the other.
pub(super) const HIGH_WATER: usize = 256 * 1024;
/// Largest server message accepted (PostgreSQL's own limit is 1 GiB).
pub(super) const MAX_SERVER_MESSAGE: usize = 1 << 30;
/// Client frames kept for re-sending a read to another replica.
pub(super) const MAX_REPLAY_BYTES: usize = 1 << 20;

/// A server connection in use by this session.
pub(super) struct Attached {
    pub conn: Checkout,
    /// Where `conn` goes back to.
    pub pool: Arc<ServerPool>,
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
    /// Recent statements' routes, so that a repeated shape skips the classifier's lexer.
    pub(super) memo: StatementMemo,
    pub(super) floor: ReadFloor,
    pub(super) active: Option<Attached>,
    /// Server process of the connection the last transaction ran on (transaction pooling):
    /// the pool hands it back to this session when it is free (see `ServerPool::acquire`).
    pub(super) last_server: Option<i32>,
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
    /// Bytes of a CopyData still to stream from the client (see `copy_stream`).
    pub(super) copy_through: usize,
    /// A restore of startup settings due after the client's next Sync (see `effects`).
    pub(super) restore_at_sync: Option<String>,
    /// A SQL `PREPARE` sent under its server name: the client's name is defined when it
    /// succeeds (see `sql_names`).
    pub(super) pending_define: Option<(bytes::Bytes, Arc<super::state::Statement>)>,
    pub(super) busy: Option<Busy>,
    pub(super) cin: BytesMut,
    pub(super) cout: BytesMut,
    pub(super) sout: BytesMut,
    pub(super) due: BytesMut,
    /// Complete client messages are waiting because the outgoing buffers are full.
    pub(super) client_backlog: bool,
    /// The last wake-up read the client: read the server first next time (fairness).
    server_first: bool,
    /// Fires when the write lease runs out while a unit is in flight on the primary (armed
    /// only then, and only with a witness group).
    pub(super) lease_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes were written to the client since its stream was last flushed.
    pub(super) client_unflushed: bool,
    pub(super) closing: bool,
    /// The server's own FATAL error went to the client: when the server then hangs up,
    /// that error is the client's last word, as with PostgreSQL itself.
    pub(super) server_fatal: bool,
    /// The shutdown future's own waker: `poll_io` polls that future only after it ran.
    /// Polling it on every wake-up took a mutex each time.
    shutdown_watch: Option<WakeWatch>,
    /// Plain TCP clients: the waker their reads register, so that wake-ups from the server
    /// side do not re-poll a client socket that has nothing to read. `None`: poll on every
    /// wake-up.
    client_watch: Option<WakeWatch>,
    /// Whether reads of plain TCP clients may use `client_watch`.
    exact_client_wakeups: bool,
    /// The client's tracing span. The session does not run inside it (entering it on every
    /// wake-up costs more than the rest of a wake-up's bookkeeping); code that logs enters it.
    pub(super) span: tracing::Span,
}

/// What one poll of the session's streams produced.
enum Io {
    ClientRead(io::Result<usize>),
    /// A write failed (successful writes are handled inside the poll).
    ClientWriteFailed,
    ServerRead(io::Result<usize>),
    /// A write failed.
    ServerWriteFailed,
    /// Writes drained the buffers that held back queued client messages.
    Wrote,
    Shutdown,
    /// The write lease ran out while the primary had a unit of this session in hand.
    LeaseRanOut,
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
            memo: StatementMemo::default(),
            floor: ReadFloor::default(),
            active: None,
            last_server: None,
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
            copy_through: 0,
            restore_at_sync: None,
            pending_define: None,
            busy: None,
            cin,
            cout: BytesMut::new(),
            sout: BytesMut::new(),
            due: BytesMut::new(),
            client_backlog: false,
            server_first: false,
            lease_timer: None,
            client_unflushed: false,
            closing: false,
            server_fatal: false,
            shutdown_watch: None,
            client_watch: None,
            exact_client_wakeups: false,
            span: tracing::Span::none(),
        }
    }

    /// Runs the session until the client leaves, then cleans up its server connections.
    /// `span` is the client's tracing span, entered to log.
    ///
    /// On plain TCP the stream's `poll_read` registers its waker for read readiness only
    /// (not so with TLS, whose reads may wait to write), so a read that returned `Pending`
    /// need not be polled again until that waker ran.
    pub async fn run(mut self, mut stream: ClientStream, span: tracing::Span) {
        self.exact_client_wakeups = !stream.is_tls();
        self.span = span;
        self.info.set_state(ClientState::Idle);
        let end = self.main_loop(&mut stream).await;
        if !self.cout.is_empty() {
            let _ = tokio::time::timeout(self.ctx.cfg.connect_timeout(), stream.write_all(&self.cout)).await;
        }
        let _ = stream.shutdown().await;
        if matches!(end, End::Fatal) {
            linger(&mut stream).await;
        }
        self.span.in_scope(|| tracing::debug!(?end, "client session ended"));
        self.release_all().await;
    }

    async fn main_loop<S: AsyncRead + AsyncWrite + Unpin>(&mut self, client: &mut S) -> End {
        // One shutdown future for the whole session: creating and dropping one per
        // wake-up would register and unregister a waiter every time.
        let shutdown = self.ctx.shutdown.clone().cancelled_owned();
        tokio::pin!(shutdown);
        loop {
            if self.closing && self.active.is_none() && self.tx == TxStatus::Idle {
                build::error(&mut self.cout, Severity::Fatal, sqlstate::ADMIN_SHUTDOWN, "the proxy is shutting down");
                return End::Fatal;
            }
            if self.client_backlog && !self.client_blocked() {
                // The buffers drained. Whatever held them up may have left no complete
                // message behind (a large CopyData went out, the next one is half read):
                // reading the client must resume, or neither side ever moves again.
                self.client_backlog = false;
            }
            if (actionable(&self.cin, self.ctx.cfg.max_message_size) || self.copy_streams()) && !self.client_blocked() {
                if let Err(end) = self.process_client().await {
                    return end;
                }
                continue;
            }
            match std::future::poll_fn(|cx| self.poll_io(cx, client, shutdown.as_mut())).await {
                Io::ClientRead(Ok(0)) | Io::ClientRead(Err(_)) | Io::ClientWriteFailed => return End::ClientGone,
                Io::ClientRead(Ok(_)) | Io::Wrote => {}
                Io::ServerRead(Ok(0)) | Io::ServerRead(Err(_)) | Io::ServerWriteFailed => {
                    if let Err(end) = self.server_lost().await {
                        return end;
                    }
                }
                Io::ServerRead(Ok(_)) => {
                    if let Err(end) = self.process_server().await {
                        return end;
                    }
                }
                Io::Shutdown => self.closing = true,
                Io::LeaseRanOut => {
                    if self.answer_unvouched() {
                        if let Err(end) = self.end_unvouched() {
                            return end;
                        }
                    }
                }
            }
        }
    }

    /// Whether client messages must wait for the outgoing buffers to drain.
    fn client_blocked(&self) -> bool {
        self.sout.len() >= HIGH_WATER || self.cout.len() >= HIGH_WATER
    }

    /// Drives the four directions by hand, in a fixed order, in one poll:
    /// first everything that can be written (that frees buffer space), then one
    /// read. Polling the streams directly, instead of `select!` over read/write
    /// futures on split halves, keeps the per-wake-up cost of the data path
    /// small; writes use `poll_write` (a plain `send`) rather than `writev`.
    /// Reads what the active server sent, unless the client's buffer is full.
    fn poll_server_read(&mut self, cx: &mut Context<'_>) -> Poll<Io> {
        if self.cout.len() >= HIGH_WATER {
            return Poll::Pending;
        }
        let Some(a) = self.active.as_mut() else { return Poll::Pending };
        let conn: &mut crate::pool::ServerConn = &mut a.conn;
        reserve_for_read(&mut conn.rbuf);
        poll_read_buf(Pin::new(&mut conn.stream), cx, &mut conn.rbuf).map(Io::ServerRead)
    }

    fn poll_io<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut S,
        shutdown: Pin<&mut WaitForCancellationFutureOwned>,
    ) -> Poll<Io> {
        let Ok(mut wrote) = poll_write_out(&mut *client, cx, &mut self.cout) else {
            return Poll::Ready(Io::ClientWriteFailed);
        };
        if wrote {
            self.client_unflushed = true;
        }
        if self.client_unflushed && self.cout.is_empty() {
            // TLS keeps what the socket did not take inside the stream; flush it out.
            match Pin::new(&mut *client).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.client_unflushed = false,
                Poll::Ready(Err(_)) => return Poll::Ready(Io::ClientWriteFailed),
                Poll::Pending => {}
            }
        }
        if let Some(a) = self.active.as_mut() {
            match poll_write_out(&mut a.conn.stream, cx, &mut self.sout) {
                Ok(w) => wrote |= w,
                Err(()) => return Poll::Ready(Io::ServerWriteFailed),
            }
            if self.sout.is_empty() && a.conn.stream.is_tls() {
                // TLS keeps what the socket did not take inside the stream (nothing to do,
                // and no system call, when it holds nothing).
                if let Poll::Ready(Err(_)) = Pin::new(&mut a.conn.stream).poll_flush(cx) {
                    return Poll::Ready(Io::ServerWriteFailed);
                }
            }
        }
        // Fairness: after a client read the server is read first, so a server's answer (an
        // error that should stop a client streaming rows, as asyncpg's executemany expects)
        // is not held back while the client keeps sending.
        if self.server_first {
            self.server_first = false;
            if let Poll::Ready(r) = self.poll_server_read(cx) {
                return Poll::Ready(r);
            }
        }
        if !self.client_backlog && !self.client_blocked() {
            if self.exact_client_wakeups && self.client_watch.is_none() {
                self.client_watch = Some(WakeWatch::new(cx));
            }
            let cin = &mut self.cin;
            let mut read = |cx: &mut Context<'_>| {
                reserve_for_read(cin);
                poll_read_buf(Pin::new(&mut *client), cx, cin)
            };
            let polled = match self.client_watch.as_mut() {
                Some(watch) => watch.poll(read),
                None => read(cx),
            };
            if let Poll::Ready(r) = polled {
                self.server_first = self.active.is_some();
                return Poll::Ready(Io::ClientRead(r));
            }
        }
        if let Poll::Ready(r) = self.poll_server_read(cx) {
            return Poll::Ready(r);
        }
        if !self.closing {
            let watch = self.shutdown_watch.get_or_insert_with(|| WakeWatch::new(cx));
            if watch.poll(|cx| shutdown.poll(cx)).is_ready() {
                return Poll::Ready(Io::Shutdown);
            }
        }
        if wrote && self.client_backlog {
            // Buffers drained: the queued client messages may go on now.
            return Poll::Ready(Io::Wrote);
        }
        if self.ctx.lease.required() && self.poll_lease_expiry(cx).is_ready() {
            return Poll::Ready(Io::LeaseRanOut);
        }
        Poll::Pending
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
        let pinned_here =
            self.pinned && self.active.as_ref().is_some_and(|a| a.node.role == tandem_core::Role::Primary);
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
            a.pool.release(a.conn);
        }
    }
}

/// Writes as much of `buf` as `stream` takes now; `Ok(true)` if anything
/// went out, `Err` if the stream failed (or took nothing: it is closed).
fn poll_write_out<W: AsyncWrite + Unpin>(stream: &mut W, cx: &mut Context<'_>, buf: &mut BytesMut) -> Result<bool, ()> {
    let mut wrote = false;
    while !buf.is_empty() {
        match Pin::new(&mut *stream).poll_write(cx, buf) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Err(()),
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                rewind(buf);
                wrote = true;
            }
            Poll::Pending => break,
        }
    }
    Ok(wrote)
}

/// Read buffers get at least this much free space before a read, so that a
/// message never arrives in many tiny reads.
const READ_CHUNK: usize = 8 * 1024;

/// Makes room for a read: [`READ_CHUNK`] bytes, reusing the buffer's
/// allocation once the frames split off it are gone.
fn reserve_for_read(buf: &mut BytesMut) {
    rewind(buf);
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

/// Moves an empty buffer back to the start of its allocation (when no frame split off it is
/// still alive; otherwise nothing happens and nothing is allocated). Without this every
/// message would land a little further into the buffer, on cache lines that are cold by
/// then: each session's reads and writes now reuse the same few lines.
fn rewind(buf: &mut BytesMut) {
    if buf.is_empty() {
        let _ = buf.try_reclaim(buf.capacity() + 1);
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
    let conn: &mut crate::pool::ServerConn = &mut a.conn;
    let mut out = BytesMut::new();
    build::query(&mut out, "DISCARD ALL");
    let work = async {
        conn.stream.write_all(&out).await?;
        conn.stream.flush().await?;
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

/// After a FATAL the client may still be sending (the rest of an oversized message): read
/// and drop what arrives for a moment before closing, so the kernel does not answer the
/// unread bytes with a reset that could destroy the error on its way to the client (and the
/// client's write does not fail with a broken pipe before it can read why). Bounded in time
/// and bytes.
async fn linger<S: AsyncRead + Unpin>(stream: &mut S) {
    const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
    const MAX_DISCARD: usize = 64 << 20;
    let mut buf = [0u8; 16 * 1024];
    let mut dropped = 0usize;
    let _ = tokio::time::timeout(LINGER, async {
        while dropped < MAX_DISCARD {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => dropped += n,
            }
        }
    })
    .await;
}
