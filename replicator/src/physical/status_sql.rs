//! The queries behind the physical status: the primary's view of its replication, a
//! standby's own view, and the Prometheus text made from them.
//!
//! Place in the data flow: called by [`super::status::poll`]; every query is bounded by a
//! timeout so a frozen server makes its member `unreachable` instead of stalling the poll.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use tandem_core::Lsn;
use tokio_postgres::Client;

use super::relay::connect;
use super::status::{MemberStatus, StatusReport};
use super::RelayError;

/// What the primary says about its replication.
pub(super) struct PrimaryView {
    pub lsn: Lsn,
    pub timeline: u32,
    pub sync_names: String,
    /// `pg_stat_replication` rows by `application_name`.
    pub senders: BTreeMap<String, Sender>,
    /// Physical slots: name → restart position (None: not reserved yet).
    pub slots: BTreeMap<String, Option<Lsn>>,
    /// `replay_lag` in seconds by `application_name`, where PostgreSQL measured one.
    pub replay_lag: BTreeMap<String, f64>,
    /// `flush_lag` likewise (the relay's measure: it replays nothing).
    pub flush_lag: BTreeMap<String, f64>,
}

/// One `pg_stat_replication` row.
pub(super) struct Sender {
    state: String,
    sync_state: String,
    write: Option<Lsn>,
    flush: Option<Lsn>,
    replay: Option<Lsn>,
}

fn parse_lsn(text: Option<String>) -> Option<Lsn> {
    text.and_then(|t| t.parse().ok())
}

async fn bounded<T>(
    what: &str,
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, RelayError>>,
) -> Result<T, RelayError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(RelayError::Protocol(format!("{what}: no answer within {timeout:?}"))),
    }
}

/// Reads the primary's view, reusing (or opening) `admin`.
pub(super) async fn primary_view(
    admin: &mut Option<Client>,
    primary: &tokio_postgres::Config,
    timeout: Duration,
) -> Result<PrimaryView, RelayError> {
    if admin.is_none() {
        *admin = Some(bounded("connecting to the primary", timeout, connect(primary, "tandem_relay_status")).await?);
    }
    let Some(client) = admin.as_ref() else { return Err(RelayError::Protocol("no primary session".into())) };
    bounded("asking the primary", timeout, read_primary(client)).await
}

async fn read_primary(client: &Client) -> Result<PrimaryView, RelayError> {
    let row = client
        .query_one(
            "SELECT pg_current_wal_lsn()::text, \
             ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int, \
             current_setting('synchronous_standby_names'), pg_is_in_recovery()",
            &[],
        )
        .await
        .map_err(RelayError::sql("reading the primary's position"))?;
    if row.get::<_, bool>(3) {
        return Err(RelayError::Protocol("the primary is in recovery (a standby now?)".into()));
    }
    let lsn = parse_lsn(row.get(0)).unwrap_or(Lsn::ZERO);
    let timeline = u32::try_from(row.get::<_, i32>(1)).unwrap_or(0);
    let sync_names: String = row.get(2);
    let rows = client
        .query(
            "SELECT application_name, state, sync_state, write_lsn::text, flush_lsn::text, replay_lsn::text, \
             extract(epoch FROM replay_lag)::float8, extract(epoch FROM flush_lag)::float8 \
             FROM pg_stat_replication",
            &[],
        )
        .await
        .map_err(RelayError::sql("reading pg_stat_replication"))?;
    let mut senders = BTreeMap::new();
    let mut replay_lag = BTreeMap::new();
    let mut flush_lag = BTreeMap::new();
    for r in rows {
        let name: String = r.get(0);
        if let Some(lag) = r.get::<_, Option<f64>>(6) {
            replay_lag.insert(name.clone(), lag);
        }
        if let Some(lag) = r.get::<_, Option<f64>>(7) {
            flush_lag.insert(name.clone(), lag);
        }
        let sender = Sender {
            state: r.get::<_, Option<String>>(1).unwrap_or_default(),
            sync_state: r.get::<_, Option<String>>(2).unwrap_or_default(),
            write: parse_lsn(r.get(3)),
            flush: parse_lsn(r.get(4)),
            replay: parse_lsn(r.get(5)),
        };
        // A member connected twice (a reconnect not yet noticed): keep the streaming one.
        if sender.state == "streaming" || !senders.contains_key(&name) {
            senders.insert(name, sender);
        }
    }
    let rows = client
        .query("SELECT slot_name::text, restart_lsn::text FROM pg_replication_slots WHERE slot_type = 'physical'", &[])
        .await
        .map_err(RelayError::sql("reading pg_replication_slots"))?;
    let slots = rows.into_iter().map(|r| (r.get::<_, String>(0), parse_lsn(r.get(1)))).collect();
    Ok(PrimaryView { lsn, timeline, sync_names, senders, slots, replay_lag, flush_lag })
}

