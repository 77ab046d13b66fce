//! A raw protocol-v3 client for tests that must send bytes no well-behaved driver would:
//! garbage before startup, malformed or oversized messages, half-sent packets, a client
//! that vanishes in the middle of a transaction.
//!
//! Data flow: test → [`RawClient`] (plain TCP to the proxy) → proxy. Messages are built by
//! hand on purpose: the point is to control every byte, which no driver lets us do.

use std::time::Duration;

use anyhow::{anyhow, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a read waits for the proxy before the test fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// One backend message: type byte and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    /// Message type (`b'Z'`, `b'E'`, ...).
    pub tag: u8,
    /// Body after the length word.
    pub body: Vec<u8>,
}

impl Msg {
    /// For an ErrorResponse/NoticeResponse: the value of field `code` (`b'C'` SQLSTATE,
    /// `b'M'` message, `b'S'` severity).
    pub fn field(&self, code: u8) -> Option<String> {
        let mut rest = &self.body[..];
        while let Some((&c, tail)) = rest.split_first() {
            if c == 0 {
                return None;
            }
            let end = tail.iter().position(|b| *b == 0)?;
            if c == code {
                return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
            }
            rest = &tail[end + 1..];
        }
        None
    }

    /// SQLSTATE of an ErrorResponse.
    pub fn sqlstate(&self) -> Option<String> {
        (self.tag == b'E').then(|| self.field(b'C')).flatten()
    }
}

/// A typed message: tag, length, body.
pub fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// A simple-protocol Query.
pub fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    msg(b'Q', &body)
}

/// A protocol 3.0 StartupMessage.
pub fn startup(user: &str, database: &str) -> Vec<u8> {
    startup_with(user, database, &[])
}

/// A protocol 3.0 StartupMessage with further settings, as drivers send them.
pub fn startup_with(user: &str, database: &str, settings: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", database)].iter().chain(settings) {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut pkt = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    pkt.extend_from_slice(&body);
    pkt
}

/// A raw connection to the proxy.
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    /// Opens a TCP connection, nothing sent yet.
    pub async fn connect(port: u16) -> anyhow::Result<RawClient> {
        let stream =
            TcpStream::connect(("127.0.0.1", port)).await.with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
        Ok(RawClient { stream, buf: Vec::new() })
    }

    /// Connects and logs in (trust auth), reading up to the first ReadyForQuery.
    pub async fn login(port: u16, user: &str, database: &str) -> anyhow::Result<RawClient> {
        let mut c = RawClient::connect(port).await?;
        c.send(&startup(user, database)).await?;
        let msgs = c.until_ready().await?;
        if let Some(e) = msgs.iter().find(|m| m.tag == b'E') {
            return Err(anyhow!("login refused: {:?}", e.field(b'M')));
        }
        Ok(c)
    }

    /// Writes bytes as they are.
    pub async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await.context("writing to the proxy")
    }

    /// Reads one message; `Ok(None)` when the proxy closed the connection.
    pub async fn recv(&mut self) -> anyhow::Result<Option<Msg>> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
                if len < 4 {
                    return Err(anyhow!("proxy sent a bad length {len}"));
                }
                if self.buf.len() > len {
                    let body = self.buf[5..len + 1].to_vec();
                    let tag = self.buf[0];
                    self.buf.drain(..len + 1);
                    return Ok(Some(Msg { tag, body }));
                }
            }
            let mut chunk = [0u8; 8192];
            let n = match tokio::time::timeout(READ_TIMEOUT, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) => n,
                // A reset counts as closed: the proxy may close with unread input pending.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
                Ok(Err(e)) => return Err(e).context("reading from the proxy"),
                Err(_) => return Err(anyhow!("no answer from the proxy within {READ_TIMEOUT:?}")),
            };
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(anyhow!("proxy closed mid-message ({} bytes pending)", self.buf.len()));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads messages up to and including ReadyForQuery; also stops (without error) at a
    /// close, so a FATAL error is returned as the last message.
    pub async fn until_ready(&mut self) -> anyhow::Result<Vec<Msg>> {
        let mut out = Vec::new();
        while let Some(m) = self.recv().await? {
            let done = m.tag == b'Z';
            out.push(m);
            if done {
                break;
            }
        }
        Ok(out)
    }

    /// Reads everything until the proxy closes the connection.
    pub async fn until_closed(&mut self) -> anyhow::Result<Vec<Msg>> {
        let mut out = Vec::new();
        while let Some(m) = self.recv().await? {
            out.push(m);
        }
        Ok(out)
    }

    /// Sends a simple query and returns its answer up to ReadyForQuery.
    pub async fn simple(&mut self, sql: &str) -> anyhow::Result<Vec<Msg>> {
        self.send(&query(sql)).await?;
        self.until_ready().await
    }

    /// The raw answer of the proxy's first reply byte (for SSLRequest: `S` or `N`).
    pub async fn read_byte(&mut self) -> anyhow::Result<u8> {
        let mut b = [0u8; 1];
        tokio::time::timeout(READ_TIMEOUT, self.stream.read_exact(&mut b))
            .await
            .map_err(|_| anyhow!("no answer byte"))?
            .context("reading one byte")?;
        Ok(b[0])
    }
}

/// The first ErrorResponse in `msgs`, as (SQLSTATE, message).
pub fn first_error(msgs: &[Msg]) -> Option<(String, String)> {
    msgs.iter().find(|m| m.tag == b'E').map(|m| (m.field(b'C').unwrap_or_default(), m.field(b'M').unwrap_or_default()))
}

/// The text of the first column of every DataRow in `msgs`.
pub fn first_column(msgs: &[Msg]) -> Vec<Option<String>> {
    msgs.iter()
        .filter(|m| m.tag == b'D' && m.body.len() >= 6)
        .map(|m| {
            let len = i32::from_be_bytes([m.body[2], m.body[3], m.body[4], m.body[5]]);
            if len < 0 {
                return None;
            }
            let end = (6 + len as usize).min(m.body.len());
            Some(String::from_utf8_lossy(&m.body[6..end]).into_owned())
        })
        .collect()
}
