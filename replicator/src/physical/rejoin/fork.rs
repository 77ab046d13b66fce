//! Where an old primary's history left the new primary's, and what it committed after that.
//!
//! Place in the rejoin flow: step 2, after the old primary is stopped and before anything in
//! its data directory changes. Each side's timeline history (`pg_wal/NNNNNNNN.history`:
//! `parent_tli  switchpoint  reason` lines) gives the path of timelines it followed; the fork
//! is where the last timeline both paths share ended first (pg_rewind's rule, so the list
//! matches what pg_rewind discards). `pg_waldump --rmgr=Transaction` over the old primary's
//! WAL from the fork lists every COMMIT it wrote that the new primary never had.

use std::path::Path;

use tandem_core::Lsn;

use super::RejoinError;
use crate::physical::RelayError;

/// One timeline on a node's path: `tli` from `begin` to `end` (`None`: still open).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimelineSpan {
    /// The timeline id.
    pub tli: u32,
    /// Where it began (`0/0` for the first).
    pub begin: Lsn,
    /// Where the next timeline of this path branched off it; `None` for the current one.
    pub end: Option<Lsn>,
}

/// A transaction the old primary committed after the fork: the new primary never had it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostTransaction {
    /// Its transaction id.
    pub xid: u64,
    /// Its commit time as pg_waldump prints it (`2026-12-07 14:43:19.581304 UTC`).
    pub committed: String,
    /// The position of its commit record.
    pub lsn: Lsn,
    /// The timeline it was committed on.
    pub tli: u32,
}

/// The lost transactions and whether the whole of the WAL after the fork could be read.
#[derive(Clone, Debug, Default)]
pub struct LostList {
    /// Every COMMIT found after the fork, in WAL order.
    pub transactions: Vec<LostTransaction>,
    /// Why the list may be incomplete (WAL that could not be read); `None` when complete.
    pub incomplete: Option<String>,
}

/// The path of timelines a node followed, from the history file of its timeline `tli`
/// (empty text for timeline 1, which has none).
pub fn timeline_path(history: &str, tli: u32) -> Result<Vec<TimelineSpan>, RejoinError> {
    let mut spans = Vec::new();
    let mut begin = Lsn(0);
    for line in history.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(parent), Some(switch)) = (fields.next(), fields.next()) else {
            return Err(RejoinError::Parse(format!("timeline history line {line:?}")));
        };
        let parent: u32 = parent.parse().map_err(|_| RejoinError::Parse(format!("timeline history line {line:?}")))?;
        let end: Lsn = switch.parse().map_err(|_| RejoinError::Parse(format!("timeline history line {line:?}")))?;
        spans.push(TimelineSpan { tli: parent, begin, end: Some(end) });
        begin = end;
    }
    spans.push(TimelineSpan { tli, begin, end: None });
    Ok(spans)
}

/// Where `old` (the rejoining node's path) left `new` (the new primary's): index into `old`
/// of the last shared timeline and the position it forked at. `None` when the two paths
/// share no timeline at all (not one system's history), `Some((i, None))` when `old` never
/// left `new`'s path (nothing to discard).
pub fn fork_point(old: &[TimelineSpan], new: &[TimelineSpan]) -> Option<(usize, Option<Lsn>)> {
    let shared = old.iter().zip(new).take_while(|(a, b)| a.tli == b.tli && a.begin == b.begin).count();
    let i = shared.checked_sub(1)?;
    let fork = match (old[i].end, new[i].end) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (Some(a), None) | (None, Some(a)) => Some(a),
        (None, None) => None,
    };
    Some((i, fork))
}

/// The WAL ranges of `old` after the fork: `(tli, start, end)`, `end` `None` = to the end.
pub fn lost_ranges(old: &[TimelineSpan], index: usize, fork: Lsn) -> Vec<(u32, Lsn, Option<Lsn>)> {
    old.iter()
        .enumerate()
        .skip(index)
        .map(|(j, span)| (span.tli, if j == index { fork } else { span.begin }, span.end))
        .filter(|(_, start, end)| end.is_none_or(|e| e > *start))
        .collect()
}

/// One COMMIT (or COMMIT_PREPARED) from a `pg_waldump` line, if the line is one.
pub fn parse_commit(line: &str, tli: u32) -> Option<LostTransaction> {
    let desc = line.split_once("desc: ")?.1;
    let lsn: Lsn = line.split_once("lsn: ")?.1.split(',').next()?.trim().parse().ok()?;
    let (xid, when) = if let Some(rest) = desc.strip_prefix("COMMIT_PREPARED ") {
        // `COMMIT_PREPARED 730: 2026-12-07 14:43:19.581304 UTC; ...`
        let (xid, when) = rest.split_once(": ")?;
        (xid.trim().parse().ok()?, when)
    } else {
        let when = desc.strip_prefix("COMMIT ")?;
        let xid = line.split_once("tx: ")?.1.split(',').next()?.trim().parse().ok()?;
        (xid, when)
    };
    let committed = when.split(';').next().unwrap_or(when).trim().to_owned();
    Some(LostTransaction { xid, committed, lsn, tli })
}

/// Whether pg_waldump's complaint only says where the WAL ends (the normal way it stops).
fn is_end_of_wal(stderr: &str) -> bool {
    stderr.lines().all(|l| {
        l.trim().is_empty()
            || l.contains("invalid record length")
            || l.contains("could not find a valid record after")
            || l.contains("error in WAL record")
            || l.contains("invalid magic number")
            || l.contains("record with incorrect prev-link")
            || l.contains("contrecord is requested")
    })
}

