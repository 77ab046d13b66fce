//! Connection start: SSL/GSS negotiation, cancel requests, StartupMessage,
//! authentication, and the greeting a client expects before its first query.
//!
//! `client → frontend`: everything here happens before the session loop, under
//! the login timeout, so garbage or a half-sent packet costs the proxy nothing
//! but one short-lived task.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::login_params::Verdict;
use super::session::Session;
use super::state::SessionParams;
use crate::auth::{self, ServerCredential};
use crate::config::{AuthMethod, PoolMode};
use crate::context::{ClientGuard, ProxyContext};
use crate::pool::{AcquireError, ConnectError, PoolKey};
use crate::protocol::build::{self, sqlstate, Severity};
use crate::protocol::fields::TxStatus;
use crate::protocol::frame::split_startup;
use crate::protocol::startup::{self, StartupParams, StartupRequest};
use crate::stream::ClientStream;

/// Name of the admin console database.
pub const ADMIN_DATABASE: &str = "tandem";

/// The connection ended during startup (the reason is logged, and sent to the
/// client when it can still read it).
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Socket error or EOF.
    #[error("client connection closed during startup: {0}")]
    Io(#[from] std::io::Error),
    /// An error was sent to the client.
    #[error("{0}")]
    Rejected(String),
    /// The connection only carried a cancel request.
    #[error("cancel request handled")]
    Cancel,
    /// The client sent Terminate instead of a startup packet (node-postgres does, when it
    /// closes before it got to log in); PostgreSQL closes such a connection silently.
    #[error("client sent Terminate before logging in")]
    Terminated,
}

/// A Terminate message: type `X`, length 4.
const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];

/// A client that logged in: its session, ready to run over its stream.
pub struct LoggedIn {
    /// The session, holding the client's span.
    pub session: Session,
    /// The client's connection.
    pub stream: ClientStream,
}

