//! Opening one server connection: TCP, StartupMessage, authentication, and
//! the server's greeting up to the first ReadyForQuery.
//!
//! The pool calls [`connect`] with the [`ServerCredential`] that
//! [`crate::auth::authenticate_client`] produced for the client. The answer to
//! the server's authentication request is chosen from that credential: a
//! password answers everything, an md5 hash answers md5 (pass-the-hash), a
//! recovered SCRAM `ClientKey` answers SCRAM-SHA-256. The proxy talks plain
//! TCP to servers, so SCRAM is used without channel binding.
//!
//! Outgoing messages are built with postgres-protocol's frontend encoders;
//! incoming ones are cut with [`crate::protocol::frame`] and read with
//! [`crate::protocol::fields`]. Only the Authentication request codes are
//! read by hand here (a 4-byte code and its payload).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use postgres_protocol::message::frontend;
use tandem_core::NodeAddr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::server_tls::ServerTls;
use crate::stream::ServerStream;

use crate::auth::md5;
use crate::auth::scram::{ScramClient, ScramClientFinalSent, ScramCredential, MECHANISM};
use crate::auth::{AuthError, ServerCredential};
use crate::protocol::build::sqlstate;
use crate::protocol::fields;
use crate::protocol::frame::split_message;

/// Largest message accepted from a server before ReadyForQuery.
const MAX_STARTUP_MESSAGE: usize = 1 << 20;

/// TCP keepalive on server connections: first probe after 10 s without traffic, then every
/// 5 s, given up after 3 unanswered. A server whose host died or was cut off without a reset
/// then fails the connection in about 25 s (a read waiting for its answer ends, and is
/// replayed elsewhere if it can be) instead of hanging until the OS defaults (two hours of
/// silence) notice. A live server's kernel answers probes even while PostgreSQL is busy.
fn server_keepalive() -> socket2::TcpKeepalive {
    socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(5))
        .with_retries(3)
}

/// A logged-in server connection, ready for queries.
#[derive(Debug)]
pub struct ServerStartup {
    /// The connection (TLS as `server_tls_mode` says), with TCP_NODELAY set.
    pub stream: ServerStream,
    /// ParameterStatus name/value pairs, in the order the server sent them;
    /// the frontend replays them to clients.
    pub params: Vec<(String, String)>,
    /// Server process id from BackendKeyData, for CancelRequest.
    pub backend_pid: i32,
    /// Cancel secret from BackendKeyData.
    pub backend_secret: i32,
    /// Bytes read past ReadyForQuery (normally none); they belong to the next reader.
    pub leftover: BytesMut,
    /// NoticeResponse messages the login produced (a startup setting the server adjusted).
    pub notices: Vec<Bytes>,
}

/// Why a server connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connection failed or broke.
    #[error("could not connect to server: {0}")]
    Io(#[from] std::io::Error),
    /// Connecting and logging in took longer than allowed.
    #[error("timed out connecting to server")]
    Timeout,
    /// TLS was required and refused, or its handshake failed.
    #[error("TLS to server: {0}")]
    Tls(String),
    /// The server refused the login with an ErrorResponse.
    #[error("server refused the connection: {message} (SQLSTATE {code})")]
    Server {
        /// SQLSTATE.
        code: String,
        /// Primary message.
        message: String,
        /// The whole ErrorResponse, forwardable to the client as is.
        frame: Bytes,
    },
    /// The proxy could not answer the server's authentication request.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The server sent something unexpected.
    #[error("protocol violation from server: {0}")]
    Protocol(String),
}

impl ConnectError {
    /// SQLSTATE to report to a client for this failure.
    pub fn sqlstate(&self) -> &str {
        match self {
            ConnectError::Io(_) | ConnectError::Timeout | ConnectError::Tls(_) => sqlstate::CONNECTION_FAILURE,
            ConnectError::Server { code, .. } => code,
            ConnectError::Auth(e) => e.sqlstate(),
            ConnectError::Protocol(_) => sqlstate::PROTOCOL_VIOLATION,
        }
    }
}