/// Lists the COMMITs in `pg_wal` of `data_dir` over `ranges` (blocking: runs pg_waldump).
pub fn list_lost(data_dir: &Path, ranges: &[(u32, Lsn, Option<Lsn>)]) -> Result<LostList, RejoinError> {
    let program = tandem_localpg::tool("pg_waldump").map_err(RelayError::LocalPg)?;
    let wal = data_dir.join("pg_wal");
    let cwd = data_dir.parent().unwrap_or(Path::new("/"));
    let mut list = LostList::default();
    for &(tli, start, end) in ranges {
        let mut cmd = tandem_localpg::server_command(&program, cwd).map_err(RelayError::LocalPg)?;
        cmd.env("LC_ALL", "C").arg("--path").arg(&wal).args([
            "--rmgr=Transaction",
            "--timeline",
            &tli.to_string(),
            "--start",
            &start.to_string(),
        ]);
        if let Some(end) = end {
            cmd.args(["--end", &end.to_string()]);
        }
        let out = cmd.output().map_err(RelayError::io("run pg_waldump"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        list.transactions.extend(stdout.lines().filter_map(|l| parse_commit(l, tli)));
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && !is_end_of_wal(&stderr) {
            list.incomplete.get_or_insert_with(|| format!("pg_waldump on timeline {tli}: {}", stderr.trim()));
        }
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    #[test]
    fn history_files_become_paths() {
        let path = timeline_path("1\t0/3018080\tno recovery target specified\n\n", 2).unwrap();
        assert_eq!(
            path,
            vec![
                TimelineSpan { tli: 1, begin: Lsn(0), end: Some(lsn("0/3018080")) },
                TimelineSpan { tli: 2, begin: lsn("0/3018080"), end: None },
            ]
        );
        assert_eq!(timeline_path("", 1).unwrap(), vec![TimelineSpan { tli: 1, begin: Lsn(0), end: None }]);
        assert!(timeline_path("garbage\n", 2).is_err());
    }

    #[test]
    fn the_fork_is_where_the_shared_timeline_ended_first() {
        let old = timeline_path("", 1).unwrap();
        let new = timeline_path("1\t0/3018080\tx\n", 2).unwrap();
        assert_eq!(fork_point(&old, &new), Some((0, Some(lsn("0/3018080")))));
        assert_eq!(lost_ranges(&old, 0, lsn("0/3018080")), vec![(1, lsn("0/3018080"), None)]);

        // The old primary had been promoted itself (timeline 2) and the new one branched off
        // timeline 2 later, onto 3: the fork is on 2.
        let old = timeline_path("1\t0/2000000\tx\n", 2).unwrap();
        let new = timeline_path("1\t0/2000000\tx\n2\t0/5000000\tx\n", 3).unwrap();
        assert_eq!(fork_point(&old, &new), Some((1, Some(lsn("0/5000000")))));

        // Split brain: both promoted to timeline 2 from different points of timeline 1.
        let old = timeline_path("1\t0/4000000\tx\n", 2).unwrap();
        let new = timeline_path("1\t0/3000000\tx\n", 2).unwrap();
        assert_eq!(fork_point(&old, &new), Some((0, Some(lsn("0/3000000")))));
        assert_eq!(
            lost_ranges(&old, 0, lsn("0/3000000")),
            vec![(1, lsn("0/3000000"), Some(lsn("0/4000000"))), (2, lsn("0/4000000"), None)]
        );

        // Same path: nothing to discard. No shared timeline: not one history.
        let same = timeline_path("", 1).unwrap();
        assert_eq!(fork_point(&same, &same), Some((0, None)));
        let other = timeline_path("", 7).unwrap();
        assert_eq!(fork_point(&same, &other), None);
    }

    #[test]
    fn commits_are_read_from_waldump_lines() {
        let line = "rmgr: Transaction len (rec/tot):     34/    34, tx:        726, lsn: 0/030180C0, \
                    prev 0/03018080, desc: COMMIT 2026-12-07 14:43:19.581304 UTC";
        assert_eq!(
            parse_commit(line, 1),
            Some(LostTransaction {
                xid: 726,
                committed: "2026-12-07 14:43:19.581304 UTC".into(),
                lsn: lsn("0/030180C0"),
                tli: 1
            })
        );
        let inval = "rmgr: Transaction len (rec/tot): 245/245, tx: 731, lsn: 0/03019000, prev 0/03018F00, \
                     desc: COMMIT 2026-12-07 14:43:20.000001 UTC; inval msgs: catcache 55";
        assert_eq!(parse_commit(inval, 1).unwrap().committed, "2026-12-07 14:43:20.000001 UTC");
        let prepared = "rmgr: Transaction len (rec/tot): 50/50, tx: 0, lsn: 0/03019100, prev 0/03019000, \
                        desc: COMMIT_PREPARED 730: 2026-12-07 14:43:21.000001 UTC";
        assert_eq!(parse_commit(prepared, 2).unwrap().xid, 730);
        let abort = "rmgr: Transaction len (rec/tot): 34/34, tx: 732, lsn: 0/03019200, prev 0/03019100, \
                     desc: ABORT 2026-12-07 14:43:22.000001 UTC";
        assert_eq!(parse_commit(abort, 1), None);
        assert!(is_end_of_wal(
            "pg_waldump: error: error in WAL record at 0/3018190: invalid record length at 0/30181B8: wanted 24, got 0"
        ));
        assert!(!is_end_of_wal("pg_waldump: error: could not find file \"000000010000000000000003\""));
    }
}
