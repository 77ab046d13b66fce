//! Fuzz target `startup`: `protocol::startup::parse`, the first packet a client
//! sends (`client → frontend`), on arbitrary bodies.
//!
//! Invariants: no panic; the accessors the login path calls (`user`,
//! `database`, `protocol_options`) work on whatever was parsed; a parsed
//! StartupMessage re-encodes to the same body (nothing invented or dropped).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_proxy::frontend::state::SessionParams;
use tandem_proxy::protocol::startup::{parse, StartupRequest};

fuzz_target!(|body: &[u8]| {
    // split_startup never hands over more than this, so neither do we.
    if body.len() > tandem_proxy::protocol::frame::MAX_STARTUP_PACKET {
        return;
    }
    match parse(body) {
        Ok(StartupRequest::Startup(p)) => {
            let _ = p.user();
            let _ = p.database();
            let _ = p.protocol_options();
            // What the session replays from the startup parameters.
            let _ = SessionParams::from_startup(&p.params).replay_sql();
            let mut again = body[..4].to_vec();
            for (k, v) in &p.params {
                assert!(!k.is_empty());
                again.extend_from_slice(k.as_bytes());
                again.push(0);
                again.extend_from_slice(v.as_bytes());
                again.push(0);
            }
            again.push(0);
            assert_eq!(again, body, "startup parameters do not round-trip");
        }
        Ok(StartupRequest::Cancel { secret, .. }) => assert!(secret.len() >= 4 && secret.len() <= 256),
        Ok(_) | Err(_) => {}
    }
});
