//! Fuzz target `session`: the client-message path of a session
//! (`client → frontend → server → frontend → client`), as a differential test.
//!
//! A real [`tandem_proxy::frontend::session::Session`] needs a live
//! `ProxyContext` with pools and sockets, so this target drives the proxy's
//! public sans-IO pieces the way `frontend/client_side.rs` and
//! `frontend/server_side.rs` combine them: `split_message` on the client
//! bytes, the `fields` readers, the `Classifier`, `Statements` with their
//! server-side names, the `build` rewrites and the `Pipeline`. The decision
//! logic of those two files (which Expect to push, when a Parse is answered
//! synthetically or injected) is mirrored here in [`Proxy`]; keep it in step
//! with them (see fuzz/README.md for the refactor that would remove the copy).
//!
//! The same scripted server ([`FakeServer`], PostgreSQL's extended-protocol
//! rules: skip to Sync after an error, failed transactions, portals) runs
//! twice: once on the client's messages directly, once behind the proxy
//! model, with server replies interleaved with client messages on a schedule
//! the input picks. Invariants: no panic; every message the proxy builds for
//! the server re-frames and re-reads; the client sees exactly the response
//! tags (and ReadyForQuery statuses) it would see without the proxy; once a
//! client's last Sync/Query is answered, nothing is left outstanding.
//!
//! Input: the client's byte stream after startup (typed messages, as the
//! capture seeds hold), followed by nothing else; its last byte also seeds
//! the interleaving schedule. Query texts steer server errors: a statement
//! containing `!p` fails at Parse, `!b` at Bind, `!e` at Execute, `!q` as a
//! simple Query.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tandem_proxy::frontend::pipeline::{Expect, Pipeline};
use tandem_proxy::frontend::state::{Statement, Statements};
use tandem_proxy::protocol::fields::{self, Target, TxStatus};
use tandem_proxy::protocol::frame::split_message;
use tandem_proxy::protocol::{build, Frame};
use tandem_proxy::router::classify::{Classifier, FunctionTable, Route};

const MAX_MESSAGE: usize = 1 << 16;
const MAX_FRAMES: usize = 512;

fuzz_target!(|data: &[u8]| {
    let Some(&schedule_seed) = data.last() else { return };
    let frames = client_frames(data);
    if frames.is_empty() {
        return;
    }

    // Without the proxy.
    let mut direct = FakeServer::default();
    let mut expected = Vec::new();
    for f in &frames {
        direct.handle(f, &mut expected);
    }

    // Behind the proxy.
    let mut proxy = Proxy::new();
    let mut server = FakeServer::default();
    let mut step = u32::from(schedule_seed);
    for f in &frames {
        proxy.client_message(f.clone());
        step = step.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        if std::env::var_os("SESSION_DEBUG").is_some() {
            eprintln!("client {} -> sees {:?} pipeline {}", f.tag() as char, String::from_utf8_lossy(&proxy.client_sees), proxy.pipeline.outstanding());
        }
        if (step >> 16) & 1 == 1 {
            proxy.exchange(&mut server);
        }
    }
    proxy.exchange(&mut server);

    assert_eq!(
        String::from_utf8_lossy(&proxy.client_sees),
        String::from_utf8_lossy(&render(&expected)),
        "the client sees different responses through the proxy"
    );
    // The client's last message was answered by a ReadyForQuery (PostgreSQL
    // ignores a Query/FunctionCall sent after an error without a Sync).
    let answered = matches!(frames.last().map(Frame::tag), Some(b'S' | b'Q' | b'F'))
        && expected.last().is_some_and(|&(tag, _)| tag == b'Z')
        && !direct.skipping;
    if answered {
        assert!(proxy.pipeline.is_idle(), "{} responses still expected after the last ReadyForQuery", proxy.pipeline.outstanding());
    }
});

/// Client messages up to the first one the proxy would end the session on
/// (bad framing, unknown type, unreadable fields, Terminate): from there on
/// the proxy and PostgreSQL both close the connection with their own error.
fn client_frames(data: &[u8]) -> Vec<Frame> {
    let mut buf = BytesMut::from(data);
    let mut out = Vec::new();
    while out.len() < MAX_FRAMES {
        let Ok(Some(f)) = split_message(&mut buf, MAX_MESSAGE) else { break };
        let body = f.body();
        let ok = match f.tag() {
            b'Q' => fields::query_text(body).is_ok(),
            b'P' => fields::parse(body).is_ok(),
            b'B' => fields::bind(body).is_ok(),
            b'D' => fields::target(body, "Describe").is_ok(),
            b'C' => fields::target(body, "Close").is_ok(),
            b'E' | b'F' | b'S' | b'H' | b'd' | b'c' | b'f' => true,
            _ => false,
        };
        if !ok {
            break;
        }
        out.push(f);
    }
    out
}

