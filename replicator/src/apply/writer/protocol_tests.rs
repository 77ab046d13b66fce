//! Unit tests of [`super::Pipeline`] on hand-built server messages.

use bytes::{BufMut, BytesMut};

use super::*;

/// One backend message: tag, length, body.
fn msg(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(body);
}

fn parse_complete(out: &mut BytesMut) {
    msg(out, b'1', b"");
}

fn bind_complete(out: &mut BytesMut) {
    msg(out, b'2', b"");
}

fn command_complete(out: &mut BytesMut, tag: &str) {
    let mut body = tag.as_bytes().to_vec();
    body.push(0);
    msg(out, b'C', &body);
}

fn ready(out: &mut BytesMut, status: u8) {
    msg(out, b'Z', &[status]);
}

fn error(out: &mut BytesMut, code: &str, message: &str) {
    let mut body = Vec::new();
    for (field, value) in [(b'S', "ERROR"), (b'V', "ERROR"), (b'C', code), (b'M', message)] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    msg(out, b'E', &body);
}

fn data_row(out: &mut BytesMut, value: &str) {
    let mut body = Vec::new();
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&(value.len() as i32).to_be_bytes());
    body.extend_from_slice(value.as_bytes());
    msg(out, b'D', &body);
}

fn notice(out: &mut BytesMut) {
    let body = b"SNOTICE\0C00000\0Mhello\0\0";
    msg(out, b'N', body);
}

/// Feeds `server` and collects every event it yields, as short strings.
fn events(p: &mut Pipeline<&'static str>, server: BytesMut) -> Vec<String> {
    p.buffers().1.extend_from_slice(&server);
    let mut got = Vec::new();
    while let Some(e) = p.next_event().expect("well-formed answers") {
        got.push(match e {
            Event::Done { tag, rows, rolled_back } => {
                format!("done {} {rows}{}", tag.unwrap_or("-"), if rolled_back { " rb" } else { "" })
            }
            Event::Row(_) => "row".to_owned(),
            Event::Failed { tag, error } => format!("failed {} {}", tag.unwrap_or("-"), error.code),
            Event::Skipped(tag) => format!("skipped {}", tag.unwrap_or("-")),
            Event::Ready(s) => format!("ready {s:?}"),
        });
    }
    got
}

#[test]
fn a_batch_is_encoded_as_one_sync_group() {
    let mut p: Pipeline<&str> = Pipeline::default();
    p.parse("s1", "INSERT INTO t VALUES ($1, $2)").unwrap();
    p.bind_execute("s1", [Some(&b"1"[..]), None], Some("ins")).unwrap();
    p.bind_execute("s1", [Some(&b"2"[..]), Some(&b"x"[..])], Some("ins2")).unwrap();
    p.sync();
    let (out, _) = p.buffers();
    let tags: Vec<u8> = {
        let mut tags = Vec::new();
        let mut at = 0;
        while at < out.len() {
            tags.push(out[at]);
            at += 1 + u32::from_be_bytes([out[at + 1], out[at + 2], out[at + 3], out[at + 4]]) as usize;
        }
        tags
    };
    assert_eq!(tags, b"PBEBES".to_vec());
    assert_eq!(p.outstanding(), 6);
    assert!(!p.needs_flush());
}

#[test]
fn answers_come_back_in_order_with_rows_and_counts() {
    let mut p: Pipeline<&str> = Pipeline::default();
    p.parse("s1", "INSERT INTO t VALUES ($1)").unwrap();
    p.bind_execute("s1", [Some(&b"1"[..])], Some("ins")).unwrap();
    p.bind_execute("guard", [Some(&b"0/1"[..])], Some("guard")).unwrap();
    p.sync();
    let mut s = BytesMut::new();
    parse_complete(&mut s);
    bind_complete(&mut s);
    notice(&mut s);
    command_complete(&mut s, "INSERT 0 1");
    bind_complete(&mut s);
    data_row(&mut s, "1");
    command_complete(&mut s, "SELECT 1");
    ready(&mut s, b'T');
    assert_eq!(events(&mut p, s), ["done ins 1", "row", "done guard 1", "ready InTransaction"]);
    assert_eq!(p.outstanding(), 0);
}

#[test]
fn an_error_skips_to_the_sync_and_fails_the_next_group() {
    let mut p: Pipeline<&str> = Pipeline::default();
    for t in ["begin", "a", "b", "c"] {
        p.bind_execute("x", [], Some(t)).unwrap();
    }
    p.sync();
    p.bind_execute("x", [], Some("next-begin")).unwrap();
    p.bind_execute("x", [], Some("next-row")).unwrap();
    p.sync();
    let mut s = BytesMut::new();
    bind_complete(&mut s);
    command_complete(&mut s, "BEGIN");
    bind_complete(&mut s);
    command_complete(&mut s, "INSERT 0 1");
    // b's Bind/Execute fails; c is never run.
    error(&mut s, "23505", "duplicate key");
    ready(&mut s, b'E');
    // The next group starts in a failed transaction.
    error(&mut s, "25P02", "current transaction is aborted");
    ready(&mut s, b'E');
    assert_eq!(
        events(&mut p, s),
        [
            "done begin 0",
            "done a 1",
            "failed b 23505",
            "skipped c",
            "ready Failed",
            "failed next-begin 25P02",
            "skipped next-row",
            "ready Failed"
        ]
    );
}

