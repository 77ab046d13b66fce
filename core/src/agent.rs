//! What the node agent (`tandem agent`) and its callers say to each other.
//!
//! Place in the flow: witness leader → **agent HTTP API** → pg_ctl / signals on the node's
//! host. The agent runs beside one PostgreSQL server and can report on it, stop it cleanly
//! and start it (as it is, or as a standby of a named primary); a planned switchover uses it
//! to stop the old primary with a clean shutdown (which ships its final WAL, the shutdown
//! checkpoint included, to the standbys) and to restart it as a standby of the new one.
//! These are the JSON bodies of that API, shared by the agent (replicator crate) and its
//! client (witness crate); no I/O here.
//!
//! Endpoints: `GET /v1/node` → [`NodeReport`]; `POST /v1/stop` (body `{}` or empty) →
//! [`StopReply`]; `POST /v1/start` with a [`StartRequest`] → [`StartReply`]. Errors answer
//! 4xx/5xx with an [`AgentErrorBody`].

use crate::{Lsn, NodeId};

/// `GET /v1/node`: the server as its own host sees it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeReport {
    /// The node the agent serves (its name in the cluster).
    pub node: NodeId,
    /// Its data directory.
    pub data_dir: String,
    /// A live postmaster owns the data directory (per `postmaster.pid`).
    pub running: bool,
    /// `standby.signal` exists: the server starts (or runs) as a standby.
    pub standby_signal: bool,
    /// `pg_controldata`; none when it cannot be read (no data directory there).
    pub control: Option<ControlReport>,
}

/// What `pg_controldata` says.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ControlReport {
    /// `Database cluster state`: `shut down`, `shut down in recovery`, `in production`,
    /// `in archive recovery`, ...
    pub state: String,
    /// `Latest checkpoint location`: after a clean shutdown, the shutdown checkpoint (the
    /// last record the server wrote).
    pub checkpoint: Lsn,
    /// `Latest checkpoint's TimeLineID`.
    pub checkpoint_tli: u32,
    /// `Latest checkpoint's REDO location`.
    pub redo: Option<Lsn>,
}

impl ControlReport {
    /// The server was shut down cleanly (as a primary or as a standby): nothing to recover.
    pub fn is_clean_shutdown(&self) -> bool {
        matches!(self.state.as_str(), "shut down" | "shut down in recovery")
    }
}

/// `POST /v1/stop`'s answer (after a clean shutdown only; a crash answers 409).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StopReply {
    /// This request stopped the server (false: it was not running).
    pub stopped_now: bool,
    /// The control data after the stop.
    pub control: ControlReport,
}

/// `POST /v1/start`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// Start as a standby of this primary; none starts the server as it is configured.
    #[serde(default)]
    pub standby: Option<StandbyStart>,
}

/// How the server follows its new primary.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandbyStart {
    /// `primary_conninfo` (libpq), with `application_name` = the node's name.
    pub primary_conninfo: String,
    /// `primary_slot_name` on the new primary (`tandem_standby_<node>`).
    pub slot: String,
    /// `restore_command`; none keeps the configured one, if any.
    #[serde(default)]
    pub restore_command: Option<String>,
}

/// `POST /v1/start`'s answer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StartReply {
    /// This request started the server (false: it was running already).
    pub started_now: bool,
    /// It runs as a standby (`standby.signal` present).
    pub in_recovery: bool,
}

/// The body of every error answer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentErrorBody {
    /// What went wrong, for a person.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_strict_and_lsns_are_text() {
        let req: StartRequest = serde_json::from_str(
            r#"{"standby": {"primary_conninfo": "host=h application_name=pg1", "slot": "tandem_standby_pg1"}}"#,
        )
        .unwrap();
        let s = req.standby.unwrap();
        assert_eq!((s.slot.as_str(), s.restore_command), ("tandem_standby_pg1", None));
        assert_eq!(serde_json::from_str::<StartRequest>("{}").unwrap(), StartRequest::default());
        assert!(serde_json::from_str::<StartRequest>(r#"{"standbye": null}"#).is_err());
        assert!(serde_json::from_str::<StartRequest>(r#"{"standby": {"slot": "x"}}"#).is_err());

        let c = ControlReport {
            state: "shut down".into(),
            checkpoint: "0/3000028".parse().unwrap(),
            checkpoint_tli: 1,
            redo: Some("0/3000028".parse().unwrap()),
        };
        let json = serde_json::to_value(StopReply { stopped_now: true, control: c.clone() }).unwrap();
        assert_eq!(json["control"]["checkpoint"], "0/3000028");
        assert!(c.is_clean_shutdown());
        assert!(!ControlReport { state: "in production".into(), ..c }.is_clean_shutdown());
    }
}
