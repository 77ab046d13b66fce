//! The primary's commit quorum in physical mode: `synchronous_standby_names`.
//!
//! Place in the data flow: the relay sets it when it starts (sync mode: `ANY k (standbys...,
//! relay)`, so an acknowledged commit is flushed on k members; async mode: empty) and takes
//! itself out when it stops cleanly. Taking itself out must never leave the primary waiting
//! for members that are gone: if fewer than k of the remaining members are streaming, k is
//! lowered to the number that are (and to async, empty, when none is), with a warning that
//! the RPO-0 guarantee is suspended — Patroni's non-strict synchronous mode does the same. A
//! relay killed with SIGKILL cannot do this; the remaining members still meet the quorum
//! when k of them are up (that is what `ANY k` with more than k members is for).

use crate::source::conn::quote_ident;

/// `ANY k ("a", "b", ...)`, or empty when there is nobody to wait for.
pub fn any_value(k: usize, members: &[String]) -> String {
    if k == 0 || members.is_empty() {
        return String::new();
    }
    let list: Vec<String> = members.iter().map(|m| quote_ident(m)).collect();
    format!("ANY {} ({})", k.min(members.len()), list.join(", "))
}

/// The value to leave behind when the relay stops cleanly: the configured members without
/// the relay, with k lowered to the members that are streaming right now.
pub fn value_without(relay: &str, k: usize, members: &[String], streaming: &[String]) -> (String, Option<String>) {
    let remaining: Vec<String> = members.iter().filter(|m| m.as_str() != relay).cloned().collect();
    let up = remaining.iter().filter(|m| streaming.contains(m)).count();
    if up >= k {
        return (any_value(k, &remaining), None);
    }
    let warning = if up == 0 {
        format!("no other quorum member is streaming: the primary now commits asynchronously (wanted {k})")
    } else {
        format!("only {up} other quorum member(s) streaming: the quorum is lowered from {k} to {up}")
    };
    (any_value(up, &remaining), Some(warning))
}

/// Whether a `synchronous_standby_names` value lists `name` (so it was written for this
/// cluster and the relay may rewrite it).
pub fn mentions(value: &str, name: &str) -> bool {
    value.contains(&quote_ident(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn any_lists_every_member() {
        assert_eq!(any_value(1, &names(&["s1", "s2", "tandem_relay"])), r#"ANY 1 ("s1", "s2", "tandem_relay")"#);
        assert_eq!(any_value(1, &[]), "");
        assert_eq!(any_value(3, &names(&["a"])), r#"ANY 1 ("a")"#);
    }

    #[test]
    fn stopping_never_leaves_a_wait_for_the_gone() {
        let m = names(&["s1", "s2", "tandem_relay"]);
        let (v, w) = value_without("tandem_relay", 1, &m, &names(&["s1", "s2", "tandem_relay"]));
        assert_eq!(v, r#"ANY 1 ("s1", "s2")"#);
        assert!(w.is_none());
        let (v, w) = value_without("tandem_relay", 2, &m, &names(&["s1", "tandem_relay"]));
        assert_eq!(v, r#"ANY 1 ("s1", "s2")"#);
        assert!(w.unwrap().contains("lowered from 2 to 1"));
        let (v, w) = value_without("tandem_relay", 1, &m, &names(&["tandem_relay"]));
        assert_eq!(v, "");
        assert!(w.unwrap().contains("asynchronously"));
        assert!(mentions(r#"ANY 1 ("s1", "tandem_relay")"#, "tandem_relay"));
        assert!(!mentions("FIRST 1 (x)", "tandem_relay"));
    }
}
