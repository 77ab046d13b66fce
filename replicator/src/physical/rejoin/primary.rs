//! The new primary, as the rejoin sees it.
//!
//! Place in the rejoin flow: the other side of every step. Before anything: is it a
//! primary, which system and timeline, its timeline history (for the fork), its last
//! checkpoint (to tell whether the data directory given is its own). Then: the rejoining
//! node's slot on it, the conninfo strings pg_rewind / pg_basebackup / `primary_conninfo`
//! use, and at the end the wait until `pg_stat_replication` lists the node as streaming.

use std::path::Path;
use std::time::Duration;

use tandem_core::{Lsn, NodeId};
use tokio_postgres::Client;

use super::local::Control;
use super::RejoinError;
use crate::config::parse_dsn;
use crate::physical::relay::connect;
use crate::physical::RelayError;

/// The new primary's address, the role to use, and the node that will stream from it.
#[derive(Clone, Debug)]
pub struct Target {
    host: String,
    port: u16,
    user: String,
    node: NodeId,
}

/// A libpq conninfo value, quoted when it needs to be.
fn conninfo_value(v: &str) -> String {
    if !v.is_empty() && !v.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        return v.to_owned();
    }
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl Target {
    /// `host:port` (`[v6]:port` too), the role, and the rejoining node.
    pub fn new(addr: &str, user: &str, node: &NodeId) -> Result<Target, RejoinError> {
        let bad = || RejoinError::Refused(format!("the new primary's address {addr:?} is not HOST:PORT"));
        let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Target { host: host.to_owned(), port, user: user.to_owned(), node: node.clone() })
    }

    /// For pg_rewind, pg_basebackup and Tandem's own SQL session.
    pub fn source_conninfo(&self) -> String {
        format!(
            "host={} port={} user={} dbname=postgres",
            conninfo_value(&self.host),
            self.port,
            conninfo_value(&self.user)
        )
    }

    /// The standby's `primary_conninfo`: its WAL receiver names itself after the node.
    pub fn primary_conninfo(&self) -> String {
        format!(
            "host={} port={} user={} application_name={}",
            conninfo_value(&self.host),
            self.port,
            conninfo_value(&self.user),
            self.node
        )
    }

    /// An SQL session on the new primary.
    pub async fn connect(&self) -> Result<Client, RejoinError> {
        let config = parse_dsn("the new primary", &self.source_conninfo()).map_err(RelayError::from)?;
        Ok(connect(&config, "tandem_rejoin").await?)
    }

    /// Waits until the new primary lists the node as streaming (bounded by `timeout`).
    pub async fn wait_streaming(&self, node: &NodeId, timeout: Duration) -> Result<(), RejoinError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let last = match self.replication_state(node).await {
                Ok(Some(state)) if state == "streaming" => return Ok(()),
                Ok(Some(state)) => format!("state {state}"),
                Ok(None) => "not listed in pg_stat_replication".into(),
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(RejoinError::NotStreaming(format!(
                    "{node} was started as a standby but is not streaming from the new primary after {timeout:?} \
                     ({last}); see its server log"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn replication_state(&self, node: &NodeId) -> Result<Option<String>, RejoinError> {
        let client = self.connect().await?;
        let row = client
            .query_opt(
                "SELECT state FROM pg_stat_replication WHERE application_name = $1 ORDER BY state = 'streaming' DESC LIMIT 1",
                &[&node.as_str()],
            )
            .await
            .map_err(RelayError::sql("reading pg_stat_replication on the new primary"))?;
        // A walsender's state is never null, but a panic on one would be worse than "unknown".
        Ok(row.map(|r| r.get::<_, Option<String>>(0).unwrap_or_else(|| "unknown".into())))
    }
}

/// What the rejoin needs to know of the new primary.
#[derive(Clone, Debug)]
pub struct Facts {
    /// Its system identifier.
    pub system_id: u64,
    /// The timeline it writes on.
    pub timeline: u32,
    /// That timeline's history file (empty on timeline 1).
    pub history: String,
    /// Its last checkpoint, after the one this asked for.
    pub checkpoint: Lsn,
}

/// Checks it is a primary, asks for a checkpoint (pg_rewind in PostgreSQL 15 reads the
/// source's timeline from its control file, which a promotion updates only at its first
/// checkpoint), and reads its [`Facts`].
pub async fn facts(admin: &Client) -> Result<Facts, RejoinError> {
    let sql = |what: &'static str| RelayError::sql(format!("{what} on the new primary"));
    let in_recovery: bool =
        admin.query_one("SELECT pg_is_in_recovery()", &[]).await.map_err(sql("asking pg_is_in_recovery()"))?.get(0);
    if in_recovery {
        return Err(RejoinError::Refused("the new primary is in recovery (a standby, not a primary)".into()));
    }
    admin.batch_execute("CHECKPOINT").await.map_err(sql("CHECKPOINT"))?;
    let row = admin
        .query_one(
            "SELECT (SELECT system_identifier FROM pg_control_system())::text, \
                    substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8), \
                    (SELECT checkpoint_lsn FROM pg_control_checkpoint())::text",
            &[],
        )
        .await
        .map_err(sql("reading the control data"))?;
    let (system, tli, checkpoint): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    let bad = |what: &str, v: &str| RejoinError::Parse(format!("the new primary's {what} {v:?}"));
    let system_id = system.parse().map_err(|_| bad("system identifier", &system))?;
    let timeline = u32::from_str_radix(&tli, 16).map_err(|_| bad("timeline", &tli))?;
    let checkpoint = checkpoint.parse().map_err(|_| bad("checkpoint", &checkpoint))?;
    let history = if timeline > 1 {
        let file = format!("pg_wal/{timeline:08X}.history");
        let row = admin.query_one("SELECT pg_read_binary_file($1)", &[&file]).await.map_err(|e| {
            RejoinError::Refused(format!(
                "cannot read the new primary's timeline history {file} ({e}): connect as a superuser or a role \
                 allowed to run pg_read_binary_file (pg_rewind needs it too)"
            ))
        })?;
        let bytes: Vec<u8> = row.get(0);
        String::from_utf8_lossy(&bytes).into_owned()
    } else {
        String::new()
    };
    Ok(Facts { system_id, timeline, history, checkpoint })
}

/// Refuses a data directory of another system, or the new primary's own (it reports the
/// checkpoint the new primary just made, read before or after the directory's control file).
pub fn check_node_dir(dir: &Path, control: &Control, before: &Facts, after: &Facts) -> Result<(), RejoinError> {
    if control.system_id != after.system_id {
        return Err(RejoinError::Refused(format!(
            "{} holds PostgreSQL system {}, the new primary is system {}: not the same cluster",
            dir.display(),
            control.system_id,
            after.system_id
        )));
    }
    let own = control.state == "in production"
        && control.checkpoint_tli == after.timeline
        && (control.checkpoint == before.checkpoint || control.checkpoint == after.checkpoint);
    if own {
        return Err(RejoinError::Refused(format!(
            "{} is the new primary's own data directory (its control file shows the checkpoint just made there)",
            dir.display()
        )));
    }
    Ok(())
}

/// Creates the node's physical slot on the new primary if it is missing.
pub async fn ensure_slot(admin: &Client, slot: &str) -> Result<(), RejoinError> {
    Ok(crate::physical::relay::ensure_slot(admin, slot).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeId {
        NodeId::new("pg1").unwrap()
    }

    #[test]
    fn addresses_and_conninfo() {
        let t = Target::new("127.0.0.1:5433", "postgres", &node()).unwrap();
        assert_eq!(t.source_conninfo(), "host=127.0.0.1 port=5433 user=postgres dbname=postgres");
        assert_eq!(t.primary_conninfo(), "host=127.0.0.1 port=5433 user=postgres application_name=pg1");
        let v6 = Target::new("[::1]:5432", "it's me", &node()).unwrap();
        assert_eq!(v6.source_conninfo(), r"host=::1 port=5432 user='it\'s me' dbname=postgres");
        for bad in ["localhost", ":5432", "h:notaport"] {
            assert!(Target::new(bad, "postgres", &node()).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_new_primarys_own_directory_is_refused() {
        let facts = Facts { system_id: 7, timeline: 2, history: String::new(), checkpoint: Lsn(0x3000100) };
        let mut control = Control {
            system_id: 7,
            state: "in production".into(),
            checkpoint: Lsn(0x3000100),
            checkpoint_tli: 2,
            redo: Lsn(0x3000100),
        };
        let dir = Path::new("/data");
        assert!(matches!(check_node_dir(dir, &control, &facts, &facts), Err(RejoinError::Refused(_))));
        // The old primary: its last checkpoint is on its own timeline.
        control.checkpoint_tli = 1;
        control.checkpoint = Lsn(0x3000400);
        check_node_dir(dir, &control, &facts, &facts).unwrap();
        // Another system altogether.
        control.system_id = 8;
        assert!(check_node_dir(dir, &control, &facts, &facts).is_err());
    }
}
