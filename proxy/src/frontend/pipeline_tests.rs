//! Tests of the response pipeline (`super`): pure state, no sockets.

use super::*;

fn synth(tag: u8) -> Expect {
    Expect::Synthetic(Bytes::from(vec![tag, 0, 0, 0, 4]))
}

#[test]
fn synthetic_waits_for_earlier_responses() {
    let mut p = Pipeline::default();
    let mut out = BytesMut::new();
    p.push(Expect::Bind, &mut out);
    p.push(Expect::Execute, &mut out);
    p.push(synth(b'1'), &mut out);
    p.push(Expect::Sync, &mut out);
    assert!(out.is_empty());
    let mut due = BytesMut::new();
    assert!(p.on_server_message(b'2', &mut due).forward);
    assert!(due.is_empty());
    p.on_server_message(b'D', &mut due);
    p.on_server_message(b'C', &mut due);
    assert_eq!(&due[..], &[b'1', 0, 0, 0, 4]);
    let z = p.on_server_message(b'Z', &mut due);
    assert!(z.client_rfq && p.is_idle());
}

#[test]
fn restore_shows_only_parameter_status() {
    let mut p = Pipeline::default();
    let mut out = BytesMut::new();
    p.push(Expect::Query { swallow: false }, &mut out);
    p.push(Expect::Restore, &mut out);
    let mut due = BytesMut::new();
    assert!(p.on_server_message(b'S', &mut due).forward);
    assert!(p.on_server_message(b'Z', &mut due).client_rfq);
    assert!(!p.passes_data_rows());
    for tag in [b'T', b'D', b'C'] {
        assert!(!p.on_server_message(tag, &mut due).forward);
    }
    assert!(p.on_server_message(b'S', &mut due).forward);
    let z = p.on_server_message(b'Z', &mut due);
    assert!(!z.forward && !z.client_rfq && p.is_idle());
}

#[test]
fn hidden_sync_hides_a_failed_injected_parse() {
    let mut p = Pipeline::default();
    let mut out = BytesMut::new();
    p.push(Expect::Parse { hash: Some(1), swallow: true }, &mut out);
    p.push(Expect::Parse { hash: Some(2), swallow: true }, &mut out);
    p.push(Expect::HiddenSync, &mut out);
    p.push(Expect::Query { swallow: false }, &mut out);
    let mut due = BytesMut::new();
    let e = p.on_server_message(b'E', &mut due);
    assert!(!e.forward && e.notes);
    assert_eq!(p.take_notes().unprepared, vec![1, 2]);
    assert!(!p.on_server_message(b'Z', &mut due).forward, "the hidden Sync's answer");
    assert!(p.on_server_message(b'E', &mut due).forward, "the Query's own error");
    let z = p.on_server_message(b'Z', &mut due);
    assert!(z.forward && z.client_rfq && p.is_idle());
}

#[test]
fn synthetic_with_nothing_ahead_goes_out_at_once() {
    let mut p = Pipeline::default();
    let mut out = BytesMut::new();
    p.push(synth(b'3'), &mut out);
    assert_eq!(out.len(), 5);
    assert!(p.is_idle());
}

#[test]
fn injected_parse_is_hidden_and_error_skips_to_sync() {
    let mut p = Pipeline::default();
    let mut out = BytesMut::new();
    p.push(Expect::Parse { hash: Some(7), swallow: true }, &mut out);
    p.push(Expect::Bind, &mut out);
    p.push(Expect::Parse { hash: Some(9), swallow: false }, &mut out);
    p.push(synth(b'1'), &mut out);
    p.push(Expect::Sync, &mut out);
    let mut due = BytesMut::new();
    assert!(!p.on_server_message(b'1', &mut due).forward);
    let e = p.on_server_message(b'E', &mut due);
    assert!(e.forward && e.client_error && e.notes);
    assert_eq!(p.take_notes().unprepared, vec![9]);
    assert!(due.is_empty(), "skipped synthetic must not be sent");
    assert!(p.on_server_message(b'Z', &mut due).client_rfq);
    assert!(p.is_idle());
}

#[test]
fn swallowed_query_hides_everything_up_to_rfq() {
    let mut p = Pipeline::default();
    let mut out = BytesMut::new();
    p.push(Expect::Query { swallow: true }, &mut out);
    p.push(Expect::Query { swallow: false }, &mut out);
    let mut due = BytesMut::new();
    for tag in [b'S', b'C', b'E', b'Z'] {
        let o = p.on_server_message(tag, &mut due);
        assert!(!o.forward && !o.client_rfq, "tag {}", tag as char);
    }
    assert!(p.on_server_message(b'C', &mut due).forward);
    assert!(p.on_server_message(b'Z', &mut due).client_rfq);
}

