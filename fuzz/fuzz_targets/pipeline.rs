//! Fuzz target `pipeline`: `frontend::pipeline::Pipeline`, which matches
//! server responses to client requests (`server → frontend`).
//!
//! The input is a program of operations: push an arbitrary `Expect`, feed a
//! server message with an arbitrary tag, or clear. Every synthetic response
//! carries a unique id. Invariants: no panic; a synthetic response is never
//! emitted twice, never after a `clear`, and always in push order;
//! reported `unprepared` statements were pushed and not yet reported, and the
//! outcome's `notes` flag says whether there is anything to report;
//! `len` moves the way the operation says and `is_idle` implies an empty queue.
#![no_main]

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tandem_proxy::frontend::pipeline::{Expect, Notes, Pipeline};

/// Real backend tags first, so most server messages mean something.
const TAGS: &[u8] = b"123TnCIsEZDtSNAKGHWdcV";

fuzz_target!(|data: &[u8]| {
    let mut p = Pipeline::default();
    let mut next_id: u32 = 0;
    // Synthetic ids pushed since the last clear and not yet emitted.
    let mut pending_synth: Vec<u32> = Vec::new();
    let mut emitted: Vec<u32> = Vec::new();
    let mut outstanding_hashes: HashMap<u64, usize> = HashMap::new();
    let mut ops = data.chunks_exact(2);
    for op in &mut ops {
        let (code, arg) = (op[0], op[1]);
        let before = p.outstanding();
        match code % 12 {
            0..=8 => {
                let e = match code % 12 {
                    0 => {
                        let hash = (arg & 0x80 != 0).then_some(u64::from(arg & 0x0f));
                        if let Some(h) = hash {
                            *outstanding_hashes.entry(h).or_default() += 1;
                        }
                        Expect::Parse { hash, swallow: arg & 0x40 != 0 }
                    }
                    1 => Expect::Bind,
                    2 => Expect::Describe,
                    3 => Expect::Execute,
                    4 => Expect::Close,
                    5 if arg & 4 != 0 => Expect::HiddenSync,
                    5 => Expect::Sync,
                    6 if arg & 2 != 0 => Expect::Restore,
                    6 => Expect::Query { swallow: arg & 1 != 0 },
                    7 => Expect::FunctionCall,
                    _ => {
                        next_id += 1;
                        pending_synth.push(next_id);
                        let mut b = vec![b'1', 0, 0, 0, 8];
                        b.extend_from_slice(&next_id.to_be_bytes());
                        Expect::Synthetic(Bytes::from(b))
                    }
                };
                let synthetic = matches!(e, Expect::Synthetic(_));
                let mut out = BytesMut::new();
                p.push(e, &mut out);
                if synthetic && before == 0 {
                    assert_eq!(p.outstanding(), 0, "synthetic with nothing ahead must go out at once");
                    collect(&out, &mut emitted, &mut pending_synth);
                } else {
                    assert!(out.is_empty(), "push wrote while responses were outstanding");
                    // +1, or unchanged when the server skips to Sync after an error.
                    assert!(p.outstanding() == before + 1 || p.outstanding() == before, "push changed len by more than one");
                }
            }
            9 | 10 => {
                let tag = if code % 12 == 9 { TAGS[arg as usize % TAGS.len()] } else { arg };
                let mut due = BytesMut::new();
                let outcome = p.on_server_message(tag, &mut due);
                assert!(p.outstanding() <= before, "a server message grew the queue");
                if outcome.client_rfq {
                    assert_eq!(tag, b'Z');
                    assert!(p.outstanding() < before);
                }
                if outcome.client_error {
                    assert_eq!(tag, b'E');
                }
                let notes = p.take_notes();
                assert_eq!(outcome.notes, notes != Notes::default(), "notes flag and notes disagree");
                for h in &notes.unprepared {
                    let n = outstanding_hashes.get_mut(h).filter(|n| **n > 0);
                    let n = n.unwrap_or_else(|| panic!("unprepared {h} was never pushed"));
                    *n -= 1;
                }
                if !due.is_empty() {
                    assert!(p.outstanding() < before, "synthetics came due without progress");
                }
                collect(&due, &mut emitted, &mut pending_synth);
            }
            _ => {
                p.clear();
                assert!(p.is_idle() && p.outstanding() == 0);
                pending_synth.clear();
                outstanding_hashes.clear();
            }
        }
        // Idle needs an empty queue; an empty queue may still wait for the
        // ReadyForQuery that closes an extended-protocol sequence.
        assert!(!p.is_idle() || p.outstanding() == 0);
    }
});

/// Records synthetic ids found in `bytes`; each must be the oldest still pending.
fn collect(bytes: &[u8], emitted: &mut Vec<u32>, pending: &mut Vec<u32>) {
    assert_eq!(bytes.len() % 9, 0, "partial synthetic message");
    for m in bytes.chunks_exact(9) {
        let id = u32::from_be_bytes([m[5], m[6], m[7], m[8]]);
        assert!(!emitted.contains(&id), "synthetic {id} emitted twice");
        // Skipped synthetics (dropped after an error) leave the pending list silently.
        let pos = pending.iter().position(|&x| x == id).unwrap_or_else(|| panic!("synthetic {id} emitted after clear"));
        pending.drain(..=pos);
        emitted.push(id);
    }
}
