//! What failover says to the PostgreSQL nodes, in SQL: fence, detach, read positions,
//! promote, prepare the new primary, re-point standbys.
//!
//! Place in the data flow: the failover steps ([`super`]) → **these statements** → the nodes.
//! Every call is bounded (a frozen or cut-off node must not stall a failover) and
//! idempotent (a new leader repeats the phase it finds). The login is the probes' (a
//! superuser: `ALTER SYSTEM`, `pg_promote` and slots need one).

use std::time::Duration;

use tandem_core::{Lsn, NodeAddr};
use tokio_postgres::Client;

use crate::config::ProbeLogin;

/// How long a promotion may take (the end of recovery writes a checkpoint record; a busy
/// machine may need seconds).
const PROMOTE_WAIT: Duration = Duration::from_secs(15);
/// How often a promotion is checked on.
const PROMOTE_POLL: Duration = Duration::from_millis(10);
/// How long a `CHECKPOINT` may take (it writes every dirty buffer).
const CHECKPOINT_WAIT: Duration = Duration::from_secs(60);

/// Why a statement on a node failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No session within the bound.
    #[error("{node}: cannot connect: {reason}")]
    Connect {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
    /// A statement failed or took too long.
    #[error("{node}: {what}: {reason}")]
    Statement {
        /// The node.
        node: String,
        /// What was being done.
        what: String,
        /// Why.
        reason: String,
    },
}

/// An SQL session on one node, every statement bounded by `timeout`.
pub struct NodeSession {
    name: String,
    client: Client,
    timeout: Duration,
}

/// Where a standby stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Positions {
    /// Still in recovery (false: it was promoted).
    pub in_recovery: bool,
    /// WAL received and flushed by its WAL receiver (kept after the receiver stops).
    pub received: Option<Lsn>,
    /// WAL replayed.
    pub replayed: Option<Lsn>,
}

