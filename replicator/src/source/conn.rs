//! A `replication=database` connection to the primary, written on the raw
//! protocol: startup, authentication (cleartext, md5, SCRAM-SHA-256) and the
//! replication commands Tandem uses (IDENTIFY_SYSTEM, CREATE_REPLICATION_SLOT,
//! START_REPLICATION). It feeds `stream.rs`, which takes over the socket once
//! START_REPLICATION switched it to CopyBoth.
//!
//! Hand-written because upstream tokio-postgres cannot open replication
//! connections (no `replication` startup parameter, no CopyBoth). Message
//! encoding, decoding and SCRAM come from `postgres-protocol`.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tandem_core::Lsn;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::config::{Host, SslMode};

use super::error::SourceError;
use super::wire::{read_message, server_error, Backend};

/// What the socket must offer (a TCP or Unix stream, or a duplex in tests).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Settings sent at startup so that pgoutput's text values have one fixed
/// format, whatever the primary's defaults are (the applier writes them back
/// with the same settings).
pub const OUTPUT_SETTINGS: &[(&str, &str)] = &[
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("TimeZone", "UTC"),
    ("bytea_output", "hex"),
];

/// One row of a simple-query result, values in text form.
#[derive(Clone, Debug)]
pub struct SimpleRow {
    columns: Arc<[String]>,
    values: Vec<Option<String>>,
}

impl SimpleRow {
    /// The value of the named column (`None` for NULL or no such column).
    pub fn get(&self, name: &str) -> Option<&str> {
        let i = self.columns.iter().position(|c| c == name)?;
        self.values.get(i)?.as_deref()
    }
}

/// `IDENTIFY_SYSTEM`'s answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemInfo {
    /// Cluster's system identifier (stable across restarts, differs between clusters).
    pub system_id: String,
    /// Current timeline.
    pub timeline: u32,
    /// Current WAL flush position.
    pub xlog_pos: Lsn,
    /// Database the connection is attached to.
    pub database: Option<String>,
}

/// `CREATE_REPLICATION_SLOT`'s answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedSlot {
    /// The slot's name.
    pub slot_name: String,
    /// Where the slot's stream starts: transactions committing at or after it
    /// are streamed, those before it are in the exported snapshot.
    pub consistent_point: Lsn,
    /// Name of the exported snapshot (`SET TRANSACTION SNAPSHOT`), when asked for.
    pub snapshot_name: Option<String>,
}

/// An authenticated replication connection, ready for commands.
pub struct ReplicationConnection {
    pub(super) io: Box<dyn Io>,
    pub(super) rbuf: BytesMut,
    wbuf: BytesMut,
    backend_pid: i32,
}

impl std::fmt::Debug for ReplicationConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConnection").field("backend_pid", &self.backend_pid).finish()
    }
}

impl ReplicationConnection {
    /// Connects to the server `config` names, in replication mode, attached to `database`.
    /// TLS follows the DSN's `sslmode` (see [`open_socket`]).
    pub async fn connect(
        config: &tokio_postgres::Config,
        database: &str,
        application_name: &str,
    ) -> Result<ReplicationConnection, SourceError> {
        let mut params: Vec<(&str, &str)> =
            vec![("database", database), ("replication", "database"), ("application_name", application_name)];
        params.extend_from_slice(OUTPUT_SETTINGS);
        Self::connect_with_params(config, &params).await
    }

    /// Connects to the server `config` names with the given startup
    /// parameters (besides `user`) and authenticates. Also opens the
    /// applier's ordinary (non-replication) writer sessions, which take the
    /// socket over with [`Self::into_parts`].
    pub(crate) async fn connect_with_params(
        config: &tokio_postgres::Config,
        params: &[(&str, &str)],
    ) -> Result<ReplicationConnection, SourceError> {
        let user = config.get_user().ok_or_else(|| SourceError::Config("the DSN must name a user".into()))?;
        let timeout = config.get_connect_timeout().copied().unwrap_or(Duration::from_secs(10));
        let io = open_socket(config, timeout).await?;
        Self::startup(io, user, config.get_password(), params).await
    }

    /// The socket and whatever the server sent after its ReadyForQuery.
    pub(crate) fn into_parts(self) -> (Box<dyn Io>, BytesMut) {
        (self.io, self.rbuf)
    }

