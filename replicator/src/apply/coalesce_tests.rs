//! Unit tests of [`super::plan`].

use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::change::Column;

fn rel(oid: u32, identity: ReplicaIdentity) -> Arc<Relation> {
    let col = |name: &str, is_key| Column { name: name.into(), type_oid: 23, type_modifier: -1, is_key };
    Arc::new(Relation {
        oid,
        schema: "public".into(),
        name: format!("t{oid}"),
        replica_identity: identity,
        columns: vec![col("id", true), col("v", false)],
    })
}

fn t(s: &str) -> Datum {
    Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn ins(r: &Arc<Relation>, id: &str, v: &str) -> Change {
    Change::Insert { rel: r.clone(), new: Tuple(vec![t(id), t(v)]) }
}

fn upd(r: &Arc<Relation>, id: &str, v: Datum) -> Change {
    Change::Update { rel: r.clone(), old: None, new: Tuple(vec![t(id), v]) }
}

fn del(r: &Arc<Relation>, id: &str) -> Change {
    Change::Delete { rel: r.clone(), old: Tuple(vec![t(id), Datum::Null]) }
}

/// The plan as short strings: `I1:5` insert into t1 id 5, `I1:5+6` a merged insert, ...
fn show(steps: &[Step<'_>]) -> Vec<String> {
    let one = |c: &Change| match c {
        Change::Insert { rel, new } => format!("I{}:{}", rel.oid, text(&new.0[0])),
        Change::Update { rel, old, new } => match old {
            None => format!("U{}:{}={}", rel.oid, text(&new.0[0]), text(&new.0[1])),
            Some(o) => format!("U{}:{}->{}", rel.oid, text(&o.0[0]), text(&new.0[0])),
        },
        Change::Delete { rel, old } => format!("D{}:{}", rel.oid, text(&old.0[0])),
        _ => "?".into(),
    };
    steps
        .iter()
        .map(|s| match s {
            Step::One(c) => one(c),
            Step::Inserts(cs) => {
                let ids: Vec<String> = cs.iter().map(|c| one(c)[3..].to_owned()).collect();
                format!("I{}:{}", relation(cs[0]).map_or(0, |r| r.oid), ids.join("+"))
            }
        })
        .collect()
}

fn text(d: &Datum) -> String {
    match d {
        Datum::Text(v) => String::from_utf8_lossy(v).into_owned(),
        Datum::Null => "null".into(),
        Datum::Unchanged => "u".into(),
    }
}

#[test]
fn groups_tables_and_merges_their_inserts() {
    let (a, b) = (rel(1, ReplicaIdentity::Default), rel(2, ReplicaIdentity::Default));
    let changes =
        vec![upd(&a, "1", t("x")), ins(&b, "1", "h"), upd(&a, "2", t("y")), ins(&b, "2", "h"), ins(&b, "3", "h")];
    assert_eq!(show(&plan(&changes, true, |_| false)), ["U1:1=x", "U1:2=y", "I2:1+2+3"]);
    // Without reordering only neighbours merge.
    assert_eq!(show(&plan(&changes, false, |_| false)), ["U1:1=x", "I2:1", "U1:2=y", "I2:2+3"]);
}

#[test]
fn inserts_with_different_columns_sent_or_other_changes_between_stay_apart() {
    let a = rel(1, ReplicaIdentity::Default);
    let toast = Change::Insert { rel: a.clone(), new: Tuple(vec![t("3"), Datum::Unchanged]) };
    let changes = vec![ins(&a, "1", "x"), ins(&a, "2", "x"), toast, del(&a, "1"), ins(&a, "4", "x"), ins(&a, "5", "x")];
    assert_eq!(show(&plan(&changes, true, |_| true)), ["I1:1+2", "I1:3", "D1:1", "I1:4+5"]);
}

#[test]
fn superseded_updates_are_dropped_only_when_safe() {
    let a = rel(1, ReplicaIdentity::Default);
    let changes = vec![
        upd(&a, "1", t("a")), // dropped: superseded by the next update of 1
        upd(&a, "2", t("b")), // kept: 2 is deleted later
        upd(&a, "1", t("c")), // dropped
        del(&a, "2"),
        upd(&a, "3", t("d")), // kept: the next update of 3 leaves a column unchanged
        upd(&a, "3", Datum::Unchanged),
        upd(&a, "1", t("e")), // kept: the last one
    ];
    assert_eq!(show(&plan(&changes, true, |_| true)), ["U1:2=b", "D1:2", "U1:3=d", "U1:3=u", "U1:1=e"]);
    // Not for tables the caller does not declare collapsible.
    assert_eq!(plan(&changes, true, |_| false).len(), changes.len());
}

#[test]
fn key_changes_and_full_identity_stop_dropping() {
    let a = rel(1, ReplicaIdentity::Default);
    let rekey = Change::Update {
        rel: a.clone(),
        old: Some(Tuple(vec![t("9"), Datum::Null])),
        new: Tuple(vec![t("1"), t("k")]),
    };
    let changes = vec![upd(&a, "1", t("a")), rekey, upd(&a, "1", t("b"))];
    assert_eq!(show(&plan(&changes, true, |_| true)), ["U1:1=a", "U1:9->1", "U1:1=b"]);

    let f = rel(2, ReplicaIdentity::Full);
    let changes = vec![upd(&f, "1", t("a")), upd(&f, "1", t("b"))];
    assert_eq!(plan(&changes, true, |_| true).len(), 2);
}

#[test]
fn other_tables_do_not_stop_dropping() {
    let (a, b) = (rel(1, ReplicaIdentity::Index), rel(2, ReplicaIdentity::Default));
    let changes = vec![upd(&a, "1", t("a")), ins(&b, "1", "x"), upd(&b, "1", t("y")), upd(&a, "1", t("b"))];
    assert_eq!(show(&plan(&changes, true, |r| r.oid == 1)), ["I2:1", "U2:1=y", "U1:1=b"]);
}

#[test]
fn buckets_are_powers_of_two_within_the_parameter_limit() {
    assert_eq!(bucket(1, 3), 1);
    assert_eq!(bucket(64, 6), 64);
    assert_eq!(bucket(100, 6), 64);
    assert_eq!(bucket(1000, 6), 256);
    assert_eq!(bucket(1000, 1000), 64);
    assert_eq!(bucket(5, 70_000), 1);
    assert_eq!(bucket(0, 0), 1);
}
