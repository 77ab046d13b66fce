//! TLS from the proxy to its servers: `pool → server` connections and the proxy's own control
//! connections (health checks, catalog look-ups, auth_query), set by `server_tls_mode` with
//! the meanings of libpq's `sslmode` (PgBouncer's `server_tls_sslmode`).
//!
//! Pooled connections speak the protocol by hand ([`crate::pool::connect`]), so they start
//! TLS with [`ServerTls::negotiate`]; the control connections use tokio-postgres, which gets
//! the same rustls configuration ([`ServerTls::connect_control`]). The SSLRequest exchange
//! and the certificate checks are in `tandem-pgtls`, shared with the replicator.

use std::sync::Arc;

use tandem_pgtls::{Negotiated, Verify};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;

use crate::config::{ProxyConfig, ServerTlsMode};
use crate::pool::ConnectError;
use crate::stream::{MaybeTls, ServerStream};

/// Server TLS could not be set up from the configuration.
pub type ServerTlsError = tandem_pgtls::SetupError;

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
        let verify = match mode {
            ServerTlsMode::Disable => return Ok(ServerTls::disabled()),
            ServerTlsMode::Prefer | ServerTlsMode::Require => Verify::Nothing,
            ServerTlsMode::VerifyCa => Verify::Ca,
            ServerTlsMode::VerifyFull => Verify::Full,
        };
        let config = tandem_pgtls::client_config(verify, cfg.server_tls_ca_file.as_deref())?;
        Ok(ServerTls { mode, config: Some(config) })
    }

    /// Plain TCP only (`server_tls_mode = "disable"`).
    pub fn disabled() -> ServerTls {
        ServerTls { mode: ServerTlsMode::Disable, config: None }
    }

    /// Asks the server at `host` for TLS on a fresh connection and runs the handshake,
    /// as the mode says: `prefer` stays plain when the server declines, the other modes
    /// then fail.
    pub async fn negotiate(&self, tcp: TcpStream, host: &str) -> Result<ServerStream, ConnectError> {
        let Some(config) = &self.config else { return Ok(MaybeTls::Plain(tcp)) };
        let required = self.mode != ServerTlsMode::Prefer;
        match tandem_pgtls::request_tls(tcp, host, config, required).await {
            Ok(Negotiated::Plain(tcp)) => Ok(MaybeTls::Plain(tcp)),
            Ok(Negotiated::Tls(tls)) => Ok(MaybeTls::Tls(tls)),
            Err(tandem_pgtls::NegotiateError::Io(e)) => Err(ConnectError::Io(e)),
            Err(e) => Err(ConnectError::Tls(e.to_string())),
        }
    }

    /// Opens a tokio-postgres connection with `pg` under this TLS mode; the connection
    /// runs on a spawned task, which ends when the client is dropped.
    pub async fn connect_control(
        &self,
        mut pg: tokio_postgres::Config,
    ) -> Result<(tokio_postgres::Client, JoinHandle<()>), tokio_postgres::Error> {
        let mode = match self.mode {
            ServerTlsMode::Disable => SslMode::Disable,
            ServerTlsMode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        };
        tandem_pgtls::connect(pg.ssl_mode(mode), self.config.as_deref()).await
    }
}