/// Connects to `addr` and logs in as `user` to `database` with `cred`.
///
/// Sends a protocol 3.0 StartupMessage with `user`, `database` and then
/// `startup_params` (entries named `user` or `database` there are skipped),
/// answers the server's authentication request, and collects ParameterStatus
/// and BackendKeyData up to ReadyForQuery. The whole exchange is bounded by
/// `timeout`, TLS negotiation (per `tls`) included.
pub async fn connect(
    addr: &NodeAddr,
    user: &str,
    database: &str,
    startup_params: &[(String, String)],
    cred: &ServerCredential,
    timeout: Duration,
    tls: &ServerTls,
) -> Result<ServerStartup, ConnectError> {
    let attempt = async {
        let mut stream = open(addr, tls).await?;
        let greeting = login(&mut stream, user, database, startup_params, cred).await?;
        Ok(ServerStartup {
            stream,
            params: greeting.params,
            backend_pid: greeting.backend_pid,
            backend_secret: greeting.backend_secret,
            leftover: greeting.leftover,
            notices: greeting.notices,
        })
    };
    let res = tokio::time::timeout(timeout, attempt).await.map_err(|_| ConnectError::Timeout)?;
    if let Err(e) = &res {
        tracing::debug!(%addr, user, database, error = %e, "server login failed");
    }
    res
}

/// Opens a socket to `addr` (TCP_NODELAY, keepalive) and negotiates TLS per `tls`: a
/// server connection before its StartupMessage.
pub async fn open(addr: &NodeAddr, tls: &ServerTls) -> Result<ServerStream, ConnectError> {
    let tcp = TcpStream::connect((addr.host.as_str(), addr.port)).await?;
    tcp.set_nodelay(true)?;
    socket2::SockRef::from(&tcp).set_tcp_keepalive(&server_keepalive())?;
    tls.negotiate(tcp, &addr.host).await
}

/// What the server said before its first ReadyForQuery.
#[derive(Debug, Default)]
struct Greeting {
    params: Vec<(String, String)>,
    backend_pid: i32,
    backend_secret: i32,
    leftover: BytesMut,
    notices: Vec<Bytes>,
}

