//! Physical-mode status: where every quorum member is, and the relay's WAL served over HTTP.
//!
//! Place in the data flow: beside the relay. [`poll`] asks the primary once a second
//! (`pg_stat_replication`, the standbys' slots, its current position and timeline) and each
//! standby directly (received and replayed position, timeline), then trims relay segments
//! every standby's slot has passed. [`serve`] answers `GET /status` (JSON), `GET /metrics`
//! (Prometheus text) and `GET /wal/NAME` (a segment or history file, for `tandem wal-fetch`
//! on another host; header `x-tandem-wal-partial: 1` when it is the segment still being
//! written).
//!
//! A status that cannot tell says so: a member the primary does not list as streaming is
//! `disconnected`, a standby that does not answer is `unreachable`, and their lag is the
//! distance and the time since they last had everything, never 0.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tandem_core::Lsn;
use tokio_util::sync::CancellationToken;

use super::follow::Source;
use super::receiver::{ReceiverState, SharedReceiverState};
use super::segments;
use crate::config::ReplicatorConfig;

/// How often positions are polled.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Bound on each poll query, so a frozen server cannot stall the status.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// Live physical-mode status, shared by the poller and the HTTP endpoint.
pub struct Board {
    cfg: Arc<ReplicatorConfig>,
    wal_dir: PathBuf,
    seg_size: u64,
    system_id: u64,
    receiver: Mutex<Option<SharedReceiverState>>,
    report: Mutex<StatusReport>,
    /// Per member: when it last had everything the primary had (monotonic).
    caught_up_at: Mutex<BTreeMap<String, Instant>>,
    /// Per standby: the last replay position it reported, for when it stops answering.
    last_replayed: Mutex<BTreeMap<String, Lsn>>,
}

/// What `GET /status` returns.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StatusReport {
    /// Always `physical`.
    pub replication: &'static str,
    /// `sync` or `async`.
    pub mode: String,
    /// The primary's `synchronous_standby_names`, or null when it could not be read.
    pub synchronous_standby_names: Option<String>,
    /// The PostgreSQL system the relay holds WAL of.
    pub system_identifier: String,
    /// The primary's current write position and timeline (null: unreachable).
    pub primary: Option<PrimaryPosition>,
    /// Why the primary could not be read, if it could not.
    pub primary_error: Option<String>,
    /// The relay itself.
    pub relay: MemberStatus,
    /// Its receiving process.
    pub receiver: ReceiverState,
    /// The relay's WAL directory.
    pub wal: WalDirStatus,
    /// Every configured standby, by name.
    pub standbys: Vec<MemberStatus>,
    /// When this was polled (seconds since the Unix epoch).
    pub polled_at: f64,
}

/// The primary's position.
#[derive(Clone, Debug, Serialize)]
pub struct PrimaryPosition {
    /// `pg_current_wal_lsn()`.
    pub lsn: Lsn,
    /// The timeline it writes.
    pub timeline: u32,
}

/// One quorum member (a standby or the relay).
#[derive(Clone, Debug, Default, Serialize)]
pub struct MemberStatus {
    /// Its name (`application_name`).
    pub name: String,
    /// `streaming`, `catchup`, `startup`, `disconnected`, `unreachable`, or `unknown` when the
    /// primary could not be asked.
    pub state: String,
    /// `pg_stat_replication.sync_state` (`quorum`, `sync`, `async`, `potential`), if listed.
    pub sync_state: Option<String>,
    /// Position received and written (the primary's view, or the standby's own).
    pub received: Option<Lsn>,
    /// Position flushed to its disk.
    pub flushed: Option<Lsn>,
    /// Position replayed (standbys; the relay replays nothing).
    pub replayed: Option<Lsn>,
    /// The timeline it is on (standbys: their WAL receiver's).
    pub timeline: Option<u32>,
    /// Bytes of the primary's WAL it lacks (replayed for standbys, flushed for the relay).
    pub lag_bytes: Option<u64>,
    /// Seconds it has been behind (PostgreSQL's own lag when streaming, else the time since
    /// it last had everything); null when unknown.
    pub lag_seconds: Option<f64>,
    /// Where its slot on the primary starts (WAL the primary keeps for it).
    pub slot_restart: Option<Lsn>,
    /// Why it could not be read.
    pub error: Option<String>,
}

/// The relay's WAL directory.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WalDirStatus {
    /// Oldest segment kept.
    pub oldest: Option<String>,
    /// Newest segment (the one being written ends in `.partial`).
    pub newest: Option<String>,
    /// Number of segment files.
    pub segments: usize,
    /// Segments removed since start.
    pub trimmed: u64,
    /// Why trimming is held back, if it is.
    pub trim_held_by: Option<String>,
}

