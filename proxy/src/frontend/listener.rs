//! The accept loop and the life of one client connection.
//!
//! Stops accepting when the shutdown token fires; every client runs in its own
//! task on its worker's [`TaskTracker`], with a `client` tracing span: login runs inside
//! it, the session enters it when it logs.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::startup::{serve_client, LoggedIn, StartupError};
use super::workers::{LoadGuard, Workers};
use crate::context::ProxyContext;
use crate::protocol::build::{self, sqlstate, Severity};

/// Accepts clients until shutdown and hands each to a worker (see [`Workers`]).
pub async fn accept_loop(ctx: Arc<ProxyContext>, listener: TcpListener, tracker: TaskTracker, workers: &Workers) {
    loop {
        let accepted = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        ctx.metrics.client_connections.inc();
        workers.dispatch(&ctx, tcp, peer, &tracker);
    }
    tracing::info!("stopped accepting clients");
}

/// Serves one client from startup to close on the worker `counted` names.
pub async fn serve(ctx: Arc<ProxyContext>, tcp: TcpStream, peer: SocketAddr, counted: LoadGuard) {
    let Some(guard) = ctx.clients.add(peer, ctx.cfg.max_client_conn, counted.worker()) else {
        ctx.metrics.error("too_many_clients");
        let mut out = BytesMut::new();
        build::error(&mut out, Severity::Fatal, sqlstate::TOO_MANY_CONNECTIONS, "sorry, too many clients already");
        let mut tcp = tcp;
        let _ = tcp.write_all(&out).await;
        return;
    };
    let span = tracing::info_span!("client", id = guard.info.id, %peer, user = tracing::field::Empty, database = tracing::field::Empty);
    let served = serve_client(ctx.clone(), tcp, &guard).instrument(span.clone()).await;
    match served {
        Ok(Some(LoggedIn { session, stream })) => {
            // Not instrumented: entering the span on every wake-up was a tenth of
            // the data path's instructions. The session enters it to log.
            ctx.metrics.clients.inc();
            session.run(stream, span).await;
            ctx.metrics.clients.dec();
        }
        Ok(None) | Err(StartupError::Cancel | StartupError::Terminated) => {}
        Err(e) => span.in_scope(|| tracing::debug!(error = %e, "client not served")),
    }
}
