//! TLS on Tandem's own connections to PostgreSQL servers, shared by the proxy (its pooled
//! and control connections) and the replicator (its replication stream and writer sessions).
//!
//! PostgreSQL starts TLS inside its own protocol: the client sends an SSLRequest, the server
//! answers `S` or `N` in one byte, and only after `S` does the TLS handshake begin.
//! [`request_tls`] does that exchange on a fresh TCP connection for code that speaks the
//! protocol by hand; [`connect`] opens a tokio-postgres connection with the same rustls
//! configuration. [`client_config`] builds it for libpq's three levels of checking.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// SSLRequest: length 8, then the code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// What is checked of a server's certificate; libpq's `sslmode` levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Nothing (`prefer`, `require`): encryption without authentication. The handshake
    /// signatures are still checked, so the session is bound to the certificate sent.
    Nothing,
    /// The chain must lead to a configured CA; any host name (`verify-ca`).
    Ca,
    /// As [`Verify::Ca`], and the certificate must name the host (`verify-full`).
    Full,
}

/// A TLS client configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The CA file could not be read.
    #[error("cannot read CA file {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The CA file holds no usable certificate.
    #[error("no CA certificate found in {0}")]
    NoCa(String),
    /// Checking a certificate needs a CA file.
    #[error("verifying the server's certificate needs a CA file")]
    CaMissing,
    /// rustls refused the configuration.
    #[error("TLS configuration refused")]
    Rustls(#[from] rustls::Error),
    /// The certificate verifier could not be built.
    #[error("TLS certificate verifier: {0}")]
    Verifier(String),
}

/// Why TLS could not be started on a connection.
#[derive(Debug, thiserror::Error)]
pub enum NegotiateError {
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The server answered `N` and TLS was required.
    #[error("the server does not accept TLS connections")]
    Refused,
    /// The server answered something else than `S` or `N`.
    #[error("unexpected answer {0:#04x} to SSLRequest")]
    Unexpected(u8),
    /// The host cannot be a TLS server name.
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    /// The handshake failed (a certificate check among others).
    #[error("{0}")]
    Handshake(std::io::Error),
}

/// Where a connection stands after [`request_tls`].
pub enum Negotiated {
    /// The server declined and TLS was optional.
    Plain(TcpStream),
    /// Encrypted.
    Tls(Box<TlsStream<TcpStream>>),
}

/// Builds the rustls client configuration for `verify`, with the CAs of `ca_file` for the
/// checking levels.
pub fn client_config(verify: Verify, ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, SetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::Nothing => Arc::new(AnyCertificate(provider.clone())),
        Verify::Ca | Verify::Full => {
            let roots = Arc::new(load_roots(ca_file.ok_or(SetupError::CaMissing)?)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| SetupError::Verifier(e.to_string()))?;
            if verify == Verify::Full {
                webpki
            } else {
                Arc::new(AnyHostName(webpki))
            }
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Sends an SSLRequest on a fresh connection to `host` and, if the server agrees, runs the
/// handshake with `config`. When the server declines, the connection stays plain unless
/// `required`.
pub async fn request_tls(
    mut tcp: TcpStream,
    host: &str,
    config: &Arc<rustls::ClientConfig>,
    required: bool,
) -> Result<Negotiated, NegotiateError> {
    tcp.write_all(&SSL_REQUEST).await?;
    // Exactly one byte: anything the server sent after it would be unencrypted data slipped
    // in ahead of the handshake (CVE-2021-23222) and must not be read as the server's.
    match tcp.read_u8().await? {
        b'S' => {
            let name = ServerName::try_from(host.to_owned()).map_err(|_| NegotiateError::ServerName(host.into()))?;
            let tls = TlsConnector::from(config.clone()).connect(name, tcp).await.map_err(NegotiateError::Handshake)?;
            Ok(Negotiated::Tls(Box::new(tls)))
        }
        b'N' if !required => Ok(Negotiated::Plain(tcp)),
        b'N' => Err(NegotiateError::Refused),
        other => Err(NegotiateError::Unexpected(other)),
    }
}

/// Opens a tokio-postgres connection with `pg`, whose `sslmode` (disable, prefer, require)
/// decides whether `tls` is used (`None`: never), and runs it on a spawned task that ends when
/// the client is dropped, logging how it ended.
pub async fn connect(
    pg: &tokio_postgres::Config,
    tls: Option<&rustls::ClientConfig>,
) -> Result<(tokio_postgres::Client, JoinHandle<()>), tokio_postgres::Error> {
    let task = match tls {
        Some(config) => {
            let (client, connection) =
                pg.connect(tokio_postgres_rustls::MakeRustlsConnect::new(config.clone())).await?;
            (client, tokio::spawn(drive(connection)))
        }
        None => {
            let (client, connection) = pg.connect(tokio_postgres::NoTls).await?;
            (client, tokio::spawn(drive(connection)))
        }
    };
    Ok(task)
}

async fn drive<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(connection: F) {
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "server connection ended with an error");
    }
}

/// Reads every certificate of a PEM file into a root store.
fn load_roots(path: &Path) -> Result<RootCertStore, SetupError> {
    let name = path.display().to_string();
    let read_err = |source| SetupError::Read { path: name.clone(), source };
    let mut reader = BufReader::new(File::open(path).map_err(read_err)?);
    let certs = rustls_pemfile::certs(&mut reader).collect::<Result<Vec<_>, _>>().map_err(read_err)?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(SetupError::NoCa(name));
    }
    Ok(roots)
}

/// [`Verify::Nothing`]: accepts any certificate, checks the handshake signatures.
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

/// [`Verify::Ca`]: the WebPKI chain check without the host name check.
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
