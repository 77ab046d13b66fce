//! Pass-through authentication (`auth = "passthrough"`): the primary decides how each user
//! logs in, the client answers it through the proxy.
//!
//! `client → frontend → (auth) → server`: the proxy opens a login of its own to the primary
//! as the client's user and relays the server's authentication request to the client:
//! trust needs nothing, a clear-text password request is relayed and the password kept;
//! md5 and SCRAM-SHA-256 (without channel binding) are relayed as they are when the proxy
//! knows the user's secret (`[[proxy.users]]` or `auth_query`), which then also opens the
//! pool's later connections (md5: the hash; SCRAM: the `ClientKey` recovered from the
//! client's proof, PgBouncer's trick). Without a secret the proxy asks the client for its
//! password in clear text instead, logs in with it, and keeps it. Either way the server
//! checks the password, so a wrong one gets the server's 28P01.
//!
//! Security cost (see docs/ARCHITECTURE.md): the proxy holds what logs in as each user
//! (a password, md5 hash or SCRAM ClientKey) in memory for as long as it runs; without a
//! secret the password crosses the client's connection in clear text (use client TLS); and
//! SCRAM channel binding cannot be offered, since the client's channel ends at the proxy.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::exchange::{failed, read_auth_message, sasl_initial_response, send};
use super::scram::MECHANISM;
use super::secret::{hmac, sha256};
use super::{AuthError, ScramSecret, Secret, ServerCredential};
use crate::pool::connect::{self, ConnectError};
use crate::protocol::build;
use crate::protocol::fields;
use crate::protocol::frame::{split_message, Frame};
use crate::server_tls::ServerTls;
use std::time::Duration;
use tandem_core::NodeAddr;

/// Largest server message accepted during the login.
const MAX_SERVER_AUTH_MESSAGE: usize = 64 * 1024;

/// Authenticates a client by a login of its user to the primary at `addr` (see the module
/// documentation); returns what opens the pool's connections for the user.
pub async fn authenticate<C: AsyncRead + AsyncWrite + Unpin>(
    client: &mut C,
    rbuf: &mut BytesMut,
    login: (&str, &str),
    secret: Option<&Secret>,
    addr: &NodeAddr,
    tls: &ServerTls,
    timeout: Duration,
) -> Result<ServerCredential, AuthError> {
    let (user, database) = login;
    let mut server = connect::open(addr, tls).await.map_err(|e| server_failure(e, user))?;
    match relay_login(client, rbuf, &mut server, user, database, secret).await? {
        Relayed::LoggedIn(credential) => Ok(credential),
        Relayed::NeedsPassword => {
            drop(server);
            let credential = ServerCredential::Password(ask_password(client, rbuf).await?);
            match connect::connect(addr, user, database, &[], &credential, timeout, tls).await {
                Ok(_) => Ok(credential),
                Err(e) => Err(server_failure(e, user)),
            }
        }
    }
}

/// The client's error for a failed server login (28P01 worded as PostgreSQL words it).
fn server_failure(e: ConnectError, user: &str) -> AuthError {
    match e {
        ConnectError::Server { code, .. } if code == "28P01" => failed(user),
        ConnectError::Server { message, .. } => AuthError::Rejected(message),
        ConnectError::Auth(e) => e,
        ConnectError::Io(e) => AuthError::Io(e),
        other => AuthError::Rejected(format!("could not log in to the primary: {other}")),
    }
}

/// How a relayed login ended.
#[derive(Debug)]
pub enum Relayed {
    /// The server accepted the client; this opens further connections for the user.
    LoggedIn(ServerCredential),
    /// The server wants md5 or SCRAM and the proxy knows no secret that could open further
    /// connections: the caller asks the client for its password instead.
    NeedsPassword,
}

