//! TLS from the proxy to its servers: `pool → server` connections and the proxy's own control
//! connections (health checks, catalog look-ups, auth_query), set by `server_tls_mode` with
//! the meanings of libpq's `sslmode` (PgBouncer's `server_tls_sslmode`).
//!
//! Pooled connections speak the protocol by hand ([`crate::pool::connect`]), so the
//! SSLRequest exchange for them is here ([`ServerTls::negotiate`]); the control connections
//! use tokio-postgres, which gets the same rustls configuration through tokio-postgres-rustls
//! ([`ServerTls::connect_control`]).

use std::fs::File;
use std::io::BufReader;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_rustls::TlsConnector;

use crate::config::{ProxyConfig, ServerTlsMode};
use crate::pool::ConnectError;
use crate::stream::{MaybeTls, ServerStream};

/// SSLRequest: length 8, then the code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Server TLS could not be set up from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    /// The CA file could not be read.
    #[error("cannot read server_tls_ca_file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The CA file holds no usable certificate.
    #[error("no CA certificate found in server_tls_ca_file {0}")]
    NoCa(String),
    /// rustls refused the configuration.
    #[error("server TLS: {0}")]
    Rustls(#[from] rustls::Error),
    /// The certificate verifier could not be built.
    #[error("server TLS verifier: {0}")]
    Verifier(String),
}

/// How the proxy encrypts its connections to servers; built once at start-up.
pub struct ServerTls {
    mode: ServerTlsMode,
    /// `None` when `mode` is `disable`.
    config: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("mode", &self.mode).finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Builds the TLS client configuration `cfg` asks for (reading the CA file, if any).
    pub fn new(cfg: &ProxyConfig) -> Result<ServerTls, ServerTlsError> {
        let mode = cfg.server_tls_mode;
        if mode == ServerTlsMode::Disable {
            return Ok(ServerTls { mode, config: None });
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match (mode, &cfg.server_tls_ca_file) {
            (ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull, Some(path)) => {
                let roots = Arc::new(load_roots(path)?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| ServerTlsError::Verifier(e.to_string()))?;
                if mode == ServerTlsMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(AnyHostName(webpki))
                }
            }
            // `validate` refuses a verifying mode without a CA file.
            (ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull, None) => {
                return Err(ServerTlsError::Verifier("verify-ca and verify-full need server_tls_ca_file".into()))
            }
            _ => Arc::new(AnyCertificate(provider.clone())),
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(ServerTls { mode, config: Some(Arc::new(config)) })
    }

    /// Plain TCP only (`server_tls_mode = "disable"`).
    pub fn disabled() -> ServerTls {
        ServerTls { mode: ServerTlsMode::Disable, config: None }
    }

    /// Asks the server at `host` for TLS on a fresh connection and runs the handshake,
    /// as the mode says: `prefer` stays plain when the server declines, the other modes
    /// then fail.
    pub async fn negotiate(&self, mut tcp: TcpStream, host: &str) -> Result<ServerStream, ConnectError> {
        let Some(config) = &self.config else { return Ok(MaybeTls::Plain(tcp)) };
        tcp.write_all(&SSL_REQUEST).await?;
        // Exactly one byte: anything the server sent after it would be unencrypted data
        // smuggled in ahead of the handshake (CVE-2021-23222) and must not be read as
        // the server's.
        let answer = tcp.read_u8().await?;
        match answer {
            b'S' => {
                let name = ServerName::try_from(host.to_owned())
                    .map_err(|_| ConnectError::Tls(format!("{host:?} is not a valid TLS server name")))?;
                let tls = TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| ConnectError::Tls(e.to_string()))?;
                Ok(MaybeTls::Tls(Box::new(tls)))
            }
            b'N' if self.mode == ServerTlsMode::Prefer => Ok(MaybeTls::Plain(tcp)),
            b'N' => Err(ConnectError::Tls("the server does not accept TLS connections".into())),
            other => Err(ConnectError::Tls(format!("unexpected answer {other:#04x} to SSLRequest"))),
        }
    }

    /// Opens a tokio-postgres connection with `pg` under this TLS mode; the connection
    /// runs on a spawned task, which ends when the client is dropped.
    pub async fn connect_control(
        &self,
        mut pg: tokio_postgres::Config,
    ) -> Result<(tokio_postgres::Client, JoinHandle<()>), tokio_postgres::Error> {
        let Some(config) = &self.config else {
            let (client, connection) = pg.ssl_mode(SslMode::Disable).connect(tokio_postgres::NoTls).await?;
            return Ok((client, tokio::spawn(drive(connection))));
        };
        let mode = if self.mode == ServerTlsMode::Prefer { SslMode::Prefer } else { SslMode::Require };
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new((**config).clone());
        let (client, connection) = pg.ssl_mode(mode).connect(tls).await?;
        Ok((client, tokio::spawn(drive(connection))))
    }
}

/// Runs a control connection until its client is dropped or the server goes away.
async fn drive<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(connection: F) {
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "control connection ended with an error");
    }
}

/// Reads every certificate of a PEM file into a root store.
fn load_roots(path: &std::path::Path) -> Result<RootCertStore, ServerTlsError> {
    let name = path.display().to_string();
    let read_err = |source| ServerTlsError::Read { path: name.clone(), source };
    let mut reader = BufReader::new(File::open(path).map_err(read_err)?);
    let certs = rustls_pemfile::certs(&mut reader).collect::<Result<Vec<_>, _>>().map_err(read_err)?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(ServerTlsError::NoCa(name));
    }
    Ok(roots)
}

/// `prefer` and `require`: encryption without authentication, as libpq does without a
/// root certificate. The handshake signatures are still checked, so the session key is
/// bound to whatever certificate the server sent.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a configured CA, but the certificate need not name
/// the host (libpq's verify-ca).
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The name is checked last, after the chain: a name mismatch means the chain is good.
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