    /// Runs startup (`user` plus `params`) and authentication over an already open socket.
    pub async fn startup(
        io: Box<dyn Io>,
        user: &str,
        password: Option<&[u8]>,
        params: &[(&str, &str)],
    ) -> Result<ReplicationConnection, SourceError> {
        let mut conn =
            ReplicationConnection { io, rbuf: BytesMut::with_capacity(8192), wbuf: BytesMut::new(), backend_pid: 0 };
        let all = std::iter::once(("user", user)).chain(params.iter().copied());
        frontend::startup_message(all, &mut conn.wbuf)
            .map_err(|e| SourceError::Config(format!("startup message: {e}")))?;
        conn.flush().await?;
        conn.authenticate(user, password).await?;
        loop {
            match conn.read().await? {
                Backend::Message(Message::BackendKeyData(k)) => conn.backend_pid = k.process_id(),
                Backend::Message(Message::ParameterStatus(_)) | Backend::Message(Message::NoticeResponse(_)) => {}
                Backend::Message(Message::ReadyForQuery(_)) => return Ok(conn),
                Backend::Message(Message::ErrorResponse(e)) => {
                    return Err(SourceError::Server(server_error(e.fields())))
                }
                _ => return Err(SourceError::Protocol("unexpected message during startup".into())),
            }
        }
    }

    async fn authenticate(&mut self, user: &str, password: Option<&[u8]>) -> Result<(), SourceError> {
        let need_password = || SourceError::Auth("the server asks for a password but the DSN has none".into());
        let mut scram: Option<ScramSha256> = None;
        loop {
            match self.read().await? {
                Backend::Message(Message::AuthenticationOk) => return Ok(()),
                Backend::Message(Message::AuthenticationCleartextPassword) => {
                    let pw = password.ok_or_else(need_password)?;
                    frontend::password_message(pw, &mut self.wbuf).map_err(|e| SourceError::Auth(e.to_string()))?;
                    self.flush().await?;
                }
                Backend::Message(Message::AuthenticationMd5Password(body)) => {
                    let pw = password.ok_or_else(need_password)?;
                    let hash = md5_hash(user.as_bytes(), pw, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf)
                        .map_err(|e| SourceError::Auth(e.to_string()))?;
                    self.flush().await?;
                }
                Backend::Message(Message::AuthenticationSasl(body)) => {
                    let pw = password.ok_or_else(need_password)?;
                    let mut mechanisms = body.mechanisms();
                    let mut has_scram = false;
                    while let Some(m) = mechanisms.next().map_err(|e| SourceError::Protocol(e.to_string()))? {
                        has_scram |= m == SCRAM_SHA_256;
                    }
                    if !has_scram {
                        return Err(SourceError::Auth("server offers no SASL mechanism we support".into()));
                    }
                    // No channel binding: this connection has no TLS.
                    let s = ScramSha256::new(pw, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut self.wbuf)
                        .map_err(|e| SourceError::Auth(e.to_string()))?;
                    self.flush().await?;
                    scram = Some(s);
                }
                Backend::Message(Message::AuthenticationSaslContinue(body)) => {
                    let s = scram.as_mut().ok_or_else(|| SourceError::Protocol("SASL continue before start".into()))?;
                    s.update(body.data()).map_err(|e| SourceError::Auth(e.to_string()))?;
                    frontend::sasl_response(s.message(), &mut self.wbuf)
                        .map_err(|e| SourceError::Auth(e.to_string()))?;
                    self.flush().await?;
                }
                Backend::Message(Message::AuthenticationSaslFinal(body)) => {
                    let s = scram.as_mut().ok_or_else(|| SourceError::Protocol("SASL final before start".into()))?;
                    s.finish(body.data()).map_err(|e| SourceError::Auth(e.to_string()))?;
                }
                Backend::Message(Message::ErrorResponse(e)) => {
                    return Err(SourceError::Server(server_error(e.fields())))
                }
                _ => return Err(SourceError::Auth("unsupported authentication method".into())),
            }
        }
    }