/// Runs startup: `Some` with the session of a client that logged in, `None` after an admin
/// console session or a handled cancel request.
///
/// Runs inside the client's tracing span; the session then runs outside it and enters it
/// only to log (see [`Session::run`]).
pub async fn serve_client(
    ctx: Arc<ProxyContext>,
    tcp: TcpStream,
    guard: &ClientGuard<'_>,
) -> Result<Option<LoggedIn>, StartupError> {
    let login = tokio::time::timeout(ctx.cfg.login_timeout(), negotiate(&ctx, tcp)).await;
    let (mut stream, mut params, rbuf) = match login {
        Ok(r) => r?,
        Err(_) => return Err(StartupError::Rejected("login timeout".into())),
    };
    if let Err(e) = params.expand_options() {
        // As PostgreSQL answers a bad `options` switch.
        return reject(&mut stream, sqlstate::SYNTAX_ERROR, &e.to_string()).await;
    }
    guard.info.tls.store(stream.is_tls(), std::sync::atomic::Ordering::Relaxed);
    let Some(user) = params.user().map(str::to_owned) else {
        return reject(
            &mut stream,
            sqlstate::INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet",
        )
        .await;
    };
    let database = params.database().unwrap_or(&user).to_owned();
    if let Ok(mut l) = guard.info.login.lock() {
        *l = Some((user.clone(), database.clone()));
    }
    let mut out = BytesMut::new();
    let unsupported = params.protocol_options();
    if params.minor_version > 0 || !unsupported.is_empty() {
        build::negotiate_protocol_version(&mut out, unsupported);
        stream.write_all(&out).await?;
        out.clear();
    }
    tracing::Span::current().record("user", user.as_str()).record("database", database.as_str());
    let mut rbuf = rbuf;
    let auth =
        tokio::time::timeout(ctx.cfg.login_timeout(), authenticate(&ctx, &mut stream, &mut rbuf, &user, &database))
            .await;
    let cred = match auth {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            ctx.metrics.error("auth");
            return reject(&mut stream, e.sqlstate(), &e.to_string()).await;
        }
        Err(_) => return reject(&mut stream, sqlstate::INVALID_AUTHORIZATION, "login timeout").await,
    };
    if database == ADMIN_DATABASE {
        if !ctx.cfg.admin_users.is_empty() && !ctx.cfg.admin_users.contains(&user) {
            return reject(
                &mut stream,
                sqlstate::INVALID_AUTHORIZATION,
                &format!("user \"{user}\" may not use the admin console"),
            )
            .await;
        }
        crate::admin::serve(ctx, stream, rbuf, guard.info.clone()).await?;
        return Ok(None);
    }
    // Log in to the primary for this user once; the pool keeps its server parameters.
    let topo = ctx.router.topology();
    let key = PoolKey { node: topo.primary.id.clone(), user: user.clone(), database: database.clone() };
    let pool = ctx.pools.get(guard.info.worker, &key, &topo.primary.addr, &cred);
    pool.set_credential(&cred);
    // Session pooling: the client's own backend on the primary, taken now so that the
    // greeting carries its pid (pg_backend_pid(), pg_terminate_backend() and notifications
    // then agree with BackendKeyData, as drivers' pool checks assume).
    let own_backend = ctx.cfg.pool_mode == PoolMode::Session;
    let (server_params, own) = match pool.server_params().filter(|_| !own_backend) {
        Some(p) => (p, None),
        None => match pool.acquire(None).await {
            Ok(conn) => {
                let p = pool.server_params().unwrap_or_else(|| {
                    pool.remember_params(conn.params.clone());
                    conn.params.clone()
                });
                (p, own_backend.then_some(conn))
            }
            Err(AcquireError::Connect(ConnectError::Server { code, message, .. })) => {
                ctx.metrics.error("server_connect");
                return reject(&mut stream, &code, &message).await;
            }
            Err(AcquireError::PoolTimeout) => {
                ctx.metrics.error("pool_timeout");
                return reject(&mut stream, sqlstate::TOO_MANY_CONNECTIONS, &AcquireError::PoolTimeout.to_string())
                    .await;
            }
            Err(e) => {
                ctx.metrics.error("server_connect");
                return reject(
                    &mut stream,
                    sqlstate::CONNECTION_FAILURE,
                    &format!("could not connect to the primary: {e}"),
                )
                .await;
            }
        },
    };
    let settings = super::login_params::to_check(&params.params, &server_params);
    let checked_names: Vec<String> = settings.iter().map(|(n, _)| n.clone()).collect();
    let checked = super::login_params::check(
        &pool,
        &topo.primary.addr,
        settings,
        &cred,
        ctx.cfg.connect_timeout(),
        &ctx.server_tls,
    )
    .await;
    let reported = match checked {
        Some(Verdict::Refused(frame)) => {
            let _ = stream.write_all(&frame).await;
            let _ = stream.shutdown().await;
            return Err(StartupError::Rejected("the server refused the client's startup settings".into()));
        }
        Some(Verdict::Accepted(reported)) => Some(reported),
        None => None,
    };
    let cancel = ctx.cancels.register_as(own.as_ref().map(|c| c.cancel_key.pid));
    build::auth_ok(&mut out);
    // A setting the client chose: what the server reported for it at the check login, else
    // the value as sent. Drivers act on these: libpq and psycopg2 escape string literals by
    // `standard_conforming_strings`, `target_session_attrs` reads
    // `default_transaction_read_only`.
    let chosen = |name: &str| {
        let sent = client_setting(&params.params, name)?;
        let checked = reported.as_ref().filter(|_| checked_names.iter().any(|n| n.eq_ignore_ascii_case(name)));
        Some(checked.and_then(|r| r.params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())).unwrap_or(sent))
    };
    // As PostgreSQL sends them: its notices about startup settings before the parameters.
    for notice in reported.iter().flat_map(|r| r.notices.iter()) {
        out.extend_from_slice(notice);
    }
    // The pool's connections log in as `tandem`; a client that named no application_name
    // has an empty one, as in PostgreSQL (the session replays that, see `SessionParams`).
    for (name, value) in server_params.iter().filter(|(n, _)| n != "application_name") {
        build::parameter_status(&mut out, name, chosen(name).unwrap_or(value));
    }
    build::parameter_status(&mut out, "application_name", chosen("application_name").unwrap_or(""));
    build::backend_key_data(&mut out, cancel.pid, cancel.secret);
    build::ready_for_query(&mut out, TxStatus::Idle);
    stream.write_all(&out).await?;
    tracing::debug!("client logged in");
    let session_params = SessionParams::from_startup(&params.params);
    let mut session = Session::new(ctx.clone(), guard.info.clone(), user, database, cred, cancel, session_params, rbuf);
    if let Some(conn) = own {
        session.adopt(conn, pool, topo.primary.clone());
    }
    Ok(Some(LoggedIn { session, stream }))
}

/// The value the client's StartupMessage gave setting `name` (names are case-insensitive,
/// as in PostgreSQL; the last one wins), if it set it at all.
fn client_setting<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .rev()
        .find(|(n, _)| !super::state::is_identity(n) && n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// TCP keepalive on client connections: first probe after 30 s without traffic, then every
/// 10 s, given up after 3 unanswered. A client whose host died or was cut off without a reset
/// is then closed in about a minute, and the server connection it held (perhaps inside a
/// transaction, with its locks) is rolled back and freed, instead of after the OS defaults'
/// two hours.
fn client_keepalive() -> socket2::TcpKeepalive {
    socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(30))
        .with_interval(std::time::Duration::from_secs(10))
        .with_retries(3)
}