#[test]
fn syncs_during_copy_in_expect_nothing() {
    // tokio-postgres: Bind, Execute, Sync, CopyData..., CopyDone, Sync.
    let mut p = Pipeline::default();
    let mut out = BytesMut::new();
    let mut due = BytesMut::new();
    for e in [Expect::Bind, Expect::Execute, Expect::Sync] {
        p.push(e, &mut out);
    }
    p.on_server_message(b'2', &mut due);
    p.on_server_message(b'G', &mut due);
    p.push(Expect::CopyEnd, &mut out);
    p.push(Expect::Sync, &mut out);
    assert!(p.on_server_message(b'C', &mut due).forward);
    assert!(p.on_server_message(b'Z', &mut due).client_rfq);
    assert!(p.is_idle(), "one ReadyForQuery ends it: {p:?}");

    // Everything sent before the server's CopyInResponse arrived.
    for e in [Expect::Bind, Expect::Execute, Expect::Sync, Expect::CopyEnd, Expect::Sync] {
        p.push(e, &mut out);
    }
    for tag in [b'2', b'G', b'C'] {
        p.on_server_message(tag, &mut due);
    }
    assert!(p.on_server_message(b'Z', &mut due).client_rfq);
    assert!(p.is_idle(), "{p:?}");
    assert!(out.is_empty() && due.is_empty());
}

#[test]
fn error_before_sync_keeps_the_connection_until_sync() {
    let mut p = Pipeline::default();
    let mut out = BytesMut::new();
    let mut due = BytesMut::new();
    // A failed COPY: the error comes before the client's CopyDone and Sync.
    for e in [Expect::Bind, Expect::Execute, Expect::Sync] {
        p.push(e, &mut out);
    }
    p.on_server_message(b'2', &mut due);
    p.on_server_message(b'G', &mut due);
    assert!(p.on_server_message(b'E', &mut due).client_error);
    assert!(!p.is_idle(), "the server waits for a Sync");
    p.push(Expect::CopyEnd, &mut out);
    p.push(Expect::Bind, &mut out);
    p.push(synth(b'1'), &mut out);
    assert!(!p.is_idle());
    p.push(Expect::Sync, &mut out);
    assert!(p.on_server_message(b'Z', &mut due).client_rfq);
    assert!(p.is_idle(), "{p:?}");
    assert!(out.is_empty() && due.is_empty(), "discarded messages get no answer");
}

#[test]
fn errors_inside_simple_query_wait_for_rfq() {
    let mut p = Pipeline::default();
    let mut out = BytesMut::new();
    p.push(Expect::Query { swallow: false }, &mut out);
    assert!(p.on_server_message(b'E', &mut out).client_error);
    assert_eq!(p.outstanding(), 1);
    assert!(p.on_server_message(b'Z', &mut out).client_rfq);
}

#[test]
fn error_skips_queries_up_to_sync() {
    let mut p = Pipeline::default();
    let mut out = BytesMut::new();
    p.push(Expect::Parse { hash: Some(3), swallow: false }, &mut out);
    p.push(Expect::Query { swallow: false }, &mut out);
    p.push(Expect::FunctionCall, &mut out);
    p.push(Expect::Sync, &mut out);
    let mut due = BytesMut::new();
    assert!(p.on_server_message(b'E', &mut due).notes);
    assert_eq!(p.take_notes().unprepared, vec![3]);
    assert_eq!(p.outstanding(), 1);
    assert!(p.on_server_message(b'Z', &mut due).client_rfq);
    assert!(p.is_idle());
}

/// Found by the `session` fuzz target: Bind/Execute answered before the
/// client's Sync arrived left the pipeline empty, so the session released
/// the connection (inside the implicit transaction, or after an
/// Execute'd BEGIN) and answered the later Sync itself with 'I'.
#[test]
fn answered_extended_messages_stay_open_until_ready_for_query() {
    let mut p = Pipeline::default();
    let mut out = BytesMut::new();
    p.push(Expect::Bind, &mut out);
    p.push(Expect::Execute, &mut out);
    let mut due = BytesMut::new();
    p.on_server_message(b'2', &mut due);
    p.on_server_message(b'C', &mut due);
    assert_eq!(p.outstanding(), 0);
    assert!(!p.is_idle(), "no Sync yet: the server is mid-transaction");
    p.push(Expect::Sync, &mut out);
    assert!(p.on_server_message(b'Z', &mut due).client_rfq);
    assert!(p.is_idle());
    // A synthetic answer alone sends nothing to the server.
    p.push(synth(b'1'), &mut out);
    assert!(p.is_idle());
    // Extended messages sent behind a Query stay open after its RFQ.
    p.push(Expect::Query { swallow: false }, &mut out);
    p.push(Expect::Execute, &mut out);
    p.on_server_message(b'Z', &mut due);
    p.on_server_message(b'C', &mut due);
    assert!(!p.is_idle());
    p.clear();
    // clear() forgets an open sequence with the connection.
    p.push(Expect::Describe, &mut out);
    p.clear();
    assert!(p.is_idle());
}

/// Found by the `session` fuzz target: Describe(missing portal), its
/// error back, then Execute and Sync sent by the client afterwards. The
/// server ignores the Execute; the pipeline used to queue it, so the
/// Sync's ReadyForQuery was never matched and the connection never idled.

