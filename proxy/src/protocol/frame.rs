//! Cutting byte streams into protocol messages.
//!
//! Written by hand rather than with pgwire's codec: the data path must forward
//! the exact bytes a peer sent (pgwire decodes every field into owned,
//! UTF-8-repaired strings), and it must do so without an allocation per
//! message. A [`Frame`] is a zero-copy slice of the read buffer that still
//! holds the 5-byte header, so forwarding it is a single `extend`.

use bytes::{Buf, Bytes, BytesMut};

/// Length of a typed message header: tag byte plus 4-byte length.
pub const HEADER_LEN: usize = 5;

/// How much buffer space a partial message may reserve ahead of the bytes
/// that arrived. Reserving its whole announced length would let a 5-byte
/// header cost `max_len` (256 MiB by default) per client (found by the
/// `frame` fuzz target); the buffer grows as the body actually arrives.
pub const MAX_RESERVE_AHEAD: usize = 64 * 1024;

/// PostgreSQL's own limit for untyped startup-phase packets
/// (`MAX_STARTUP_PACKET_LENGTH` in pqcomm.h).
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// One complete typed message: tag, length and body, as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    bytes: Bytes,
}

impl Frame {
    /// The message type byte (`b'Q'`, `b'P'`, `b'Z'`, ...).
    pub fn tag(&self) -> u8 {
        self.bytes[0]
    }

    /// The message body, after the header.
    pub fn body(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..]
    }

    /// The whole message, header included, ready to forward.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Takes the whole message out.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// Wraps a whole message built elsewhere (header included).
    ///
    /// Returns `None` unless `bytes` is exactly one well-formed message.
    pub fn from_bytes(bytes: Bytes) -> Option<Frame> {
        if bytes.len() < HEADER_LEN {
            return None;
        }
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        (len + 1 == bytes.len() && len >= 4).then_some(Frame { bytes })
    }
}

/// A peer sent bytes that cannot be a protocol message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length field is below its own size.
    #[error("invalid message length {0}")]
    BadLength(u32),
    /// The message is larger than the configured limit.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
}

/// Splits one typed message off the front of `buf`, if a whole one is there.
///
/// `max_len` bounds the announced length so that a hostile peer cannot make
/// the proxy buffer a gigabyte. On `Ok(None)` the caller reads more bytes;
/// [`needed`] tells how many are still missing.
pub fn split_message(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, FrameError> {
    Ok(message_len(buf, max_len)?.map(|total| Frame { bytes: buf.split_to(total).freeze() }))
}

/// Like [`split_message`], but only measures the message at the front of
/// `buf` (header included) and leaves it there: for callers that look at a
/// message in place and then `advance` past it, without the reference
/// counting of splitting it off.
pub fn message_len(buf: &mut BytesMut, max_len: usize) -> Result<Option<usize>, FrameError> {
    let total = measure(buf, max_len)?;
    if total.is_none() && buf.len() >= HEADER_LEN {
        buf.reserve(needed(buf).min(MAX_RESERVE_AHEAD));
    }
    Ok(total)
}

/// Length (header included) of the whole message at the front of `buf`, `None` while it is
/// incomplete; checks the length word as [`split_message`] does. Reserves nothing, so it
/// works on any slice (a position inside a read buffer).
pub fn measure(buf: &[u8], max_len: usize) -> Result<Option<usize>, FrameError> {
    let Some(header) = buf.get(..HEADER_LEN) else { return Ok(None) };
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len < 4 {
        return Err(FrameError::BadLength(len));
    }
    let total = len as usize + 1;
    if total > max_len {
        return Err(FrameError::TooLarge { len: total, max: max_len });
    }
    Ok((buf.len() >= total).then_some(total))
}

/// Bytes still missing before the message at the front of `buf` is complete
/// (0 if it is complete or the header is not yet known).
pub fn needed(buf: &[u8]) -> usize {
    if buf.len() < HEADER_LEN {
        return 0;
    }
    let total = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize + 1;
    total.saturating_sub(buf.len())
}

/// Splits one untyped startup-phase packet (length, then body) off `buf`.
///
/// Returns the body without the length word.
pub fn split_startup(buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 {
        return Err(FrameError::BadLength(len));
    }
    let len = len as usize;
    if len > MAX_STARTUP_PACKET {
        return Err(FrameError::TooLarge { len, max: MAX_STARTUP_PACKET });
    }
    if buf.len() < len {
        return Ok(None);
    }
    let mut packet = buf.split_to(len);
    packet.advance(4);
    Ok(Some(packet.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn splits_back_to_back_messages() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&msg(b'Q', b"select 1\0"));
        buf.extend_from_slice(&msg(b'S', b""));
        let a = split_message(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!((a.tag(), a.body()), (b'Q', &b"select 1\0"[..]));
        let b = split_message(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!((b.tag(), b.body().len()), (b'S', 0));
        assert!(split_message(&mut buf, 1 << 20).unwrap().is_none());
    }

    #[test]
    fn waits_for_partial_messages() {
        let whole = msg(b'Q', b"select 1\0");
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            assert!(split_message(&mut buf, 1 << 20).unwrap().is_none(), "cut at {cut}");
            assert_eq!(buf.len(), cut);
        }
        assert_eq!(needed(&whole[..7]), whole.len() - 7);
    }

    #[test]
    fn rejects_bad_and_oversized_lengths() {
        let mut buf = BytesMut::from(&[b'Q', 0, 0, 0, 3][..]);
        assert_eq!(split_message(&mut buf, 100), Err(FrameError::BadLength(3)));
        let mut buf = BytesMut::from(&[b'Q', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(split_message(&mut buf, 1 << 20), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn announced_length_does_not_reserve_memory() {
        let mut buf = BytesMut::from(&[b'Q', 0x3f, 0xff, 0xff, 0xf0][..]);
        assert!(split_message(&mut buf, 1 << 30).unwrap().is_none());
        assert!(buf.capacity() <= HEADER_LEN + MAX_RESERVE_AHEAD, "reserved {}", buf.capacity());
    }

    #[test]
    fn splits_startup_packets() {
        let mut buf = BytesMut::from(&[0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f, 9][..]);
        let body = split_startup(&mut buf).unwrap().unwrap();
        assert_eq!(&body[..], &[4, 0xd2, 0x16, 0x2f]);
        assert_eq!(&buf[..], &[9]);
        let mut huge = BytesMut::from(&[0, 1, 0, 0][..]);
        assert!(split_startup(&mut huge).is_err());
        let mut tiny = BytesMut::from(&[0, 0, 0, 2][..]);
        assert!(split_startup(&mut tiny).is_err());
    }

    #[test]
    fn frame_from_bytes_checks_length() {
        assert!(Frame::from_bytes(Bytes::from(msg(b'Z', b"I"))).is_some());
        assert!(Frame::from_bytes(Bytes::from_static(b"Z\0\0\0\x09I")).is_none());
    }
}