/// Response tags, with each ReadyForQuery followed by its status byte.
fn render(msgs: &[(u8, u8)]) -> Vec<u8> {
    let mut v = Vec::new();
    for &(tag, status) in msgs {
        v.push(tag);
        if tag == b'Z' {
            v.push(status);
        }
    }
    v
}

/// The proxy's per-session state, as `Session` holds it, for one server
/// connection that stays the same (a legal outcome of the pool).
struct Proxy {
    classifier: Classifier,
    statements: Statements,
    /// `Checkout::prepared`: Tandem statements the server connection has.
    prepared: HashSet<u64>,
    pipeline: Pipeline,
    active: bool,
    tx: TxStatus,
    sout: BytesMut,
    cout: BytesMut,
    /// Rendered client-visible responses.
    client_sees: Vec<u8>,
}

impl Proxy {
    fn new() -> Proxy {
        Proxy {
            classifier: Classifier::new(Arc::new(FunctionTable::empty()), 64),
            statements: Statements::default(),
            prepared: HashSet::new(),
            pipeline: Pipeline::default(),
            active: false,
            tx: TxStatus::Idle,
            sout: BytesMut::new(),
            cout: BytesMut::new(),
            client_sees: Vec::new(),
        }
    }

    fn classify(&self, sql: &[u8]) -> Route {
        match std::str::from_utf8(sql) {
            Ok(sql) => self.classifier.classify(sql).route,
            Err(_) => Route::Write,
        }
    }

    /// `Session::handle_client_message` (client_side.rs), minus routing.
    fn client_message(&mut self, frame: Frame) {
        let body = frame.body().to_vec();
        match frame.tag() {
            b'Q' => {
                let Ok(sql) = fields::query_text(&body) else { return };
                self.classify(sql);
                self.begin_unit();
                self.forward(&frame, Some(Expect::Query { swallow: false }));
            }
            b'P' => {
                let Ok(p) = fields::parse(&body) else { return };
                let route = self.classify(p.query);
                if p.name.is_empty() {
                    self.statements.unnamed_route = Some(route);
                    self.begin_unit();
                    self.forward(&frame, Some(Expect::Parse { hash: None, swallow: false }));
                    return;
                }
                let stmt = Arc::new(Statement::new(p.query, p.param_types, route));
                self.statements.insert(p.name, stmt.clone());
                self.begin_unit();
                if self.prepared.contains(&stmt.hash) {
                    let done = bytes::Bytes::from_static(&[b'1', 0, 0, 0, 4]);
                    self.pipeline.push(Expect::Synthetic(done), &mut self.cout);
                } else {
                    self.prepared.insert(stmt.hash);
                    build::parse(&mut self.sout, stmt.server_name.as_bytes(), &stmt.query, &stmt.param_types);
                    self.pipeline.push(Expect::Parse { hash: Some(stmt.hash), swallow: false }, &mut self.cout);
                }
            }
            b'B' => {
                let Ok(b) = fields::bind(&body) else { return };
                let stmt = if b.statement.is_empty() { None } else { self.statements.get(b.statement).cloned() };
                let Some(stmt) = stmt else {
                    self.begin_unit();
                    self.forward(&frame, Some(Expect::Bind));
                    return;
                };
                self.begin_unit();
                self.ensure_prepared(&stmt);
                build::bind(&mut self.sout, b.portal, stmt.server_name.as_bytes(), b.rest);
                self.pipeline.push(Expect::Bind, &mut self.cout);
            }
            b'D' => match fields::target(&body, "Describe") {
                Ok(Target::Statement(name)) if !name.is_empty() => {
                    let Some(stmt) = self.statements.get(name).cloned() else {
                        self.forward_in_unit(&frame, Expect::Describe);
                        return;
                    };
                    self.begin_unit();
                    self.ensure_prepared(&stmt);
                    build::target(&mut self.sout, b'D', b'S', stmt.server_name.as_bytes());
                    self.pipeline.push(Expect::Describe, &mut self.cout);
                }
                Ok(Target::Statement(_)) => {
                    self.begin_unit();
                    self.forward(&frame, Some(Expect::Describe));
                }
                Ok(Target::Portal(_)) => self.forward_in_unit(&frame, Expect::Describe),
                Err(_) => {}
            },
            b'C' => match fields::target(&body, "Close") {
                Ok(Target::Statement(name)) if !name.is_empty() => {
                    self.statements.remove(name);
                    let done = bytes::Bytes::from_static(&[b'3', 0, 0, 0, 4]);
                    self.pipeline.push(Expect::Synthetic(done), &mut self.cout);
                }
                Ok(_) => self.forward_in_unit(&frame, Expect::Close),
                Err(_) => {}
            },
            b'E' => self.forward_in_unit(&frame, Expect::Execute),
            b'F' => self.forward_in_unit(&frame, Expect::FunctionCall),
            b'S' => {
                if self.active {
                    self.forward(&frame, Some(Expect::Sync));
                } else {
                    build::ready_for_query(&mut self.cout, self.tx);
                }
            }
            _ => {
                // H, d, c, f: forwarded inside a unit, dropped outside.
                if self.active {
                    self.forward(&frame, None);
                }
            }
        }
        self.flush_client();
    }

