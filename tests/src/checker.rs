//! A checker of lost writes: clients insert unique ids through the proxy and record which
//! inserts were acknowledged; afterwards every acknowledged id must be on the primary, once.
//!
//! Each insert has one of three outcomes: acknowledged (the COMMIT answer arrived), failed
//! (an error said it did not happen, e.g. 25006 without a lease), or unknown (the connection
//! broke or timed out before the answer: it may or may not be there). Only acknowledged ids
//! are owed; unknown ones may appear, at most once.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the writers saw.
#[derive(Debug, Default)]
pub struct Outcomes {
    /// Acknowledged ids, with when the answer arrived.
    pub acked: Vec<(i64, Instant)>,
    /// Ids whose insert failed with an error (not there), with when.
    pub failed: Vec<(i64, Instant)>,
    /// Ids whose outcome is unknown, with when.
    pub unknown: Vec<(i64, Instant)>,
    /// SQLSTATE (or "connection") of every failed or unknown insert, counted.
    pub errors: std::collections::BTreeMap<String, u32>,
}

impl Outcomes {
    /// The first acknowledgement at or after `t`.
    pub fn first_ack_after(&self, t: Instant) -> Option<Instant> {
        self.acked.iter().map(|(_, at)| *at).filter(|at| *at >= t).min()
    }

    /// How long writes were unavailable after `t` (a kill): the longest stretch without an
    /// acknowledgement from `t` on (answers already on their way at the kill come first,
    /// then the failover's pause). None: no acknowledgement after `t`.
    pub fn outage_after(&self, t: Instant) -> Option<Duration> {
        let mut times: Vec<Instant> = self.acked.iter().map(|(_, at)| *at).filter(|at| *at >= t).collect();
        times.sort();
        let mut prev = t;
        let mut longest = None;
        for at in times {
            let gap = at - prev;
            if longest.is_none_or(|l| gap > l) {
                longest = Some(gap);
            }
            prev = at;
        }
        longest
    }
}

/// Writers running in the background until [`Writers::stop`].
pub struct Writers {
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Outcomes>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writers {
    /// `clients` writers inserting into `table (id bigint primary key)` through `dsn`.
    pub fn start(dsn: &str, table: &str, clients: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Outcomes::default()));
        let (dsn, table, s, o) = (dsn.to_owned(), table.to_owned(), stop.clone(), outcomes.clone());
        let thread = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                let next = Arc::new(AtomicI64::new(1));
                let mut tasks = Vec::new();
                for _ in 0..clients {
                    let (dsn, table, s, o, next) = (dsn.clone(), table.clone(), s.clone(), o.clone(), next.clone());
                    tasks.push(tokio::spawn(async move { writer(&dsn, &table, &s, &o, &next).await }));
                }
                for t in tasks {
                    let _ = t.await;
                }
            });
        });
        Writers { stop, outcomes, thread: Some(thread) }
    }

    /// Acknowledged so far.
    pub fn acked(&self) -> usize {
        self.outcomes.lock().map(|o| o.acked.len()).unwrap_or(0)
    }

    /// Stops the writers and returns what they saw.
    pub fn stop(mut self) -> Outcomes {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.outcomes.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

async fn writer(dsn: &str, table: &str, stop: &AtomicBool, out: &Mutex<Outcomes>, next: &AtomicI64) {
    let mut client: Option<tokio_postgres::Client> = None;
    let sql = format!("INSERT INTO {table} (id) VALUES ($1)");
    while !stop.load(Ordering::SeqCst) {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            match tokio::time::timeout(Duration::from_secs(3), tokio_postgres::connect(dsn, tokio_postgres::NoTls))
                .await
            {
                Ok(Ok((c, conn))) => {
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    client = Some(c);
                }
                _ => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        let Some(c) = client.as_ref() else { continue };
        let id = next.fetch_add(1, Ordering::SeqCst);
        let result = tokio::time::timeout(Duration::from_secs(10), c.execute(&sql, &[&id])).await;
        let code = match &result {
            Ok(Err(e)) => e.code().map(|c| c.code().to_owned()).unwrap_or_else(|| "connection".into()),
            Err(_) => "timeout".into(),
            Ok(Ok(_)) => String::new(),
        };
        let record = |list: fn(&mut Outcomes) -> &mut Vec<(i64, Instant)>| {
            let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
            list(&mut o).push((id, Instant::now()));
            *o.errors.entry(code.clone()).or_default() += 1;
        };
        match result {
            Ok(Ok(_)) => out.lock().unwrap_or_else(|p| p.into_inner()).acked.push((id, Instant::now())),
            // An ERROR (not a FATAL, which may end a session mid-commit: outcome unknown): the
            // insert did not happen.
            Ok(Err(e)) if e.as_db_error().is_some_and(|d| d.severity() == "ERROR") => {
                record(|o| &mut o.failed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => {
                record(|o| &mut o.unknown);
                client = None;
            }
        }
    }
}

/// Checks the ids on a server against the outcomes: every acknowledged id present, no id
/// present twice, no failed id present. Returns a description of every violation.
pub fn violations(ids_on_server: &[i64], outcomes: &Outcomes) -> Vec<String> {
    let mut seen = std::collections::BTreeMap::<i64, u32>::new();
    for id in ids_on_server {
        *seen.entry(*id).or_default() += 1;
    }
    let mut v = Vec::new();
    let missing: Vec<i64> = outcomes.acked.iter().map(|(id, _)| *id).filter(|id| !seen.contains_key(id)).collect();
    if !missing.is_empty() {
        v.push(format!("{} acknowledged ids missing: {:?}", missing.len(), &missing[..missing.len().min(20)]));
    }
    let twice: Vec<i64> = seen.iter().filter(|(_, n)| **n > 1).map(|(id, _)| *id).collect();
    if !twice.is_empty() {
        v.push(format!("ids present twice: {twice:?}"));
    }
    let failed: Vec<i64> = outcomes.failed.iter().map(|(id, _)| *id).filter(|id| seen.contains_key(id)).collect();
    if !failed.is_empty() {
        v.push(format!("ids whose insert failed are present: {failed:?}"));
    }
    v
}
