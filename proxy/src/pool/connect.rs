//! STUB — replaced by the `auth` branch. Same public API.
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::ServerCredential;
use crate::protocol::{fields, frame};

pub struct ServerStartup {
    pub stream: TcpStream,
    pub params: Vec<(String, String)>,
    pub backend_pid: i32,
    pub backend_secret: i32,
    pub leftover: BytesMut,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("{message}")]
    Server { code: String, message: String, frame: bytes::Bytes },
    #[error("{0}")]
    Protocol(String),
}

pub async fn connect(
    addr: &tandem_core::NodeAddr,
    user: &str,
    database: &str,
    startup_params: &[(String, String)],
    _cred: &ServerCredential,
    timeout: Duration,
) -> Result<ServerStartup, ConnectError> {
    tokio::time::timeout(timeout, async {
        let mut stream = TcpStream::connect((addr.host.as_str(), addr.port)).await?;
        stream.set_nodelay(true)?;
        let mut body = Vec::new();
        body.extend_from_slice(&196608u32.to_be_bytes());
        for (k, v) in [("user", user), ("database", database)]
            .into_iter()
            .chain(startup_params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut pkt = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        pkt.extend_from_slice(&body);
        stream.write_all(&pkt).await?;
        let mut buf = BytesMut::with_capacity(4096);
        let mut params = Vec::new();
        let (mut pid, mut secret) = (0, 0);
        loop {
            let f = loop {
                match frame::split_message(&mut buf, 1 << 20).map_err(|e| ConnectError::Protocol(e.to_string()))? {
                    Some(f) => break f,
                    None => {
                        if stream.read_buf(&mut buf).await? == 0 {
                            return Err(ConnectError::Protocol("server closed".into()));
                        }
                    }
                }
            };
            match f.tag() {
                b'R' => {
                    let mut b = f.body();
                    if b.get_i32() != 0 {
                        return Err(ConnectError::Protocol("stub supports trust only".into()));
                    }
                }
                b'S' => {
                    let (k, v) = fields::parameter_status(f.body()).map_err(|e| ConnectError::Protocol(e.to_string()))?;
                    params.push((String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned()));
                }
                b'K' => {
                    (pid, secret) = fields::backend_key(f.body()).map_err(|e| ConnectError::Protocol(e.to_string()))?;
                }
                b'E' => {
                    let e = fields::error_fields(f.body()).map_err(|e| ConnectError::Protocol(e.to_string()))?;
                    return Err(ConnectError::Server {
                        code: String::from_utf8_lossy(e.code).into_owned(),
                        message: String::from_utf8_lossy(e.message).into_owned(),
                        frame: f.into_bytes(),
                    });
                }
                b'Z' => {
                    return Ok(ServerStartup { stream, params, backend_pid: pid, backend_secret: secret, leftover: buf })
                }
                _ => {}
            }
        }
    })
    .await
    .map_err(|_| ConnectError::Timeout)?
}
