//! Message framing for the replication connection: bytes from the socket →
//! backend messages, handing the decoding of each message to `postgres-protocol`.
//!
//! Hand-written framing because `postgres_protocol::message::backend::Message`
//! does not know `CopyBothResponse` ('W'), the answer to START_REPLICATION;
//! everything else is parsed by the crate.

use bytes::{Buf, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{ErrorFields, Header, Message};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::error::{ServerError, SourceError};

/// One message from the server.
pub enum Backend {
    /// Anything `postgres-protocol` parses.
    Message(Message),
    /// `CopyBothResponse`: the server switched to streaming.
    CopyBothResponse,
}

/// Reads the next complete message, buffering in `buf`.
pub async fn read_message<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    buf: &mut BytesMut,
) -> Result<Backend, SourceError> {
    loop {
        if let Some(header) = Header::parse(buf).map_err(|e| SourceError::Protocol(e.to_string()))? {
            // len counts itself (4 bytes) but not the tag; Header::parse rejects len < 4.
            let total = header.len() as usize + 1;
            if buf.len() >= total {
                if header.tag() == b'W' {
                    buf.advance(total);
                    return Ok(Backend::CopyBothResponse);
                }
                return match Message::parse(buf) {
                    Ok(Some(m)) => Ok(Backend::Message(m)),
                    Ok(None) => Err(SourceError::Protocol("incomplete message after framing".into())),
                    Err(e) => Err(SourceError::Protocol(e.to_string())),
                };
            }
            buf.reserve(total - buf.len());
        }
        let n = r.read_buf(buf).await.map_err(SourceError::io("reading from the primary"))?;
        if n == 0 {
            return Err(SourceError::Closed);
        }
    }
}

/// Collects the fields of an ErrorResponse/NoticeResponse.
pub fn server_error(mut fields: ErrorFields<'_>) -> ServerError {
    let mut e = ServerError::default();
    loop {
        match fields.next() {
            Ok(Some(f)) => {
                let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
                match f.type_() {
                    b'V' => e.severity = v,
                    b'S' if e.severity.is_empty() => e.severity = v,
                    b'C' => e.code = v,
                    b'M' => e.message = v,
                    b'D' => e.detail = Some(v),
                    b'H' => e.hint = Some(v),
                    _ => {}
                }
            }
            Ok(None) => break,
            Err(err) => {
                e.message.push_str(&format!(" (malformed error fields: {err})"));
                break;
            }
        }
    }
    e
}
