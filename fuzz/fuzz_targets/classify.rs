//! Fuzz target `classify`: the router's read/write decision
//! (`frontend → router`), on arbitrary UTF-8.
//!
//! Runs `fingerprint::normalize`, `Fingerprinter::fingerprint` and
//! `Classifier::classify` (empty function table, so every function is
//! unknown). Invariants: no panic; classification is deterministic (a cache
//! hit answers the same route as the miss did); statements with session
//! effects route to the primary; the `tandem:primary` hint forces the primary.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tandem_proxy::router::classify::fingerprint::{normalize, Fingerprinter};
use tandem_proxy::router::classify::{Classifier, FunctionTable, Route};

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else { return };
    let _ = normalize(sql);
    let f = Fingerprinter::new();
    let a = f.fingerprint(sql);
    assert_eq!(a, f.fingerprint(sql), "fingerprint is not deterministic");
    let classifier = Classifier::new(Arc::new(FunctionTable::empty()), 16);
    let first = classifier.classify(sql);
    if !first.effects.is_empty() {
        assert_eq!(first.route, Route::Write, "session effects must go to the primary");
    }
    if a.hint {
        assert_eq!(first.route, Route::Write, "tandem:primary hint ignored");
    }
    let second = classifier.classify(sql);
    assert_eq!(first.route, second.route, "cached route differs from the parsed one");
    // A cache hit must not lose the SETs/pins the session has to track.
    assert_eq!(first.effects, second.effects, "session effects lost on the second classification");
    let _ = classifier.take_refresh_request();
});