#[test]
fn an_error_on_parse_is_reported_for_its_statement() {
    let mut p: Pipeline<&str> = Pipeline::default();
    p.parse("s9", "INSERT INTO missing VALUES ($1)").unwrap();
    p.bind_execute("s9", [Some(&b"1"[..])], Some("ins")).unwrap();
    p.sync();
    let mut s = BytesMut::new();
    error(&mut s, "42P01", "relation does not exist");
    ready(&mut s, b'I');
    assert_eq!(events(&mut p, s), ["failed ins 42P01", "ready Idle"]);
}

#[test]
fn commit_of_a_failed_transaction_says_rollback() {
    let mut p: Pipeline<&str> = Pipeline::default();
    p.bind_execute("commit", [], Some("end")).unwrap();
    p.sync();
    let mut s = BytesMut::new();
    bind_complete(&mut s);
    command_complete(&mut s, "ROLLBACK");
    ready(&mut s, b'I');
    assert_eq!(events(&mut p, s), ["done end 0 rb", "ready Idle"]);
}

#[test]
fn simple_queries_and_markers_keep_their_place() {
    let mut p: Pipeline<&str> = Pipeline::default();
    p.bind_execute("x", [], Some("row")).unwrap();
    // An open group gets its Sync before the query.
    p.query("ROLLBACK; SELECT 1", Some("q")).unwrap();
    p.marker("m");
    p.query("SELECT nope", Some("bad")).unwrap();
    let mut s = BytesMut::new();
    bind_complete(&mut s);
    command_complete(&mut s, "UPDATE 0");
    ready(&mut s, b'T');
    command_complete(&mut s, "ROLLBACK");
    msg(&mut s, b'T', &[0, 0]);
    data_row(&mut s, "1");
    command_complete(&mut s, "SELECT 1");
    ready(&mut s, b'I');
    error(&mut s, "42703", "no such column");
    ready(&mut s, b'I');
    assert_eq!(
        events(&mut p, s),
        [
            "done row 0",
            "ready InTransaction",
            "row",
            "done q 1",
            "ready Idle",
            "done m 0",
            "failed bad 42703",
            "ready Idle"
        ]
    );
}

#[test]
fn partial_input_waits_for_more_bytes() {
    let mut p: Pipeline<&str> = Pipeline::default();
    p.bind_execute("x", [], Some("a")).unwrap();
    p.sync();
    let mut s = BytesMut::new();
    bind_complete(&mut s);
    command_complete(&mut s, "DELETE 3");
    ready(&mut s, b'T');
    let mut got = Vec::new();
    for b in s.iter() {
        got.extend(events(&mut p, BytesMut::from(&[*b][..])));
    }
    assert_eq!(got, ["done a 3", "ready InTransaction"]);
}

#[test]
fn waiting_on_an_unsynced_request_needs_a_flush() {
    let mut p: Pipeline<&str> = Pipeline::default();
    assert!(!p.needs_flush());
    p.bind_execute("x", [], Some("a")).unwrap();
    assert!(p.needs_flush());
    p.flush();
    assert!(!p.needs_flush());
    p.bind_execute("x", [], Some("b")).unwrap();
    // The oldest answer (a) is covered by the Flush.
    assert!(!p.needs_flush());
    let mut s = BytesMut::new();
    bind_complete(&mut s);
    command_complete(&mut s, "INSERT 0 1");
    assert_eq!(events(&mut p, s), ["done a 1"]);
    assert!(p.needs_flush());
    p.sync();
    assert!(!p.needs_flush());
}

#[test]
fn unexpected_and_unsolicited_messages_are_errors_not_panics() {
    let mut p: Pipeline<&str> = Pipeline::default();
    p.bind_execute("x", [], Some("a")).unwrap();
    let mut s = BytesMut::new();
    ready(&mut s, b'I');
    p.buffers().1.extend_from_slice(&s);
    assert!(matches!(p.next_event(), Err(WriterError::Protocol(_))));

    let mut p: Pipeline<&str> = Pipeline::default();
    let mut s = BytesMut::new();
    error(&mut s, "57P01", "terminating connection due to administrator command");
    p.buffers().1.extend_from_slice(&s);
    assert!(matches!(p.next_event(), Err(WriterError::Server(e)) if e.code == "57P01"));

    let mut p: Pipeline<&str> = Pipeline::default();
    p.sync();
    p.buffers().1.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'?']);
    assert!(matches!(p.next_event(), Err(WriterError::Protocol(_))));

    // Garbage: an unknown message type.
    let mut p: Pipeline<&str> = Pipeline::default();
    p.sync();
    p.buffers().1.extend_from_slice(&[b'!', 0, 0, 0, 4]);
    assert!(p.next_event().is_err());
}
