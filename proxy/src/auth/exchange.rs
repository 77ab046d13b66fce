//! The client-facing login exchange, run by the frontend after a StartupMessage.
//!
//! Picks the exchange from the configured method and the user's secret the
//! way PostgreSQL does (md5 falls back to SCRAM for a SCRAM secret; SCRAM
//! with an md5 secret or no secret fails after a mock exchange so that the
//! client cannot tell a missing user from a wrong password), drives
//! [`super::scram`] or [`super::md5`] over the client stream, and returns the
//! [`ServerCredential`] the pool will use for this client.

use std::sync::OnceLock;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::scram::{ScramError, ScramServer, MECHANISM};
use super::secret::{hmac, DEFAULT_ITERATIONS, DEFAULT_SALT_LEN};
use super::{md5, AuthError, ScramSecret, Secret, ServerCredential};
use crate::config::AuthMethod;
use crate::protocol::build;
use crate::protocol::frame::{split_message, Frame, FrameError, HEADER_LEN};

/// Largest PasswordMessage / SASL response body accepted from a client.
pub const MAX_AUTH_MESSAGE: usize = 8192;

/// Runs the client-facing exchange after the StartupMessage.
///
/// `rbuf` holds bytes already read from the client (and keeps any read past
/// the last auth message). Sends AuthenticationMD5Password /
/// AuthenticationSASL... but not AuthenticationOk: the caller sends it once
/// it has checked the server side. On failure the caller sends the
/// ErrorResponse built from the error's `sqlstate()` and `Display`.
pub async fn authenticate_client<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    method: AuthMethod,
    user: &str,
    secret: Option<&Secret>,
) -> Result<ServerCredential, AuthError> {
    match (method, secret) {
        (AuthMethod::Trust, Some(Secret::Plain(p))) => Ok(ServerCredential::Password(p.clone())),
        (AuthMethod::Trust, Some(Secret::Md5(h))) => Ok(ServerCredential::Md5Hash(h.clone())),
        // A SCRAM secret alone cannot log in to a server: that needs a client's proof.
        (AuthMethod::Trust, _) => Ok(ServerCredential::None),
        (AuthMethod::Md5, Some(Secret::Scram(_))) | (AuthMethod::Scram, _) => {
            scram_exchange(stream, rbuf, user, secret).await
        }
        (AuthMethod::Md5, _) => md5_exchange(stream, rbuf, user, secret).await,
        (AuthMethod::Passthrough, _) => {
            Err(AuthError::Rejected("pass-through authentication needs the server (auth::passthrough)".into()))
        }
    }
}

async fn md5_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    user: &str,
    secret: Option<&Secret>,
) -> Result<ServerCredential, AuthError> {
    let salt: [u8; 4] = rand::random();
    let mut out = BytesMut::new();
    build::auth_md5(&mut out, salt);
    send(stream, &out).await?;

    let frame = read_auth_message(stream, rbuf).await?;
    let body = frame.body();
    let answer = match body.split_last() {
        Some((0, answer)) if !answer.contains(&0) => answer,
        _ => return Err(AuthError::Protocol("invalid password packet size".into())),
    };
    let (stored, credential) = match secret {
        Some(Secret::Plain(p)) => (md5::secret(p.as_bytes(), user), ServerCredential::Password(p.clone())),
        Some(Secret::Md5(h)) => (h.clone(), ServerCredential::Md5Hash(h.clone())),
        _ => return Err(failed(user)),
    };
    if md5::verify(&stored, salt, answer) {
        Ok(credential)
    } else {
        Err(failed(user))
    }
}

