//! Fewer statements per batch: the row changes of a batch, planned as statements.
//!
//! Place in the data flow: between buffering a batch's row changes and
//! encoding them ([`super::batch`]). Socket-free and pure, so it is tested
//! on its own. A batch is ONE replica transaction that runs with
//! `session_replication_role = replica`: no user triggers, no rules, no
//! foreign-key checks or actions fire, so a statement on one table reads and
//! writes that table only. The plan may therefore:
//!
//! 1. **Group by table** (`reorder`): all changes of a table, in their own
//!    order, then the next table's. Changes to different tables commute: no
//!    statement reads another table, every constraint that can fail mid-batch
//!    (unique, exclusion, check, not null) looks at one table, and deferred
//!    ones see only the final state, which is the same in any order. Only
//!    allowed when no table on the replica has inheritance children (an
//!    UPDATE/DELETE on such a parent also reaches its children's rows) and
//!    no trigger or rule is set to fire on replicas (ENABLE ALWAYS/REPLICA);
//!    otherwise neither this nor rule 3 applies.
//! 2. **Merge INSERTs**: consecutive INSERTs of one table that send the same
//!    columns become one multi-row `INSERT ... VALUES (..), (..)`, which
//!    inserts the same rows in the same order, evaluating defaults of unsent
//!    columns per row exactly as separate statements would; if any row fails,
//!    the batch fails either way.
//! 3. **Drop superseded UPDATEs** (`collapsible` tables only): an UPDATE of
//!    key K (key unchanged, identity DEFAULT/INDEX) is dropped when the next
//!    change of that table touching K is an UPDATE of K that is also
//!    key-preserving and sets every column (no unchanged-TOAST marker). That
//!    later UPDATE finds the same row (nothing in between inserted, deleted or
//!    re-keyed K) and overwrites every column the dropped one set, so the
//!    row ends the same; generated columns are recomputed from it. What could
//!    differ is only the transient state other rows are checked against: the
//!    caller declares a table collapsible only if its identity index is its
//!    only unique index and it has no exclusion constraint, so no check on
//!    another row can see row K's intermediate values.
//!
//! TRUNCATE, DDL and a new description of a relation already in the batch
//! are barriers: the caller plans and sends what it has before them.

use foldhash::{HashMap, HashMapExt};

use crate::change::{Change, Datum, Relation, ReplicaIdentity, Tuple};

/// One statement of the plan.
#[derive(Debug)]
pub enum Step<'a> {
    /// One change, one statement.
    One(&'a Change),
    /// Two or more consecutive INSERTs of one table sending the same columns.
    Inserts(Vec<&'a Change>),
}

/// Plans `changes` (row changes only, in commit order; one description per
/// relation OID) as statements, see module docs. `collapsible` says for which
/// tables superseded UPDATEs may be dropped.
pub fn plan<'a>(changes: &'a [Change], reorder: bool, collapsible: impl Fn(&Relation) -> bool) -> Vec<Step<'a>> {
    let keep = superseded(changes, collapsible);
    let mut order: Vec<usize> = (0..changes.len()).filter(|&i| keep[i]).collect();
    if reorder {
        // Stable: by the table's first appearance, each table in its own order.
        let mut first: HashMap<u32, usize> = HashMap::new();
        for &i in &order {
            if let Some(rel) = relation(&changes[i]) {
                let n = first.len();
                first.entry(rel.oid).or_insert(n);
            }
        }
        order.sort_by_key(|&i| relation(&changes[i]).and_then(|r| first.get(&r.oid).copied()).unwrap_or(usize::MAX));
    }
    let mut steps = Vec::with_capacity(order.len());
    let mut run: Vec<&Change> = Vec::new();
    for i in order {
        let change = &changes[i];
        if let Some(first) = run.first() {
            if !same_insert_shape(first, change) {
                flush_run(&mut run, &mut steps);
            }
        }
        match change {
            Change::Insert { rel, .. } if !rel.columns.is_empty() => run.push(change),
            _ => steps.push(Step::One(change)),
        }
    }
    flush_run(&mut run, &mut steps);
    steps
}