impl Board {
    /// A board for the relay described by `cfg`.
    pub fn new(cfg: Arc<ReplicatorConfig>, wal_dir: PathBuf, seg_size: u64, system_id: u64) -> Arc<Board> {
        let report = StatusReport {
            replication: "physical",
            mode: cfg.mode.as_str().to_owned(),
            system_identifier: system_id.to_string(),
            ..StatusReport::default()
        };
        Arc::new(Board {
            cfg,
            wal_dir,
            seg_size,
            system_id,
            receiver: Mutex::new(None),
            report: Mutex::new(report),
            caught_up_at: Mutex::new(BTreeMap::new()),
            last_replayed: Mutex::new(BTreeMap::new()),
        })
    }

    /// Connects the receiver's state to the report.
    pub fn set_receiver(&self, state: SharedReceiverState) {
        *lock(&self.receiver) = Some(state);
    }

    /// The latest report.
    pub fn report(&self) -> StatusReport {
        let mut r = lock(&self.report).clone();
        if let Some(state) = lock(&self.receiver).as_ref() {
            r.receiver = lock(state).clone();
        }
        r
    }

    /// Records the epoch the group says the relay streams for, beside its WAL
    /// (`<data_dir>/epoch`), so a restarted relay and the failover steps know which epoch its
    /// WAL belongs to. Written only when it changes.
    pub fn record_epoch(&self, epoch: u64) {
        let path = self.cfg.data_dir.join("epoch");
        let current = std::fs::read_to_string(&path).ok().and_then(|t| t.trim().parse::<u64>().ok());
        if current == Some(epoch) || epoch == 0 {
            return;
        }
        let tmp = self.cfg.data_dir.join("epoch.tmp");
        let written = std::fs::write(&tmp, format!("{epoch}\n")).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(error = %e, "recording the epoch in the relay's data directory");
        }
    }

    /// Where the status endpoint listens (empty when it does not).
    pub fn status_addr(&self) -> String {
        self.cfg.status_listen.map(|a| a.to_string()).unwrap_or_default()
    }

    /// The relay's WAL directory.
    pub fn wal_dir(&self) -> &std::path::Path {
        &self.wal_dir
    }

    /// Lag in seconds of `name` now: PostgreSQL's measure if it has one, 0 when the member
    /// has everything, else the time since it last had everything.
    fn lag_seconds(&self, name: &str, lag_bytes: Option<u64>, pg_lag: Option<f64>, now: Instant) -> Option<f64> {
        let mut at = lock(&self.caught_up_at);
        match lag_bytes {
            Some(0) => {
                at.insert(name.to_owned(), now);
                Some(0.0)
            }
            Some(_) => pg_lag.or_else(|| at.get(name).map(|t| now.duration_since(*t).as_secs_f64())),
            None => at.get(name).map(|t| now.duration_since(*t).as_secs_f64()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Polls positions and trims the relay's WAL once a second until `stop`.
/// The primary polled is the one `source` names now (the group's, after a failover).
pub async fn poll(board: Arc<Board>, configured: tokio_postgres::Config, source: Arc<Source>, stop: CancellationToken) {
    let mut trimmed = 0u64;
    let mut admin = None;
    let mut polled = None;
    loop {
        let target = source.current().primary;
        if polled.as_ref() != Some(&target) {
            admin = None;
            polled = Some(target.clone());
        }
        let primary = super::follow::retarget(&configured, target.as_ref());
        let report = poll_once(&board, &primary, &mut admin, &mut trimmed).await;
        *lock(&board.report) = report;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }
}

async fn poll_once(
    board: &Board,
    primary: &tokio_postgres::Config,
    admin: &mut Option<tokio_postgres::Client>,
    trimmed: &mut u64,
) -> StatusReport {
    let now = Instant::now();
    let mut report = StatusReport {
        replication: "physical",
        mode: board.cfg.mode.as_str().to_owned(),
        system_identifier: board.system_id.to_string(),
        polled_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        ..StatusReport::default()
    };
    let seen = match super::status_sql::primary_view(admin, primary, QUERY_TIMEOUT).await {
        Ok(view) => Some(view),
        Err(e) => {
            *admin = None;
            report.primary_error = Some(e.to_string());
            None
        }
    };
    if let Some(view) = &seen {
        report.primary = Some(PrimaryPosition { lsn: view.lsn, timeline: view.timeline });
        report.synchronous_standby_names = Some(view.sync_names.clone());
    }
    let primary_lsn = seen.as_ref().map(|v| v.lsn);

    let relay_name = board.cfg.relay_name.clone();
    let mut relay = super::status_sql::member_from_primary(&relay_name, &relay_name, seen.as_ref());
    relay.lag_bytes = match (primary_lsn, relay.flushed) {
        (Some(p), Some(f)) => Some(p.bytes_since(f)),
        _ => None,
    };
    // The relay replays nothing: PostgreSQL's flush lag is its measure.
    let pg_lag = seen.as_ref().and_then(|v| v.flush_lag.get(&relay_name).copied());
    relay.lag_seconds = board.lag_seconds(&relay_name, relay.lag_bytes, pg_lag, now);
    report.relay = relay;

    for r in &board.cfg.replicas {
        let name = r.name.as_str();
        let slot = crate::config::standby_slot_name(&r.name);
        let mut m = super::status_sql::member_from_primary(name, &slot, seen.as_ref());
        match super::status_sql::standby_view(&r.dsn, QUERY_TIMEOUT).await {
            Ok(own) => {
                m.received = m.received.or(own.received);
                m.replayed = own.replayed.or(m.replayed);
                m.timeline = own.timeline;
                if !own.in_recovery {
                    m.error = Some("not in recovery: this server is no standby".into());
                }
            }
            Err(e) => {
                m.error = Some(e.to_string());
                if m.state != "streaming" {
                    m.state = "unreachable".into();
                }
            }
        }
        // A standby that does not answer is at most as far as it last said, or as its slot.
        let known = match m.replayed {
            Some(r) => {
                lock(&board.last_replayed).insert(name.to_owned(), r);
                Some(r)
            }
            None => lock(&board.last_replayed).get(name).copied().or(m.slot_restart),
        };
        m.lag_bytes = match (primary_lsn, known) {
            (Some(p), Some(r)) => Some(p.bytes_since(r)),
            _ => None,
        };
        let pg_lag = seen.as_ref().and_then(|v| v.replay_lag.get(name).copied());
        m.lag_seconds = board.lag_seconds(name, m.lag_bytes, pg_lag, now);
        report.standbys.push(m);
    }

    report.wal = trim_and_describe(board, &report, seen.is_some(), trimmed);
    // The relay is on the timeline of the newest segment it writes.
    report.relay.timeline = report.wal.newest.as_deref().and_then(|n| u32::from_str_radix(n.get(..8)?, 16).ok());
    report
}

/// Trims segments every standby's slot has passed (only when the primary answered) and
/// describes the directory.
fn trim_and_describe(board: &Board, report: &StatusReport, primary_seen: bool, trimmed: &mut u64) -> WalDirStatus {
    let mut wal = WalDirStatus::default();
    let mut needed_from = None::<Lsn>;
    for s in &report.standbys {
        match s.slot_restart {
            Some(lsn) => needed_from = Some(needed_from.map_or(lsn, |n| n.min(lsn))),
            None => {
                wal.trim_held_by = Some(format!("standby {} has no slot position on the primary", s.name));
                break;
            }
        }
    }
    if !primary_seen {
        wal.trim_held_by = Some("the primary did not answer".into());
    }
    if wal.trim_held_by.is_none() {
        // Without standbys, the relay's own flush bounds what anyone could still need.
        let bound = needed_from.or(report.relay.flushed).unwrap_or(Lsn::ZERO);
        match segments::trim(&board.wal_dir, board.seg_size, bound, board.cfg.relay_keep_segments) {
            Ok(removed) => {
                if !removed.is_empty() {
                    tracing::debug!(count = removed.len(), first = %removed[0], "trimmed relay WAL");
                }
                *trimmed += removed.len() as u64;
            }
            Err(e) => tracing::warn!(error = %e, "trimming the relay's WAL"),
        }
    }
    wal.trimmed = *trimmed;
    if let Ok(files) = segments::list(&board.wal_dir, board.seg_size) {
        let label = |f: &segments::SegmentFile| {
            format!("{}{}", f.name.file_name(board.seg_size), if f.partial { segments::PARTIAL } else { "" })
        };
        wal.segments = files.len();
        wal.oldest = files.first().map(label);
        wal.newest = files.last().map(label);
    }
    wal
}

/// The HTTP routes.
pub fn router(board: Arc<Board>) -> Router {
    Router::new()
        .route("/status", get(status_handler))
        .route("/metrics", get(metrics_handler))
        .route("/wal/{name}", get(wal_handler))
        .with_state(board)
}

async fn status_handler(State(board): State<Arc<Board>>) -> Json<StatusReport> {
    Json(board.report())
}

async fn metrics_handler(State(board): State<Arc<Board>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], super::status_sql::metrics_text(&board.report()))
}

async fn wal_handler(State(board): State<Arc<Board>>, UrlPath(name): UrlPath<String>) -> Response {
    let Some(path) = segments::find(board.wal_dir(), &name) else {
        return (StatusCode::NOT_FOUND, "no such WAL file in the relay\n").into_response();
    };
    // wal-fetch compares a partial copy with the standby's own before serving it.
    let partial = if path.to_str().is_some_and(|p| p.ends_with(super::segments::PARTIAL)) { "1" } else { "0" };
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            let partial_header = header::HeaderName::from_static(super::fetch::PARTIAL_HEADER);
            ([(header::CONTENT_TYPE, "application/octet-stream"), (partial_header, partial)], bytes).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("reading {name}: {e}\n")).into_response(),
    }
}

/// Serves [`router`] on `listener` until `stop`.
/// `extra` adds routes of other parts (the failover's fence).
pub async fn serve(listener: tokio::net::TcpListener, board: Arc<Board>, extra: Router, stop: CancellationToken) {
    let routes = router(board).merge(extra);
    let result = axum::serve(listener, routes).with_graceful_shutdown(stop.cancelled_owned()).await;
    if let Err(e) = result {
        tracing::error!(error = %e, "relay status endpoint failed");
    }
}