/// Logs in to `server` (a fresh connection, before its StartupMessage) as `user` to
/// `database`, relaying the server's authentication exchange to `client` (whose unread
/// bytes are in `rbuf`). Stops at the server's AuthenticationOk; the connection is not used
/// further. A server error (28P01 for a wrong password) becomes the client's.
pub async fn relay_login<C, S>(
    client: &mut C,
    rbuf: &mut BytesMut,
    server: &mut S,
    user: &str,
    database: &str,
    secret: Option<&Secret>,
) -> Result<Relayed, AuthError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = BytesMut::new();
    frontend::startup_message([("user", user), ("database", database)], &mut out)?;
    send(server, &out).await?;
    let mut srbuf = BytesMut::new();
    let mut credential = match secret {
        Some(Secret::Plain(p)) => ServerCredential::Password(p.clone()),
        Some(Secret::Md5(h)) => ServerCredential::Md5Hash(h.clone()),
        _ => ServerCredential::None,
    };
    loop {
        let (code, payload) = read_request(server, &mut srbuf, user).await?;
        out.clear();
        match code {
            0 => return Ok(Relayed::LoggedIn(credential)),
            3 => {
                let password = ask_password(client, rbuf).await?;
                frontend::password_message(password.as_bytes(), &mut out)?;
                send(server, &out).await?;
                credential = ServerCredential::Password(password);
            }
            5 if matches!(secret, Some(Secret::Plain(_) | Secret::Md5(_))) => {
                let salt: [u8; 4] = payload.as_slice().try_into().map_err(|_| bad("md5 salt"))?;
                build::auth_md5(&mut out, salt);
                send(client, &out).await?;
                send(server, read_auth_message(client, rbuf).await?.bytes()).await?;
            }
            10 if matches!(secret, Some(Secret::Plain(_) | Secret::Scram(_))) => {
                let offers = payload.split(|&b| b == 0).any(|m| m == MECHANISM.as_bytes());
                if !offers {
                    return Err(AuthError::Rejected("the server offers no SASL mechanism the proxy relays".into()));
                }
                let transcript = relay_scram(client, rbuf, server, &mut srbuf, user).await?;
                if let Some(Secret::Scram(s)) = secret {
                    credential = scram_credential(s, &transcript);
                }
            }
            5 | 10 => return Ok(Relayed::NeedsPassword),
            other => return Err(AuthError::Rejected(format!("unsupported server authentication request {other}"))),
        }
    }
}

/// Asks the client for its password in clear text (AuthenticationCleartextPassword).
pub async fn ask_password<C: AsyncRead + AsyncWrite + Unpin>(
    client: &mut C,
    rbuf: &mut BytesMut,
) -> Result<String, AuthError> {
    let mut out = BytesMut::new();
    build::auth_cleartext(&mut out);
    send(client, &out).await?;
    let answer = read_auth_message(client, rbuf).await?;
    let password = answer.body().strip_suffix(&[0]).unwrap_or(answer.body());
    Ok(String::from_utf8_lossy(password).into_owned())
}

/// What a relayed SCRAM exchange showed: the client's messages and the server's first.
struct ScramTranscript {
    client_first: Vec<u8>,
    server_first: Vec<u8>,
    client_final: Vec<u8>,
}

/// Relays one SCRAM-SHA-256 exchange (SASL, SASLContinue, SASLFinal) between the client and
/// the server; the server checks the proof.
async fn relay_scram<C, S>(
    client: &mut C,
    rbuf: &mut BytesMut,
    server: &mut S,
    srbuf: &mut BytesMut,
    user: &str,
) -> Result<ScramTranscript, AuthError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = BytesMut::new();
    build::auth_sasl(&mut out, &[MECHANISM]);
    send(client, &out).await?;
    let first = read_auth_message(client, rbuf).await?;
    let client_first = sasl_initial_response(first.body())?.to_vec();
    send(server, first.bytes()).await?;
    let server_first = expect_request(server, srbuf, user, 11).await?;
    out.clear();
    build::auth_sasl_continue(&mut out, &server_first);
    send(client, &out).await?;
    let last = read_auth_message(client, rbuf).await?;
    send(server, last.bytes()).await?;
    let server_final = expect_request(server, srbuf, user, 12).await?;
    out.clear();
    build::auth_sasl_final(&mut out, &server_final);
    send(client, &out).await?;
    Ok(ScramTranscript { client_first, server_first, client_final: last.body().to_vec() })
}

/// The credential a relayed SCRAM exchange leaves: the client's `ClientKey`, recovered from
/// its proof with the user's StoredKey. `None` (with a warning) when the secret does not fit
/// the exchange (it is not the primary's), so later connections cannot log in.
fn scram_credential(secret: &ScramSecret, t: &ScramTranscript) -> ServerCredential {
    match recover_client_key(secret, t) {
        Some(client_key) => ServerCredential::ScramClientKey { client_key, server_key: Some(secret.server_key) },
        None => {
            tracing::warn!("the user's SCRAM secret does not match the primary's; further logins will fail");
            ServerCredential::None
        }
    }
}