    /// Process id of the walsender serving this connection.
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// Runs one command with the simple query protocol and returns its rows.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<SimpleRow>, SourceError> {
        frontend::query(sql, &mut self.wbuf).map_err(|e| SourceError::Protocol(e.to_string()))?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut columns: Arc<[String]> = Arc::from(Vec::new());
        let mut error = None;
        loop {
            match self.read().await? {
                Backend::Message(Message::RowDescription(desc)) => {
                    let mut names = Vec::new();
                    let mut fields = desc.fields();
                    while let Some(f) = fields.next().map_err(|e| SourceError::Protocol(e.to_string()))? {
                        names.push(f.name().to_owned());
                    }
                    columns = Arc::from(names);
                }
                Backend::Message(Message::DataRow(row)) => {
                    let buf = row.buffer();
                    let mut values = Vec::with_capacity(columns.len());
                    let mut ranges = row.ranges();
                    while let Some(r) = ranges.next().map_err(|e| SourceError::Protocol(e.to_string()))? {
                        values.push(match r {
                            Some(r) => Some(
                                String::from_utf8(buf.get(r).unwrap_or_default().to_vec())
                                    .map_err(|_| SourceError::Protocol("non-UTF-8 value in result".into()))?,
                            ),
                            None => None,
                        });
                    }
                    rows.push(SimpleRow { columns: columns.clone(), values });
                }
                Backend::Message(Message::ErrorResponse(e)) => error = Some(server_error(e.fields())),
                Backend::Message(Message::ReadyForQuery(_)) => {
                    return match error {
                        Some(e) => Err(SourceError::Server(e)),
                        None => Ok(rows),
                    };
                }
                Backend::Message(
                    Message::CommandComplete(_)
                    | Message::EmptyQueryResponse
                    | Message::NoticeResponse(_)
                    | Message::ParameterStatus(_),
                ) => {}
                _ => return Err(SourceError::Protocol(format!("unexpected message in reply to {sql:?}"))),
            }
        }
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemInfo, SourceError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = rows.first().ok_or_else(|| SourceError::Protocol("IDENTIFY_SYSTEM returned no row".into()))?;
        let field =
            |name: &str| row.get(name).ok_or_else(|| SourceError::Protocol(format!("IDENTIFY_SYSTEM without {name}")));
        Ok(SystemInfo {
            system_id: field("systemid")?.to_owned(),
            timeline: field("timeline")?.parse().map_err(|_| SourceError::Protocol("bad timeline".into()))?,
            xlog_pos: parse_lsn(field("xlogpos")?)?,
            database: row.get("dbname").map(str::to_owned),
        })
    }

    /// `CREATE_REPLICATION_SLOT name [TEMPORARY] LOGICAL pgoutput`, exporting a
    /// snapshot when `export_snapshot`. The snapshot stays valid only while
    /// this connection runs no other command: see [`super::slot::HeldSnapshot`].
    pub async fn create_slot(
        &mut self,
        name: &str,
        temporary: bool,
        export_snapshot: bool,
    ) -> Result<CreatedSlot, SourceError> {
        let sql = format!(
            "CREATE_REPLICATION_SLOT {} {}LOGICAL pgoutput {}",
            quote_ident(name),
            if temporary { "TEMPORARY " } else { "" },
            if export_snapshot { "EXPORT_SNAPSHOT" } else { "NOEXPORT_SNAPSHOT" }
        );
        let rows = self.simple_query(&sql).await?;
        let row =
            rows.first().ok_or_else(|| SourceError::Protocol("CREATE_REPLICATION_SLOT returned no row".into()))?;
        Ok(CreatedSlot {
            slot_name: row.get("slot_name").unwrap_or(name).to_owned(),
            consistent_point: parse_lsn(row.get("consistent_point").unwrap_or("0/0"))?,
            snapshot_name: row.get("snapshot_name").map(str::to_owned),
        })
    }

    /// Sends `START_REPLICATION SLOT slot LOGICAL start (proto_version '1',
    /// publication_names 'publication', messages 'true')` and waits for the
    /// switch to CopyBoth. The connection then belongs to a
    /// [`super::stream::ReplicationStream`].
    pub async fn start_replication(&mut self, slot: &str, start: Lsn, publication: &str) -> Result<(), SourceError> {
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {} (proto_version '1', publication_names {}, messages 'true')",
            quote_ident(slot),
            start,
            quote_literal(&quote_ident(publication)),
        );
        frontend::query(&sql, &mut self.wbuf).map_err(|e| SourceError::Protocol(e.to_string()))?;
        self.flush().await?;
        let mut error = None;
        loop {
            match self.read().await? {
                Backend::CopyBothResponse => return Ok(()),
                Backend::Message(Message::ErrorResponse(e)) => error = Some(server_error(e.fields())),
                Backend::Message(Message::NoticeResponse(_) | Message::ParameterStatus(_)) => {}
                Backend::Message(Message::ReadyForQuery(_)) => {
                    return Err(error
                        .map(SourceError::Server)
                        .unwrap_or_else(|| SourceError::Protocol("START_REPLICATION ended without streaming".into())))
                }
                _ => return Err(SourceError::Protocol("unexpected reply to START_REPLICATION".into())),
            }
        }
    }

    /// Sends Terminate and closes the socket.
    pub async fn close(mut self) {
        frontend::terminate(&mut self.wbuf);
        let _ = self.flush().await;
        let _ = self.io.shutdown().await;
    }

    async fn read(&mut self) -> Result<Backend, SourceError> {
        read_message(&mut self.io, &mut self.rbuf).await
    }

    async fn flush(&mut self) -> Result<(), SourceError> {
        let buf = self.wbuf.split();
        self.io.write_all(&buf).await.map_err(SourceError::io("writing to the primary"))?;
        self.io.flush().await.map_err(SourceError::io("writing to the primary"))
    }
}