/// SSL/GSS negotiation up to the StartupMessage.
async fn negotiate(
    ctx: &ProxyContext,
    tcp: TcpStream,
) -> Result<(ClientStream, StartupParams, BytesMut), StartupError> {
    let _ = tcp.set_nodelay(true);
    let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&client_keepalive());
    let mut stream = ClientStream::Plain(tcp);
    let mut buf = BytesMut::with_capacity(1024);
    let mut tls_done = false;
    loop {
        let body = loop {
            if buf.starts_with(&TERMINATE) {
                let _ = stream.shutdown().await;
                return Err(StartupError::Terminated);
            }
            match split_startup(&mut buf) {
                Ok(Some(b)) => break b,
                Ok(None) => {
                    if stream.read_buf(&mut buf).await? == 0 {
                        return Err(StartupError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                    }
                }
                Err(e) => {
                    return reject_raw(
                        &mut stream,
                        sqlstate::PROTOCOL_VIOLATION,
                        &format!("invalid startup packet: {e}"),
                    )
                    .await
                }
            }
        };
        match startup::parse(&body) {
            Ok(StartupRequest::Ssl) if !tls_done => {
                if !buf.is_empty() {
                    // Bytes after SSLRequest would be read as if encrypted (CVE-2021-23214).
                    return reject_raw(
                        &mut stream,
                        sqlstate::PROTOCOL_VIOLATION,
                        "received unencrypted data after SSL request",
                    )
                    .await;
                }
                match (&ctx.tls, stream) {
                    (Some(acceptor), ClientStream::Plain(mut tcp)) => {
                        tcp.write_all(b"S").await?;
                        let tls = acceptor.accept(tcp).await?;
                        stream = ClientStream::Tls(Box::new(tls));
                        tls_done = true;
                    }
                    (_, mut s) => {
                        s.write_all(b"N").await?;
                        stream = s;
                    }
                }
            }
            Ok(StartupRequest::GssEnc) if !tls_done => stream.write_all(b"N").await?,
            Ok(StartupRequest::Ssl) | Ok(StartupRequest::GssEnc) => {
                return reject_raw(&mut stream, sqlstate::PROTOCOL_VIOLATION, "duplicate SSL/GSS negotiation request")
                    .await;
            }
            Ok(StartupRequest::Cancel { pid, secret }) => {
                ctx.cancels.cancel(pid, &secret).await;
                return Err(StartupError::Cancel);
            }
            Ok(StartupRequest::Startup(params)) => return Ok((stream, params, buf)),
            Err(e) => return reject_raw(&mut stream, sqlstate::PROTOCOL_VIOLATION, &e.to_string()).await,
        }
    }
}

/// Authenticates the client and works out the credential for the servers.
async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &ProxyContext,
    stream: &mut S,
    rbuf: &mut BytesMut,
    user: &str,
    database: &str,
) -> Result<ServerCredential, auth::AuthError> {
    let primary = ctx.router.topology().primary.addr.clone();
    if ctx.cfg.auth != AuthMethod::Passthrough {
        let secret = ctx.secrets.lookup(user, &primary).await?;
        return auth::authenticate_client(stream, rbuf, ctx.cfg.auth, user, secret.as_ref()).await;
    }
    // The server decides; a secret only lets md5 and SCRAM be relayed as they are.
    let secret = ctx.secrets.lookup(user, &primary).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "auth_query failed; asking the client for its password");
        None
    });
    // The admin console has no server database: the login goes to the control database.
    let database = if database == ADMIN_DATABASE { ctx.cfg.control.database.as_str() } else { database };
    let timeout = ctx.cfg.connect_timeout();
    auth::passthrough::authenticate(stream, rbuf, (user, database), secret.as_ref(), &primary, &ctx.server_tls, timeout)
        .await
}

async fn reject<S: AsyncWrite + Unpin>(
    stream: &mut S,
    code: &str,
    message: &str,
) -> Result<Option<LoggedIn>, StartupError> {
    reject_raw(stream, code, message).await
}

async fn reject_raw<S: AsyncWrite + Unpin, T>(stream: &mut S, code: &str, message: &str) -> Result<T, StartupError> {
    let mut out = BytesMut::new();
    build::error(&mut out, Severity::Fatal, code, message);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
    Err(StartupError::Rejected(message.to_owned()))
}
