//! Large CopyData from the client, forwarded as it arrives.
//!
//! `client → frontend → server`: PostgreSQL takes CopyData messages of up to 1 GiB, and
//! drivers send big ones (sqlx's `copy_in_raw` sends what it is given as one message).
//! Holding such a message whole would cost the proxy its size in memory, and refusing it
//! (beyond `max_message_size`) would refuse what PostgreSQL accepts. So a CopyData of at
//! least [`STREAM_FROM`] bytes that continues a unit on the primary goes to the server's
//! buffer piece by piece as the client's bytes come in: the session's high-water marks then
//! bound its memory as for any other traffic. `max_message_size` still bounds the messages
//! the proxy must hold whole.

use bytes::Buf;
use tandem_core::Role;

use super::session::{End, Session};
use crate::protocol::build::{sqlstate, Severity};
use crate::protocol::frame::HEADER_LEN;

/// CopyData messages at least this long (header included) are streamed.
pub(super) const STREAM_FROM: usize = 64 * 1024;

/// PostgreSQL's limit for the length word of a CopyData message (`PQ_LARGE_MESSAGE_LIMIT`,
/// `MaxAllocSize - 1`).
pub(super) const MAX_COPY_DATA: u32 = 0x3fff_fffe;

/// The length word of the CopyData message whose header starts `buf`, if it does.
fn copy_data_len(buf: &[u8]) -> Option<u32> {
    match buf.get(..HEADER_LEN)? {
        [b'd', a, b, c, d] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

impl Session {
    /// Whether the client's buffer holds something for [`Session::stream_copy_data`]: the
    /// rest of a CopyData being streamed, or the header of one to stream (large, and
    /// continuing a unit on the primary, the only place COPY FROM STDIN runs).
    pub(super) fn copy_streams(&self) -> bool {
        if self.copy_through > 0 {
            return !self.cin.is_empty();
        }
        let Some(len) = copy_data_len(&self.cin) else { return false };
        len as usize + 1 >= STREAM_FROM
            && !self.skip_until_sync
            && self.active.as_ref().is_some_and(|a| a.node.role == Role::Primary)
    }

    /// Moves what the client's buffer holds of a streamed CopyData to the server's buffer
    /// (see [`Session::copy_streams`], which the caller checked). A CopyData longer than
    /// PostgreSQL accepts ends the session with PostgreSQL's complaint, and is logged.
    pub(super) fn stream_copy_data(&mut self) -> Result<(), End> {
        if self.copy_through == 0 {
            let len = copy_data_len(&self.cin).unwrap_or(0);
            if len > MAX_COPY_DATA {
                self.span.in_scope(|| {
                    tracing::warn!(len, max = MAX_COPY_DATA, "client sent a CopyData longer than PostgreSQL accepts")
                });
                self.ctx.metrics.error("protocol");
                self.client_error(Severity::Fatal, sqlstate::PROTOCOL_VIOLATION, "invalid message length");
                return Err(End::Fatal);
            }
            self.copy_through = len as usize + 1;
        }
        let n = self.copy_through.min(self.cin.len());
        if self.active.is_some() {
            self.sout.extend_from_slice(&self.cin[..n]);
        }
        // Else the server is gone (the session ends): the rest goes nowhere.
        self.cin.advance(n);
        self.copy_through -= n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_copy_data_headers_only() {
        assert_eq!(copy_data_len(b"d\x00\x01\x00\x00rest"), Some(65536));
        assert_eq!(copy_data_len(b"Q\x00\x01\x00\x00"), None);
        assert_eq!(copy_data_len(b"d\x00\x01"), None, "header incomplete");
    }
}
