//! TLS for client connections (rustls).
//!
//! Built once from the configured PEM certificate chain and key; a client's
//! SSLRequest is answered 'S' and the handshake runs with this acceptor.

use std::fs::File;
use std::io::BufReader;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// TLS could not be set up from the configured files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate file holds no certificate.
    #[error("no certificate found in {0}")]
    NoCert(String),
    /// The key file holds no private key.
    #[error("no private key found in {0}")]
    NoKey(String),
    /// rustls refused the pair.
    #[error("invalid certificate or key")]
    Rustls(#[from] rustls::Error),
}

/// Builds the acceptor from PEM files.
pub fn acceptor(cfg: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    let cert_path = cfg.cert.display().to_string();
    let key_path = cfg.key.display().to_string();
    let open = |p: &std::path::Path, name: &str| {
        File::open(p).map(BufReader::new).map_err(|source| TlsError::Read { path: name.to_owned(), source })
    };
    let certs = rustls_pemfile::certs(&mut open(&cfg.cert, &cert_path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Read { path: cert_path.clone(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(cert_path));
    }
    let key = rustls_pemfile::private_key(&mut open(&cfg.key, &key_path)?)
        .map_err(|source| TlsError::Read { path: key_path.clone(), source })?
        .ok_or(TlsError::NoKey(key_path))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
