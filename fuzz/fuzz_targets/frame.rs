//! Fuzz target `frame`: the first stop of `client → frontend`, cutting a byte
//! stream into messages.
//!
//! Arbitrary bytes arrive in arbitrary chunk sizes (the first input bytes pick
//! the sizes, the way a peer can split a packet anywhere). Each chunk is
//! appended to a buffer that is cut with `split_startup` until the first
//! packet is out, then with `split_message`, checking `needed` against what
//! the splitter does. Every field reader of `protocol::fields` then runs on
//! every frame body. Invariants: no panic; a frame is exactly header + body
//! and round-trips through `Frame::from_bytes`; nothing is lost or invented
//! (consumed + left over == fed); `needed` agrees with the splitter.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tandem_proxy::protocol::fields;
use tandem_proxy::protocol::frame::{needed, split_message, split_startup, Frame, HEADER_LEN, MAX_STARTUP_PACKET};

/// Small so that the fuzzer reaches the `TooLarge` path, as a client can.
const SMALL_MAX: usize = 4096;
/// The session's limit for server messages (`MAX_SERVER_MESSAGE`, 1 GiB).
const SERVER_MAX: usize = 1 << 30;
/// How far a partial message may make the buffer grow beyond the bytes that
/// actually arrived: a 5-byte header must not cost the proxy its announced
/// length in memory (with many clients that is an easy memory exhaustion).
const GROWTH_SLACK: usize = 256 * 1024;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    // data[0]: chunking seed; data[1]: bit 0 = start with a startup packet,
    // bit 1 = server-side limit instead of a small client limit.
    let chunk_seed = data[0] as usize;
    let startup_first = data[1] & 1 == 1;
    let max_message = if data[1] & 2 == 2 { SERVER_MAX } else { SMALL_MAX };
    let stream = &data[2..];

    let mut buf = BytesMut::new();
    let mut fed = 0usize;
    let mut consumed = 0usize;
    let mut in_startup = startup_first;
    let mut pos = 0usize;
    let mut step = 0usize;
    'feed: while pos < stream.len() {
        // Chunk sizes 1..=64 from a tiny LCG over the seed.
        step = step.wrapping_mul(1103515245).wrapping_add(12345 + chunk_seed);
        let size = 1 + (step >> 8) % 64;
        let end = (pos + size).min(stream.len());
        buf.extend_from_slice(&stream[pos..end]);
        fed += end - pos;
        pos = end;
        loop {
            if in_startup {
                let before = buf.len();
                match split_startup(&mut buf) {
                    Ok(Some(body)) => {
                        assert!(body.len() + 4 <= MAX_STARTUP_PACKET);
                        assert_eq!(before - buf.len(), body.len() + 4);
                        consumed += body.len() + 4;
                        let _ = tandem_proxy::protocol::startup::parse(&body);
                        in_startup = false;
                    }
                    Ok(None) => {
                        assert_eq!(buf.len(), before);
                        continue 'feed;
                    }
                    Err(_) => break 'feed,
                }
            } else {
                let before = buf.len();
                let missing = needed(&buf);
                match split_message(&mut buf, max_message) {
                    Ok(Some(frame)) => {
                        assert_eq!(missing, 0, "needed() said bytes were missing for a complete frame");
                        let total = frame.bytes().len();
                        assert!(total >= HEADER_LEN && total <= max_message);
                        assert_eq!(total, frame.body().len() + HEADER_LEN);
                        assert_eq!(before - buf.len(), total);
                        consumed += total;
                        let again = Frame::from_bytes(frame.bytes().clone());
                        assert_eq!(again.as_ref(), Some(&frame));
                        read_every_field(frame.body());
                    }
                    Ok(None) => {
                        assert_eq!(buf.len(), before);
                        assert!(
                            buf.capacity() <= 4 * fed + GROWTH_SLACK,
                            "buffer of {} bytes reserved after {fed} bytes arrived",
                            buf.capacity()
                        );
                        if before >= HEADER_LEN {
                            assert!(missing > 0, "needed() is 0 but the splitter waits");
                        }
                        continue 'feed;
                    }
                    Err(_) => break 'feed,
                }
            }
        }
    }
    assert!(consumed + buf.len() <= fed);
});

/// Runs every field reader; each must return `Ok` or `Err`, never panic, and
/// what it returns must lie inside the body.
fn read_every_field(body: &[u8]) {
    let inside = |s: &[u8]| {
        let (b, e) = (body.as_ptr() as usize, body.as_ptr() as usize + body.len());
        let p = s.as_ptr() as usize;
        assert!(s.is_empty() || (p >= b && p + s.len() <= e));
    };
    if let Ok(q) = fields::query_text(body) {
        inside(q);
        assert!(!q.contains(&0));
    }
    if let Ok(p) = fields::parse(body) {
        inside(p.name);
        inside(p.query);
        inside(p.param_types);
        assert!(p.param_types.len() >= 2 && (p.param_types.len() - 2) % 4 == 0);
    }
    if let Ok(b) = fields::bind(body) {
        inside(b.portal);
        inside(b.statement);
        inside(b.rest);
    }
    for what in ["Describe", "Close"] {
        if let Ok(fields::Target::Statement(n) | fields::Target::Portal(n)) = fields::target(body, what) {
            inside(n);
        }
    }
    let _ = fields::ready_for_query(body);
    if let Ok(t) = fields::command_tag(body) {
        inside(t);
    }
    if let Ok(e) = fields::error_fields(body) {
        inside(e.severity);
        inside(e.code);
        inside(e.message);
    }
    if let Ok((k, v)) = fields::parameter_status(body) {
        inside(k);
        inside(v);
    }
    let _ = fields::backend_key(body);
}