/// `ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage)`, checked against StoredKey.
fn recover_client_key(secret: &ScramSecret, t: &ScramTranscript) -> Option<[u8; 32]> {
    let first = std::str::from_utf8(&t.client_first).ok()?;
    // client-first-message = gs2-header client-first-message-bare; gs2-header = "n,," etc.
    let bare = first.splitn(3, ',').nth(2)?;
    let server_first = std::str::from_utf8(&t.server_first).ok()?;
    let last = std::str::from_utf8(&t.client_final).ok()?;
    let (without_proof, proof) = last.rsplit_once(",p=")?;
    let proof: [u8; 32] = B64.decode(proof).ok()?.try_into().ok()?;
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let signature = hmac(&secret.stored_key, auth_message.as_bytes());
    let mut key = [0u8; 32];
    for (k, (p, s)) in key.iter_mut().zip(proof.iter().zip(signature.iter())) {
        *k = p ^ s;
    }
    (sha256(&key) == secret.stored_key).then_some(key)
}

fn bad(what: &str) -> AuthError {
    AuthError::Protocol(format!("malformed authentication request from the server: {what}"))
}

/// Reads the server's next Authentication request with code `code`, returning its data.
async fn expect_request<S: AsyncRead + Unpin>(
    server: &mut S,
    srbuf: &mut BytesMut,
    user: &str,
    code: i32,
) -> Result<Vec<u8>, AuthError> {
    let (got, payload) = read_request(server, srbuf, user).await?;
    if got != code {
        return Err(bad(&format!("request {got} where {code} was due")));
    }
    Ok(payload)
}

/// Reads the server's next Authentication request: (code, data). An ErrorResponse becomes
/// the matching [`AuthError`] (28P01 as a failed password, as PostgreSQL words it).
async fn read_request<S: AsyncRead + Unpin>(
    server: &mut S,
    srbuf: &mut BytesMut,
    user: &str,
) -> Result<(i32, Vec<u8>), AuthError> {
    let frame = read_server_message(server, srbuf).await?;
    match frame.tag() {
        b'R' => {
            let (code, payload) = frame.body().split_at_checked(4).ok_or_else(|| bad("too short"))?;
            Ok((i32::from_be_bytes([code[0], code[1], code[2], code[3]]), payload.to_vec()))
        }
        b'E' => {
            let e = fields::error_fields(frame.body()).map_err(|e| AuthError::Protocol(e.to_string()))?;
            if e.code == b"28P01" {
                return Err(failed(user));
            }
            Err(AuthError::Rejected(String::from_utf8_lossy(e.message).into_owned()))
        }
        tag => Err(bad(&format!("message type {}", char::from(tag).escape_default()))),
    }
}

/// Reads one message from the server, skipping notices and NegotiateProtocolVersion.
async fn read_server_message<S: AsyncRead + Unpin>(server: &mut S, srbuf: &mut BytesMut) -> Result<Frame, AuthError> {
    loop {
        match split_message(srbuf, MAX_SERVER_AUTH_MESSAGE) {
            Ok(Some(f)) if matches!(f.tag(), b'N' | b'v') => continue,
            Ok(Some(f)) => return Ok(f),
            Ok(None) => {}
            Err(e) => return Err(AuthError::Protocol(e.to_string())),
        }
        if server.read_buf(srbuf).await? == 0 {
            return Err(AuthError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scram::{ScramClient, ScramCredential};

    #[test]
    fn client_key_is_recovered_from_a_relayed_exchange() {
        let secret = ScramSecret::derive("pw", b"0123456789abcdef", 4096);
        let (client, first) = ScramClient::new(ScramCredential::Password("pw".into()));
        let bare = String::from_utf8_lossy(&first).splitn(3, ',').nth(2).unwrap_or_default().to_owned();
        let nonce = bare.split("r=").nth(1).unwrap_or_default();
        let server_first = format!("r={nonce}srv,s={},i=4096", B64.encode(b"0123456789abcdef"));
        let (_, last) = client.handle_server_first(server_first.as_bytes()).expect("server-first");
        let t = ScramTranscript { client_first: first, server_first: server_first.into_bytes(), client_final: last };
        let key = recover_client_key(&secret, &t).expect("the proof matches the secret");
        assert_eq!(sha256(&key), secret.stored_key);
        let other = ScramSecret::derive("other", b"0123456789abcdef", 4096);
        assert!(recover_client_key(&other, &t).is_none());
    }
}