/// Connects to the first host of `config` that answers. Over TCP, TLS follows the DSN's
/// `sslmode` as libpq reads it: `disable` plain, `prefer` (the default) TLS when the server
/// offers it, `require` TLS or no connection; the certificate is not checked (tokio-postgres's
/// DSN has no verify modes). Unix sockets stay plain, as with libpq.
async fn open_socket(config: &tokio_postgres::Config, timeout: Duration) -> Result<Box<dyn Io>, SourceError> {
    let ssl_mode = config.get_ssl_mode();
    let ports = config.get_ports();
    let mut last_err = SourceError::Config("the DSN names no host".into());
    for (i, host) in config.get_hosts().iter().enumerate() {
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        let attempt = async {
            match host {
                Host::Tcp(h) => {
                    let s = TcpStream::connect((h.as_str(), port)).await?;
                    s.set_nodelay(true)?;
                    if ssl_mode == SslMode::Disable {
                        return Ok::<Box<dyn Io>, std::io::Error>(Box::new(s));
                    }
                    let tls = tls_config().map_err(std::io::Error::other)?;
                    match tandem_pgtls::request_tls(s, h, &tls, ssl_mode == SslMode::Require).await {
                        Ok(tandem_pgtls::Negotiated::Plain(s)) => Ok(Box::new(s) as Box<dyn Io>),
                        Ok(tandem_pgtls::Negotiated::Tls(s)) => Ok(s as Box<dyn Io>),
                        Err(tandem_pgtls::NegotiateError::Io(e)) => Err(e),
                        Err(e) => Err(std::io::Error::other(format!("TLS: {e}"))),
                    }
                }
                #[cfg(unix)]
                Host::Unix(dir) => {
                    let s = tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{port}"))).await?;
                    Ok::<Box<dyn Io>, std::io::Error>(Box::new(s))
                }
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(io)) => return Ok(io),
            Ok(Err(e)) => last_err = SourceError::io(format!("connecting to {host:?}:{port}"))(e),
            Err(_) => {
                last_err = SourceError::io(format!("connecting to {host:?}:{port}"))(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                ))
            }
        }
    }
    Err(last_err)
}

/// Parses an `X/Y` LSN from a server reply.
pub(crate) fn parse_lsn(s: &str) -> Result<Lsn, SourceError> {
    s.parse().map_err(|e: tandem_core::LsnParseError| SourceError::Protocol(e.to_string()))
}

/// Quotes an identifier for SQL / replication commands.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes a string literal for SQL / replication commands.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The rustls configuration of the replicator's connections: encryption without certificate
/// checks (libpq's `prefer` and `require`). Built per connection; the replicator opens few.
pub(crate) fn tls_config() -> Result<Arc<rustls::ClientConfig>, tandem_pgtls::SetupError> {
    tandem_pgtls::client_config(tandem_pgtls::Verify::Nothing, None)
}
