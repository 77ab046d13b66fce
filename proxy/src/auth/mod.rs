//! STUB — replaced by the `auth` branch. Same public API.
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::{AuthMethod, ProxyConfig};

#[derive(Clone, Debug)]
pub enum Secret {
    Plain(String),
}

#[derive(Clone, Debug)]
pub enum ServerCredential {
    None,
    Password(String),
    Md5Hash(String),
    ScramClientKey { client_key: [u8; 32], server_key: Option<[u8; 32]> },
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("password authentication failed for user \"{0}\"")]
    Failed(String),
}

impl AuthError {
    pub fn sqlstate(&self) -> &'static str {
        "28P01"
    }
}

pub async fn authenticate_client<S: AsyncRead + AsyncWrite + Unpin>(
    _stream: &mut S,
    _rbuf: &mut BytesMut,
    _method: AuthMethod,
    _user: &str,
    secret: Option<&Secret>,
) -> Result<ServerCredential, AuthError> {
    Ok(match secret {
        Some(Secret::Plain(p)) => ServerCredential::Password(p.clone()),
        None => ServerCredential::None,
    })
}

pub struct SecretStore {
    users: Vec<(String, String)>,
}

impl SecretStore {
    pub fn new(cfg: &ProxyConfig) -> Self {
        SecretStore { users: cfg.users.iter().map(|u| (u.name.clone(), u.password.clone())).collect() }
    }
    pub async fn lookup(&self, user: &str, _server: &tandem_core::NodeAddr) -> Result<Option<Secret>, AuthError> {
        Ok(self.users.iter().find(|(n, _)| n == user).map(|(_, p)| Secret::Plain(p.clone())))
    }
}