async fn scram_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    user: &str,
    secret: Option<&Secret>,
) -> Result<ServerCredential, AuthError> {
    let server = match secret {
        Some(Secret::Scram(s)) => ScramServer::new(s.clone()),
        Some(Secret::Plain(p)) => ScramServer::new(ScramSecret::derive(p, &stable_salt(user), DEFAULT_ITERATIONS)),
        Some(Secret::Md5(_)) | None => {
            tracing::debug!(user, "no SCRAM secret for user; running a mock exchange");
            ScramServer::mock(stable_salt(user))
        }
    };
    let mut out = BytesMut::new();
    build::auth_sasl(&mut out, &[MECHANISM]);
    send(stream, &out).await?;

    let frame = read_auth_message(stream, rbuf).await?;
    let client_first = sasl_initial_response(frame.body())?;
    let (server, server_first) = server.handle_client_first(client_first).map_err(|e| scram_error(e, user))?;
    out.clear();
    build::auth_sasl_continue(&mut out, &server_first);
    send(stream, &out).await?;

    let frame = read_auth_message(stream, rbuf).await?;
    let ok = server.handle_client_final(frame.body()).map_err(|e| scram_error(e, user))?;
    out.clear();
    build::auth_sasl_final(&mut out, &ok.server_final);
    send(stream, &out).await?;

    Ok(match secret {
        Some(Secret::Plain(p)) => ServerCredential::Password(p.clone()),
        Some(Secret::Scram(s)) => {
            ServerCredential::ScramClientKey { client_key: ok.client_key, server_key: Some(s.server_key) }
        }
        // A mock exchange never succeeds; kept total rather than panicking.
        _ => return Err(failed(user)),
    })
}

/// Reads SASLInitialResponse: mechanism name, then the length-prefixed data.
pub(super) fn sasl_initial_response(body: &[u8]) -> Result<&[u8], AuthError> {
    let malformed = || AuthError::Protocol("malformed SASLInitialResponse message".into());
    let end = body.iter().position(|&b| b == 0).ok_or_else(malformed)?;
    if &body[..end] != MECHANISM.as_bytes() {
        return Err(AuthError::Protocol("client selected an invalid SASL authentication mechanism".into()));
    }
    let rest = &body[end + 1..];
    let (len, data) = rest.split_at_checked(4).ok_or_else(malformed)?;
    let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
    if usize::try_from(len).ok() != Some(data.len()) {
        return Err(malformed());
    }
    Ok(data)
}

pub(super) fn failed(user: &str) -> AuthError {
    AuthError::PasswordFailed { user: user.to_owned() }
}

fn scram_error(e: ScramError, user: &str) -> AuthError {
    match e {
        ScramError::InvalidProof => failed(user),
        other => AuthError::Protocol(other.to_string()),
    }
}

/// A salt that is the same for a user across logins, but unpredictable:
/// derived from a key drawn once per process. It serves mock exchanges and
/// plain-password users, so that neither differs from a real SCRAM user on
/// the wire. The key is set once and never changes afterwards.
fn stable_salt(user: &str) -> Vec<u8> {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    let key = KEY.get_or_init(rand::random);
    hmac(key, user.as_bytes())[..DEFAULT_SALT_LEN].to_vec()
}

pub(super) async fn send<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> Result<(), AuthError> {
    stream.write_all(bytes).await?;
    stream.flush().await?;
    Ok(())
}

/// Reads the client's next message, which must be a PasswordMessage-type ('p').
pub(super) async fn read_auth_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
) -> Result<Frame, AuthError> {
    loop {
        match split_message(rbuf, HEADER_LEN + MAX_AUTH_MESSAGE) {
            Ok(Some(frame)) => {
                return match frame.tag() {
                    b'p' => Ok(frame),
                    b'X' => Err(AuthError::Io(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "client terminated the connection during authentication",
                    ))),
                    tag => Err(AuthError::Protocol(format!(
                        "expected password response, got message type {}",
                        char::from(tag).escape_default()
                    ))),
                };
            }
            Ok(None) => {}
            Err(FrameError::TooLarge { .. }) => {
                return Err(AuthError::Protocol("password or SASL message too large".into()));
            }
            Err(e) => return Err(AuthError::Protocol(e.to_string())),
        }
        if stream.read_buf(rbuf).await? == 0 {
            return Err(AuthError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

#[cfg(test)]
#[path = "exchange_tests.rs"]
mod tests;