#[test]
fn requests_sent_after_an_error_are_skipped_too() {
    let mut p = Pipeline::default();
    let mut out = BytesMut::new();
    let mut due = BytesMut::new();
    p.push(Expect::Describe, &mut out);
    assert!(p.on_server_message(b'E', &mut due).client_error);
    p.push(Expect::Execute, &mut out);
    p.push(Expect::Parse { hash: Some(5), swallow: false }, &mut out);
    p.push(synth(b'3'), &mut out);
    assert!(out.is_empty(), "the server would not answer the Close either");
    p.push(Expect::Sync, &mut out);
    p.push(Expect::Bind, &mut out);
    assert_eq!(p.outstanding(), 2);
    let z = p.on_server_message(b'Z', &mut due);
    assert!(z.client_rfq && z.notes);
    assert_eq!(p.take_notes().unprepared, vec![5], "the skipped Parse never created the statement");
    p.on_server_message(b'2', &mut due);
    assert_eq!(p.outstanding(), 0);
}
/// Driver suites: a named Parse the server skipped after an earlier error (or that
/// failed itself) must not define the client's name.
#[test]
fn skipped_or_failed_client_parse_is_undefined() {
    let mut p = Pipeline::default();
    let mut out = BytesMut::new();
    let mut due = BytesMut::new();
    // Execute fails; the Parse behind it (real or answered by the proxy) is skipped.
    p.push(Expect::Execute, &mut out);
    p.push(Expect::Parse { hash: Some(1), swallow: false }, &mut out);
    p.push(Expect::Defined(10), &mut out);
    p.push(synth(b'1'), &mut out);
    p.push(Expect::Defined(11), &mut out);
    p.push(Expect::Sync, &mut out);
    assert!(p.on_server_message(b'E', &mut due).notes);
    let n = p.take_notes();
    assert_eq!((n.unprepared, n.undefined), (vec![1], vec![10, 11]));
    assert!(due.is_empty());
    assert!(p.on_server_message(b'Z', &mut due).client_rfq);
    // A Parse that succeeds defines it; one that fails does not.
    p.push(Expect::Parse { hash: Some(2), swallow: false }, &mut out);
    p.push(Expect::Defined(12), &mut out);
    p.push(Expect::Parse { hash: Some(3), swallow: false }, &mut out);
    p.push(Expect::Defined(13), &mut out);
    p.push(Expect::Sync, &mut out);
    assert!(!p.on_server_message(b'1', &mut due).notes);
    p.on_server_message(b'E', &mut due);
    let n = p.take_notes();
    assert_eq!((n.unprepared, n.undefined), (vec![3], vec![13]));
    assert!(p.on_server_message(b'Z', &mut due).client_rfq);
    assert!(p.is_idle());
    // With nothing ahead, a definition stands at once.
    p.push(Expect::Defined(14), &mut out);
    assert!(p.is_idle());
    // Pushed while the server skips to Sync: reported with the next message.
    p.push(Expect::Describe, &mut out);
    p.on_server_message(b'E', &mut due);
    assert!(p.is_skipping());
    p.push(Expect::Defined(15), &mut out);
    p.push(Expect::Sync, &mut out);
    assert!(p.on_server_message(b'Z', &mut due).notes);
    assert_eq!(p.take_notes().undefined, vec![15]);
}

/// Driver suites: Parse of an existing name gives 42P05 naming the client's statement.
#[test]
fn redefinition_error_is_replaced_and_skips_to_sync() {
    let mut p = Pipeline::default();
    let mut out = BytesMut::new();
    let mut due = BytesMut::new();
    let replacement = Bytes::from_static(b"E-client");
    p.push(Expect::Parse { hash: Some(4), swallow: true }, &mut out);
    p.push(Expect::Redefine(replacement.clone()), &mut out);
    p.push(Expect::Bind, &mut out);
    p.push(Expect::Sync, &mut out);
    assert!(!p.on_server_message(b'1', &mut due).forward, "the injected Parse is hidden");
    assert!(p.on_server_message(b'E', &mut due).notes);
    let n = p.take_notes();
    assert_eq!(n.duplicate, Some(replacement));
    assert!(n.unprepared.is_empty(), "the old statement stays");
    assert_eq!(p.outstanding(), 1);
    assert!(p.on_server_message(b'Z', &mut due).client_rfq);
    // A statement parsed afresh: the injected Close is hidden, the client's Parse is not.
    p.push(Expect::HiddenClose, &mut out);
    p.push(Expect::Parse { hash: Some(5), swallow: false }, &mut out);
    p.push(Expect::Close, &mut out);
    p.push(Expect::Sync, &mut out);
    assert!(!p.on_server_message(b'3', &mut due).forward);
    assert!(p.on_server_message(b'1', &mut due).forward);
    assert!(p.on_server_message(b'3', &mut due).forward);
    assert_eq!(p.outstanding(), 1);
    assert!(p.on_server_message(b'Z', &mut due).client_rfq);
    assert!(p.is_idle());
}