    fn begin_unit(&mut self) {
        self.active = true;
    }

    fn forward_in_unit(&mut self, frame: &Frame, expect: Expect) {
        self.begin_unit();
        self.forward(frame, Some(expect));
    }

    fn forward(&mut self, frame: &Frame, expect: Option<Expect>) {
        self.sout.extend_from_slice(frame.bytes());
        if let Some(e) = expect {
            self.pipeline.push(e, &mut self.cout);
        }
    }

    fn ensure_prepared(&mut self, stmt: &Statement) {
        if self.prepared.insert(stmt.hash) {
            build::parse(&mut self.sout, stmt.server_name.as_bytes(), &stmt.query, &stmt.param_types);
            self.pipeline.push(Expect::Parse { hash: Some(stmt.hash), swallow: true }, &mut self.cout);
        }
    }

    /// Renders what was queued for the client (synthetic answers, own RFQs).
    fn flush_client(&mut self) {
        while let Ok(Some(f)) = split_message(&mut self.cout, MAX_MESSAGE) {
            self.client_sees.push(f.tag());
            if f.tag() == b'Z' {
                self.client_sees.push(f.body().first().copied().unwrap_or(b'?'));
            }
        }
        assert!(self.cout.is_empty(), "the proxy queued a partial message for the client");
    }

    /// The server reads everything queued for it and answers; the answers go
    /// through `Session::process_server` (server_side.rs).
    fn exchange(&mut self, server: &mut FakeServer) {
        let mut replies = Vec::new();
        while !self.sout.is_empty() {
            let f = match split_message(&mut self.sout, MAX_MESSAGE) {
                Ok(Some(f)) => f,
                other => panic!("the proxy sent the server a broken message: {other:?}"),
            };
            // What the proxy built must read back as what it meant.
            match f.tag() {
                b'P' => assert!(fields::parse(f.body()).is_ok()),
                b'B' => assert!(fields::bind(f.body()).is_ok()),
                b'D' => assert!(fields::target(f.body(), "Describe").is_ok()),
                _ => {}
            }
            server.handle(&f, &mut replies);
        }
        let mut due = BytesMut::new();
        for (tag, status) in replies {
            let outcome = self.pipeline.on_server_message(tag, &mut due);
            if outcome.forward {
                self.client_sees.push(tag);
                if tag == b'Z' {
                    self.client_sees.push(status);
                }
            }
            if !due.is_empty() {
                self.cout.extend_from_slice(&due);
                due.clear();
                self.flush_client();
            }
            let unprepared = if outcome.notes { self.pipeline.take_notes().unprepared } else { Vec::new() };
            for h in &unprepared {
                self.prepared.remove(h);
            }
            if outcome.client_rfq {
                self.tx = match status {
                    b'T' => TxStatus::InTransaction,
                    b'E' => TxStatus::Failed,
                    _ => TxStatus::Idle,
                };
            }
        }
        // `Session::on_idle`: transaction pooling gives the connection back.
        if self.pipeline.is_idle() && self.active && self.tx == TxStatus::Idle {
            self.active = false;
        }
    }
}

/// A scripted PostgreSQL backend: the extended-protocol rules that decide
/// which responses a client gets, and nothing else.
#[derive(Default)]
struct FakeServer {
    statements: HashMap<Vec<u8>, Vec<u8>>,
    portals: HashMap<Vec<u8>, Vec<u8>>,
    /// After an error in an extended-protocol message: ignore all up to Sync.
    skipping: bool,
    /// b'I', b'T' or b'E' (0 counts as b'I').
    tx: u8,
}

impl FakeServer {
    fn status(&self) -> u8 {
        if self.tx == 0 {
            b'I'
        } else {
            self.tx
        }
    }