/// The startup exchange over any stream (a socket, or a duplex in tests).
async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    user: &str,
    database: &str,
    startup_params: &[(String, String)],
    cred: &ServerCredential,
) -> Result<Greeting, ConnectError> {
    let mut out = BytesMut::new();
    let params = [("user", user), ("database", database)].into_iter().chain(
        startup_params.iter().filter(|(k, _)| k != "user" && k != "database").map(|(k, v)| (k.as_str(), v.as_str())),
    );
    frontend::startup_message(params, &mut out)?;
    // Flushed after every write: over TLS, bytes the socket did not take wait in the stream.
    stream.write_all(&out).await?;
    stream.flush().await?;

    let mut auth = ServerAuth { user, cred, scram: ScramPhase::Idle };
    let mut greeting = Greeting::default();
    let mut rbuf = BytesMut::with_capacity(1024);
    loop {
        let frame = loop {
            match split_message(&mut rbuf, MAX_STARTUP_MESSAGE) {
                Ok(Some(frame)) => break frame,
                Ok(None) => {}
                Err(e) => return Err(ConnectError::Protocol(e.to_string())),
            }
            if stream.read_buf(&mut rbuf).await? == 0 {
                return Err(ConnectError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        };
        let bad = |e: fields::FieldError| ConnectError::Protocol(e.to_string());
        match frame.tag() {
            b'R' => {
                out.clear();
                auth.on_request(frame.body(), &mut out)?;
                if !out.is_empty() {
                    stream.write_all(&out).await?;
                    stream.flush().await?;
                }
            }
            b'S' => {
                let (name, value) = fields::parameter_status(frame.body()).map_err(bad)?;
                let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                greeting.params.push((text(name), text(value)));
            }
            b'K' => (greeting.backend_pid, greeting.backend_secret) = fields::backend_key(frame.body()).map_err(bad)?,
            b'Z' => {
                if !auth.is_done() {
                    return Err(ConnectError::Protocol("ReadyForQuery before authentication completed".into()));
                }
                greeting.leftover = rbuf;
                return Ok(greeting);
            }
            b'E' => {
                let e = fields::error_fields(frame.body()).map_err(bad)?;
                return Err(ConnectError::Server {
                    code: String::from_utf8_lossy(e.code).into_owned(),
                    message: String::from_utf8_lossy(e.message).into_owned(),
                    frame: frame.into_bytes(),
                });
            }
            b'N' => greeting.notices.push(frame.into_bytes()),
            // NegotiateProtocolVersion: nothing to do.
            b'v' => tracing::debug!("server message NegotiateProtocolVersion during startup ignored"),
            tag => {
                return Err(ConnectError::Protocol(format!(
                    "unexpected message type {} during startup",
                    char::from(tag).escape_default()
                )))
            }
        }
    }
}

/// Where a SCRAM login to the server stands.
enum ScramPhase {
    /// No SASL exchange started (or none needed).
    Idle,
    /// client-first sent, waiting for server-first.
    SentFirst(ScramClient),
    /// client-final sent, waiting for server-final.
    SentFinal(ScramClientFinalSent),
    /// server-final checked.
    Done,
    /// AuthenticationOk received.
    Ok,
}

/// Answers the server's Authentication requests from the credential (sans I/O).
struct ServerAuth<'a> {
    user: &'a str,
    cred: &'a ServerCredential,
    scram: ScramPhase,
}

impl ServerAuth<'_> {
    fn is_done(&self) -> bool {
        matches!(self.scram, ScramPhase::Ok)
    }

    fn cannot(&self, what: &str) -> ConnectError {
        let msg = match self.cred {
            ServerCredential::None => format!(
                "the server asks for {what} for user \"{}\", and the proxy has no password for that user",
                self.user
            ),
            other => format!(
                "the server asks for {what} for user \"{}\", which the proxy cannot answer with a {} credential",
                self.user,
                other.kind()
            ),
        };
        ConnectError::Auth(AuthError::Rejected(msg))
    }

    /// Handles one Authentication ('R') body; appends any answer to `out`.
    fn on_request(&mut self, body: &[u8], out: &mut BytesMut) -> Result<(), ConnectError> {
        let bad = |what: &str| ConnectError::Protocol(format!("malformed authentication request: {what}"));
        let (code, payload) = body.split_at_checked(4).ok_or_else(|| bad("too short"))?;
        let code = i32::from_be_bytes([code[0], code[1], code[2], code[3]]);
        let scram_error = |e| ConnectError::Auth(AuthError::Protocol(format!("SCRAM login to server: {e}")));
        match code {
            0 => match std::mem::replace(&mut self.scram, ScramPhase::Ok) {
                ScramPhase::Idle | ScramPhase::Done => Ok(()),
                _ => Err(ConnectError::Protocol("AuthenticationOk before SASL authentication completed".into())),
            },
            3 => match self.cred {
                ServerCredential::Password(p) => Ok(frontend::password_message(p.as_bytes(), out)?),
                _ => Err(self.cannot("a clear-text password")),
            },
            5 => {
                let salt: [u8; 4] = payload.try_into().map_err(|_| bad("md5 salt"))?;
                let answer = match self.cred {
                    ServerCredential::Password(p) => md5::response_from_password(p.as_bytes(), self.user, salt),
                    ServerCredential::Md5Hash(h) => md5::response(h, salt),
                    _ => return Err(self.cannot("md5 authentication")),
                };
                Ok(frontend::password_message(answer.as_bytes(), out)?)
            }
            10 => {
                let offers_scram = payload.split(|&b| b == 0).any(|m| m == MECHANISM.as_bytes());
                if !offers_scram {
                    return Err(ConnectError::Auth(AuthError::Rejected(
                        "the server offers no SASL mechanism the proxy supports (SCRAM-SHA-256)".into(),
                    )));
                }
                let credential = match self.cred {
                    ServerCredential::Password(p) => ScramCredential::Password(p.clone()),
                    ServerCredential::ScramClientKey { client_key, server_key } => {
                        ScramCredential::ClientKey { client_key: *client_key, server_key: *server_key }
                    }
                    _ => return Err(self.cannot("SCRAM-SHA-256 authentication")),
                };
                let (client, first) = ScramClient::new(credential);
                self.scram = ScramPhase::SentFirst(client);
                Ok(frontend::sasl_initial_response(MECHANISM, &first, out)?)
            }
            11 => match std::mem::replace(&mut self.scram, ScramPhase::Idle) {
                ScramPhase::SentFirst(client) => {
                    let (next, fin) = client.handle_server_first(payload).map_err(scram_error)?;
                    self.scram = ScramPhase::SentFinal(next);
                    Ok(frontend::sasl_response(&fin, out)?)
                }
                _ => Err(ConnectError::Protocol("unexpected AuthenticationSASLContinue".into())),
            },
            12 => match std::mem::replace(&mut self.scram, ScramPhase::Idle) {
                ScramPhase::SentFinal(client) => {
                    client.handle_server_final(payload).map_err(scram_error)?;
                    self.scram = ScramPhase::Done;
                    Ok(())
                }
                _ => Err(ConnectError::Protocol("unexpected AuthenticationSASLFinal".into())),
            },
            other => Err(ConnectError::Auth(AuthError::Rejected(format!(
                "the server requested an authentication method the proxy does not support (code {other})"
            )))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::build;
    use tokio::io::DuplexStream;

    /// Reads the StartupMessage a `login` sends, then plays `script` back.
    async fn scripted_server(mut s: DuplexStream, script: BytesMut) {
        let mut buf = BytesMut::new();
        while buf.len() < 4 || buf.len() < u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize {
            if s.read_buf(&mut buf).await.unwrap() == 0 {
                return;
            }
        }
        s.write_all(&script).await.unwrap();
        // End of script: the client sees EOF, while its answers can still be
        // written until it is done.
        s.shutdown().await.unwrap();
        while matches!(s.read_buf(&mut buf).await, Ok(n) if n > 0) {}
    }

    async fn run(script: BytesMut, cred: ServerCredential) -> Result<Greeting, ConnectError> {
        let (mut c, s) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(scripted_server(s, script));
        let res = login(&mut c, "u", "db", &[("application_name".into(), "t".into())], &cred).await;
        drop(c);
        server.await.unwrap();
        res
    }

    #[tokio::test]
    async fn trust_greeting_and_leftover() {
        let mut script = BytesMut::new();
        build::auth_ok(&mut script);
        build::parameter_status(&mut script, "server_version", "15.0");
        build::parameter_status(&mut script, "TimeZone", "UTC");
        build::backend_key_data(&mut script, 42, 7);
        build::ready_for_query(&mut script, fields::TxStatus::Idle);
        build::notice(&mut script, "after");
        let g = run(script, ServerCredential::None).await.unwrap();
        assert_eq!(g.params, vec![("server_version".into(), "15.0".into()), ("TimeZone".into(), "UTC".into())]);
        assert_eq!((g.backend_pid, g.backend_secret), (42, 7));
        assert_eq!(g.leftover.first(), Some(&b'N'));
    }

    #[tokio::test]
    async fn password_request_without_credential() {
        let mut script = BytesMut::new();
        build::auth_md5(&mut script, [1, 2, 3, 4]);
        let err = run(script, ServerCredential::None).await.unwrap_err();
        assert!(matches!(&err, ConnectError::Auth(AuthError::Rejected(m)) if m.contains("no password")), "{err}");
        let mut script = BytesMut::new();
        build::auth_cleartext(&mut script);
        let err = run(script, ServerCredential::Md5Hash("md5".into())).await.unwrap_err();
        assert_eq!(err.sqlstate(), "28000");
    }

    #[tokio::test]
    async fn server_errors_are_kept_whole() {
        let mut script = BytesMut::new();
        build::error(&mut script, build::Severity::Fatal, "3D000", "database \"db\" does not exist");
        let sent = script.clone();
        match run(script, ServerCredential::None).await.unwrap_err() {
            ConnectError::Server { code, message, frame } => {
                assert_eq!(code, "3D000");
                assert!(message.contains("does not exist"));
                assert_eq!(&frame[..], &sent[..]);
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[tokio::test]
    async fn protocol_violations_from_the_server() {
        // Unsupported method (GSS), SASL without SCRAM, early ReadyForQuery, bad salt, odd tag, EOF.
        let gss = BytesMut::from(&b"R\0\0\0\x08\0\0\0\x07"[..]);
        let mut sasl = BytesMut::new();
        build::auth_sasl(&mut sasl, &["SCRAM-SHA-1"]);
        let mut early = BytesMut::new();
        build::ready_for_query(&mut early, fields::TxStatus::Idle);
        let bad_salt = BytesMut::from(&b"R\0\0\0\x0a\0\0\0\x05\x01\x02"[..]);
        let odd = BytesMut::from(&b"D\0\0\0\x04"[..]);
        let mut unasked_final = BytesMut::new();
        build::auth_sasl_final(&mut unasked_final, b"v=AAAA");
        let truncated = BytesMut::from(&b"R\0\0"[..]);
        let cred = ServerCredential::Password("pw".into());
        assert_eq!(run(gss, cred.clone()).await.unwrap_err().sqlstate(), "28000");
        assert_eq!(run(sasl, cred.clone()).await.unwrap_err().sqlstate(), "28000");
        for script in [early, bad_salt, odd, unasked_final] {
            assert_eq!(run(script, cred.clone()).await.unwrap_err().sqlstate(), "08P01");
        }
        assert!(matches!(run(truncated, cred).await.unwrap_err(), ConnectError::Io(_)));
    }
}