/// A member as the primary sees it (`unknown` when the primary did not answer).
pub(super) fn member_from_primary(name: &str, slot: &str, view: Option<&PrimaryView>) -> MemberStatus {
    let mut m = MemberStatus { name: name.to_owned(), ..MemberStatus::default() };
    let Some(view) = view else {
        m.state = "unknown".into();
        return m;
    };
    m.slot_restart = view.slots.get(slot).copied().flatten();
    match view.senders.get(name) {
        Some(s) => {
            m.state = s.state.clone();
            m.sync_state = Some(s.sync_state.clone());
            m.received = s.write;
            m.flushed = s.flush;
            m.replayed = s.replay;
        }
        None => m.state = "disconnected".into(),
    }
    m
}

/// A standby's own view.
pub(super) struct StandbyView {
    pub in_recovery: bool,
    pub received: Option<Lsn>,
    pub replayed: Option<Lsn>,
    pub timeline: Option<u32>,
}

/// Asks a standby where it is (a fresh session each time: standbys come and go).
pub(super) async fn standby_view(dsn: &str, timeout: Duration) -> Result<StandbyView, RelayError> {
    let config = crate::config::parse_dsn("a standby", dsn)?;
    bounded("asking the standby", timeout, async {
        let client = connect(&config, "tandem_relay_status").await?;
        let row = client
            .query_one(
                "SELECT pg_is_in_recovery(), pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, \
                 (SELECT received_tli FROM pg_stat_wal_receiver)",
                &[],
            )
            .await
            .map_err(RelayError::sql("reading the standby's position"))?;
        Ok(StandbyView {
            in_recovery: row.get(0),
            received: parse_lsn(row.get(1)),
            replayed: parse_lsn(row.get(2)),
            timeline: row.get::<_, Option<i32>>(3).and_then(|t| u32::try_from(t).ok()),
        })
    })
    .await
}

/// Prometheus text: `tandem_relay_*` series.
pub(super) fn metrics_text(r: &StatusReport) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, rows: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP tandem_relay_{name} {help}\n# TYPE tandem_relay_{name} gauge");
        for (labels, v) in rows {
            let _ = writeln!(out, "tandem_relay_{name}{labels} {v}");
        }
    };
    let members = || std::iter::once(&r.relay).chain(r.standbys.iter());
    let label = |m: &MemberStatus| format!("{{member=\"{}\"}}", m.name);
    gauge(
        "member_lag_bytes",
        "WAL bytes a quorum member lacks (absent: unknown).",
        members().filter_map(|m| m.lag_bytes.map(|b| (label(m), b as f64))).collect(),
    );
    gauge(
        "member_lag_seconds",
        "Seconds a quorum member has been behind (absent: unknown).",
        members().filter_map(|m| m.lag_seconds.map(|s| (label(m), s))).collect(),
    );
    gauge(
        "member_streaming",
        "1 when the primary streams to the member.",
        members().map(|m| (label(m), f64::from(u8::from(m.state == "streaming")))).collect(),
    );
    gauge(
        "receiver_running",
        "1 while pg_receivewal runs.",
        vec![(String::new(), f64::from(u8::from(r.receiver.running)))],
    );
    gauge("wal_segments", "Segment files in the relay's WAL directory.", vec![(String::new(), r.wal.segments as f64)]);
    gauge(
        "primary_reachable",
        "1 when the primary answered the last poll.",
        vec![(String::new(), f64::from(u8::from(r.primary.is_some())))],
    );
    out
}