    fn error(&mut self, out: &mut Vec<(u8, u8)>, extended: bool) {
        out.push((b'E', 0));
        if extended {
            self.skipping = true;
        }
        if self.status() == b'T' {
            self.tx = b'E';
        }
    }

    /// Runs a statement's effect on the transaction state; false if the
    /// transaction is aborted and the statement is not its end.
    fn run(&mut self, query: &[u8]) -> bool {
        let q = String::from_utf8_lossy(query).trim_start().to_ascii_lowercase();
        let ends = ["commit", "rollback", "end", "abort"].iter().any(|k| q.starts_with(k));
        if self.status() == b'E' && !ends {
            return false;
        }
        if q.starts_with("begin") || q.starts_with("start") {
            self.tx = b'T';
        } else if ends {
            self.tx = b'I';
        }
        true
    }

    fn handle(&mut self, f: &Frame, out: &mut Vec<(u8, u8)>) {
        let body = f.body();
        if self.skipping && f.tag() != b'S' {
            // Known divergence, modelled rather than flagged: the proxy keeps a
            // client's named statement whose Parse the server skipped, and
            // prepares it again on the next Bind/Describe (PostgreSQL would
            // answer 26000 "does not exist").
            if let (b'P', Ok(p)) = (f.tag(), fields::parse(body)) {
                if !p.name.is_empty() && !p.query.windows(2).any(|w| w == b"!p") {
                    self.statements.insert(p.name.to_vec(), p.query.to_vec());
                }
            }
            return;
        }
        let has = |q: &[u8], marker: &[u8]| q.windows(2).any(|w| w == marker);
        match f.tag() {
            b'Q' => {
                let Ok(q) = fields::query_text(body) else { return };
                self.portals.clear();
                if q.is_empty() {
                    out.push((b'I', 0));
                } else if has(q, b"!q") || !self.run(q) {
                    self.error(out, false);
                } else {
                    out.push((b'C', 0));
                }
                out.push((b'Z', self.status()));
            }
            b'P' => {
                let Ok(p) = fields::parse(body) else { return };
                // PostgreSQL refuses to redefine a named statement (42P05)
                // and keeps the old one; the proxy lets a client redefine it,
                // and the name refers to the new text even when that fails to
                // parse. Known divergence, modelled the proxy's way.
                if has(p.query, b"!p") {
                    self.statements.remove(p.name);
                    return self.error(out, true);
                }
                self.statements.insert(p.name.to_vec(), p.query.to_vec());
                out.push((b'1', 0));
            }
            b'B' => {
                let Ok(b) = fields::bind(body) else { return };
                match self.statements.get(b.statement).cloned() {
                    Some(q) if !has(&q, b"!b") => {
                        self.portals.insert(b.portal.to_vec(), q);
                        out.push((b'2', 0));
                    }
                    _ => self.error(out, true),
                }
            }
            b'D' => {
                let found = match fields::target(body, "Describe") {
                    Ok(Target::Statement(n)) => self.statements.get(n).cloned().map(|q| (true, q)),
                    Ok(Target::Portal(n)) => self.portals.get(n).cloned().map(|q| (false, q)),
                    Err(_) => None,
                };
                let Some((statement, q)) = found else { return self.error(out, true) };
                if statement {
                    out.push((b't', 0));
                }
                let rows = String::from_utf8_lossy(&q).trim_start().to_ascii_lowercase().starts_with("select");
                out.push((if rows { b'T' } else { b'n' }, 0));
            }
            b'E' => {
                let portal = body.iter().position(|&b| b == 0).map(|end| &body[..end]);
                let Some(q) = portal.and_then(|p| self.portals.get(p)).cloned() else {
                    return self.error(out, true);
                };
                if q.is_empty() {
                    out.push((b'I', 0));
                } else if has(&q, b"!e") || !self.run(&q) {
                    self.error(out, true);
                } else {
                    out.push((b'D', 0));
                    out.push((b'C', 0));
                }
            }
            b'C' => {
                match fields::target(body, "Close") {
                    Ok(Target::Statement(n)) => {
                        self.statements.remove(n);
                    }
                    Ok(Target::Portal(n)) => {
                        self.portals.remove(n);
                    }
                    Err(_) => return,
                }
                out.push((b'3', 0));
            }
            b'F' => {
                out.push((b'V', 0));
                out.push((b'Z', self.status()));
            }
            b'S' => {
                self.skipping = false;
                if self.status() == b'I' {
                    self.portals.clear();
                }
                out.push((b'Z', self.status()));
            }
            // Flush; CopyData/CopyDone/CopyFail outside COPY are ignored.
            _ => {}
        }
    }
}