impl NodeSession {
    /// Connects to `addr` as `login`, within `timeout`.
    pub async fn connect(
        name: &str,
        addr: &NodeAddr,
        login: &ProbeLogin,
        timeout: Duration,
    ) -> Result<NodeSession, NodeError> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&addr.host)
            .port(addr.port)
            .user(&login.user)
            .dbname(&login.database)
            .application_name("tandem_failover")
            .connect_timeout(timeout)
            .tcp_user_timeout(timeout * 2);
        if let Some(p) = &login.password {
            cfg.password(p);
        }
        let connect = cfg.connect(tokio_postgres::NoTls);
        let (client, conn) = match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(NodeError::Connect { node: name.into(), reason: e.to_string() }),
            Err(_) => return Err(NodeError::Connect { node: name.into(), reason: "timed out".into() }),
        };
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(NodeSession { name: name.into(), client, timeout })
    }

    async fn run(&self, what: &str, sql: &str) -> Result<Vec<tokio_postgres::SimpleQueryMessage>, NodeError> {
        self.run_within(self.timeout, what, sql).await
    }

    async fn run_within(
        &self,
        bound: Duration,
        what: &str,
        sql: &str,
    ) -> Result<Vec<tokio_postgres::SimpleQueryMessage>, NodeError> {
        let err = |reason: String| NodeError::Statement { node: self.name.clone(), what: what.into(), reason };
        match tokio::time::timeout(bound, self.client.simple_query(sql)).await {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(e)) => Err(err(e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_else(|| e.to_string()))),
            Err(_) => Err(err("timed out".into())),
        }
    }

    /// Runs each statement on its own (`ALTER SYSTEM` refuses to run in the implicit
    /// transaction of a multi-statement query).
    async fn run_each(&self, what: &str, statements: &[&str]) -> Result<(), NodeError> {
        for sql in statements {
            self.run(what, sql).await?;
        }
        Ok(())
    }

    /// The first row's columns as text.
    async fn row(&self, what: &str, sql: &str) -> Result<Vec<Option<String>>, NodeError> {
        for msg in self.run(what, sql).await? {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = msg {
                return Ok((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect());
            }
        }
        Err(NodeError::Statement { node: self.name.clone(), what: what.into(), reason: "no row".into() })
    }

    /// Fences a primary that still answers: new transactions read-only, every commit waiting
    /// for a standby that never comes (so nothing more is acknowledged, even by a session
    /// that turns read-only off), and every client session and WAL sender ended. A node that
    /// already carries the fence is left alone (a blocked failover repeats its fence every
    /// tick). True when it fenced now.
    pub async fn fence_primary(&self) -> Result<bool, NodeError> {
        let row = self
            .row(
                "reading the fence",
                "SELECT current_setting('default_transaction_read_only') = 'on' \
                 AND current_setting('synchronous_standby_names') = 'tandem_fenced'",
            )
            .await?;
        if row.first().cloned().flatten().as_deref() == Some("t") {
            return Ok(false);
        }
        self.run_each(
            "fencing the old primary",
            &[
                "ALTER SYSTEM SET default_transaction_read_only = on",
                "ALTER SYSTEM SET synchronous_standby_names = 'tandem_fenced'",
                "SELECT pg_reload_conf()",
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE pid <> pg_backend_pid() AND backend_type IN ('client backend', 'walsender')",
            ],
        )
        .await?;
        Ok(true)
    }

    /// Stops the standby's WAL receiver and keeps it stopped (no `primary_conninfo`), so
    /// it acknowledges nothing more to the old primary; it goes on replaying what it has and
    /// what `restore_command` fetches from the relay. Waits until the receiver is gone.
    pub async fn detach(&self) -> Result<(), NodeError> {
        // A blocked failover repeats the fence every tick: reload only when needed.
        if !self.primary_conninfo().await?.is_empty() {
            self.run_each(
                "detaching the standby",
                &["ALTER SYSTEM SET primary_conninfo = ''", "SELECT pg_reload_conf()"],
            )
            .await?;
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let row =
                self.row("waiting for the WAL receiver to stop", "SELECT count(*) FROM pg_stat_wal_receiver").await?;
            if row.first().cloned().flatten().as_deref() == Some("0") {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NodeError::Statement {
                    node: self.name.clone(),
                    what: "detaching the standby".into(),
                    reason: "its WAL receiver still runs".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Received and replayed positions (and whether it is still a standby).
    pub async fn positions(&self) -> Result<Positions, NodeError> {
        let row = self
            .row(
                "reading positions",
                "SELECT pg_is_in_recovery(), pg_last_wal_receive_lsn(), \
                 CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END",
            )
            .await?;
        let lsn = |i: usize| row.get(i).cloned().flatten().and_then(|t| t.parse::<Lsn>().ok());
        Ok(Positions {
            in_recovery: row.first().cloned().flatten().as_deref() == Some("t"),
            received: lsn(1),
            replayed: lsn(2),
        })
    }

    /// Promotes the standby and waits until it accepts writes; a node already promoted (by
    /// a leader that died after asking) is fine. `pg_promote(wait => false)` and a poll of
    /// `pg_is_in_recovery()` every 10 ms: `pg_promote`'s own wait checks every 100 ms, and
    /// during a switchover every client is waiting on this.
    pub async fn promote(&self) -> Result<(), NodeError> {
        if !self.positions().await?.in_recovery {
            return Ok(());
        }
        self.run("promoting", "SELECT pg_promote(false)").await?;
        let deadline = tokio::time::Instant::now() + PROMOTE_WAIT;
        loop {
            if !self.positions().await?.in_recovery {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NodeError::Statement {
                    node: self.name.clone(),
                    what: "promoting".into(),
                    reason: format!("not promoted within {} s", PROMOTE_WAIT.as_secs()),
                });
            }
            tokio::time::sleep(PROMOTE_POLL).await;
        }
    }

    /// `CHECKPOINT` (before a switchover pauses the proxies, so that the old primary's
    /// shutdown checkpoint, written while every client waits, has little left to flush).
    pub async fn checkpoint(&self) -> Result<(), NodeError> {
        self.run_within(CHECKPOINT_WAIT, "checkpoint", "CHECKPOINT").await.map(|_| ())
    }

    /// Creates physical slots the followers of this (new) primary stream from.
    pub async fn ensure_slots(&self, slots: &[String]) -> Result<(), NodeError> {
        for slot in slots {
            let lit = quote_literal(slot);
            let sql = format!(
                "SELECT pg_create_physical_replication_slot({lit}, true) \
                 WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = {lit})"
            );
            self.run("creating a replication slot", &sql).await?;
        }
        Ok(())
    }

    /// Drops physical slots no one streams from (a switchover made them on its target for
    /// the standbys it pointed there, then aborted).
    pub async fn drop_idle_slots(&self, slots: &[String]) -> Result<(), NodeError> {
        for slot in slots {
            let sql = format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = {} AND NOT active",
                quote_literal(slot)
            );
            self.run("dropping a replication slot", &sql).await?;
        }
        Ok(())
    }

    /// Sets `synchronous_standby_names` (and lifts a fence's read-only default, which a
    /// promoted node never had but a rejoined one might).
    pub async fn set_quorum(&self, value: &str) -> Result<(), NodeError> {
        let set = format!("ALTER SYSTEM SET synchronous_standby_names = {}", quote_literal(value));
        self.run_each(
            "setting the commit quorum",
            &[&set, "ALTER SYSTEM RESET default_transaction_read_only", "SELECT pg_reload_conf()"],
        )
        .await
    }

    /// Whether this primary streams WAL to the standby called `name` now.
    pub async fn streams_to(&self, name: &str) -> Result<bool, NodeError> {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = {} AND state = 'streaming'",
            quote_literal(name)
        );
        let row = self.row("reading pg_stat_replication", &sql).await?;
        Ok(row.first().cloned().flatten().is_some_and(|n| n != "0"))
    }

    /// The standby's `primary_conninfo`.
    pub async fn primary_conninfo(&self) -> Result<String, NodeError> {
        let row = self.row("reading primary_conninfo", "SHOW primary_conninfo").await?;
        Ok(row.first().cloned().flatten().unwrap_or_default())
    }

    /// Points the standby at a new primary (it follows the new timeline: its
    /// `recovery_target_timeline` is `latest`).
    pub async fn follow(&self, conninfo: &str, slot: &str) -> Result<(), NodeError> {
        let conninfo = format!("ALTER SYSTEM SET primary_conninfo = {}", quote_literal(conninfo));
        let slot = format!("ALTER SYSTEM SET primary_slot_name = {}", quote_literal(slot));
        self.run_each("re-pointing the standby", &[&conninfo, &slot, "SELECT pg_reload_conf()"]).await
    }
}

/// An SQL string literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A libpq `key=value` value, quoted.
fn conninfo_value(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The `primary_conninfo` a standby named `name` uses to stream from `primary`.
pub fn conninfo_for(primary: &NodeAddr, login: &ProbeLogin, name: &str) -> String {
    let mut s = format!(
        "host={} port={} user={} application_name={}",
        conninfo_value(&primary.host),
        primary.port,
        conninfo_value(&login.user),
        conninfo_value(name)
    );
    if let Some(p) = &login.password {
        s.push_str(&format!(" password={}", conninfo_value(p)));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_quotes_values() {
        let login = ProbeLogin { user: "rep'l".into(), password: None, database: "postgres".into() };
        let addr: NodeAddr = "127.0.0.1:5433".parse().unwrap();
        assert_eq!(
            conninfo_for(&addr, &login, "s1"),
            "host='127.0.0.1' port=5433 user='rep\\'l' application_name='s1'"
        );
        assert_eq!(quote_literal("a'b"), "'a''b'");
    }
}