fn flush_run<'a>(run: &mut Vec<&'a Change>, steps: &mut Vec<Step<'a>>) {
    match run.len() {
        0 => {}
        1 => steps.push(Step::One(run[0])),
        _ => steps.push(Step::Inserts(std::mem::take(run))),
    }
    run.clear();
}

fn relation(change: &Change) -> Option<&Relation> {
    match change {
        Change::Insert { rel, .. } | Change::Update { rel, .. } | Change::Delete { rel, .. } => Some(rel),
        Change::Truncate { .. } | Change::Message { .. } => None,
    }
}

/// Both INSERTs into the same table, sending the same columns.
fn same_insert_shape(a: &Change, b: &Change) -> bool {
    match (a, b) {
        (Change::Insert { rel: ra, new: na }, Change::Insert { rel: rb, new: nb }) => {
            ra.oid == rb.oid
                && na.0.len() == nb.0.len()
                && na.0.iter().zip(&nb.0).all(|(x, y)| matches!(x, Datum::Unchanged) == matches!(y, Datum::Unchanged))
        }
        _ => false,
    }
}

/// Which changes to keep: `false` for UPDATEs superseded by a later one (rule 3).
fn superseded(changes: &[Change], collapsible: impl Fn(&Relation) -> bool) -> Vec<bool> {
    let mut keep = vec![true; changes.len()];
    // Per table: key → whether the next change touching it (later in the
    // batch) is a key-preserving UPDATE that sets every column.
    let mut later: HashMap<u32, HashMap<Vec<u8>, bool>> = HashMap::new();
    for (i, change) in changes.iter().enumerate().rev() {
        let Some(rel) = relation(change) else { continue };
        if !matches!(rel.replica_identity, ReplicaIdentity::Default | ReplicaIdentity::Index) || !collapsible(rel) {
            continue;
        }
        let keys = later.entry(rel.oid).or_default();
        match change {
            Change::Update { old: None, new, .. } => match key_of(rel, new) {
                Some(k) => {
                    if keys.get(&k) == Some(&true) {
                        keep[i] = false;
                    } else {
                        let full = !new.0.iter().any(|d| matches!(d, Datum::Unchanged));
                        keys.insert(k, full);
                    }
                }
                None => keys.clear(),
            },
            Change::Update { old: Some(old), new, .. } => match (key_of(rel, old), key_of(rel, new)) {
                (Some(a), Some(b)) => {
                    keys.insert(a, false);
                    keys.insert(b, false);
                }
                _ => keys.clear(),
            },
            Change::Insert { new: t, .. } | Change::Delete { old: t, .. } => match key_of(rel, t) {
                Some(k) => {
                    keys.insert(k, false);
                }
                None => keys.clear(),
            },
            Change::Truncate { .. } | Change::Message { .. } => {}
        }
    }
    keep
}

/// The identity key values of a tuple, length-prefixed; `None` if the table
/// has no key columns or a key value is NULL or not sent (then nothing
/// across this change is dropped).
fn key_of(rel: &Relation, tuple: &Tuple) -> Option<Vec<u8>> {
    let mut key = Vec::new();
    let mut any = false;
    for (col, datum) in rel.columns.iter().zip(&tuple.0) {
        if !col.is_key {
            continue;
        }
        let Datum::Text(v) = datum else { return None };
        key.extend_from_slice(&(v.len() as u32).to_be_bytes());
        key.extend_from_slice(v);
        any = true;
    }
    any.then_some(key)
}

/// Rows in one multi-row INSERT of `rows` rows: the largest power of two not
/// above `rows`, at most 256, and at most what fits the protocol's 65,535
/// parameters with `columns` per row.
pub fn bucket(rows: usize, columns: usize) -> usize {
    let max = (u16::MAX as usize / columns.max(1)).clamp(1, 256);
    let n = rows.clamp(1, max);
    1 << (usize::BITS - 1 - n.leading_zeros())
}

#[cfg(test)]
#[path = "coalesce_tests.rs"]
mod tests;
