//! `tandem replicator` in physical mode: the durable WAL relay, start to clean stop.
//!
//! Order matters at both ends. Start: check the primary and the system it is, make the
//! relay's slot, start the receiver, and only once the primary sees it streaming put it in
//! the sync quorum (so the primary never waits on a relay that is not there yet). Stop:
//! take the relay out of the quorum first (see [`super::quorum`]), then stop the receiver,
//! so no commit waits on it in between.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::receiver::{self, ReceiverSpec, SharedReceiverState};
use super::status::{self, Board};
use super::{follow, identity, quorum, RelayError};
use crate::config::{Mode, ReplicatorConfig};
use crate::source::primary;

/// How long the relay waits for the primary to list it as streaming before it joins the
/// quorum anyway (the standbys may still meet it).
const JOIN_WAIT: Duration = Duration::from_secs(15);

/// Runs the relay until `shutdown`.
pub async fn run(cfg: Arc<ReplicatorConfig>, shutdown: CancellationToken) -> Result<(), RelayError> {
    cfg.validate()?;
    let configured = cfg.primary_config()?;
    // With a witness group, the group names the primary (it may have failed over while the
    // relay was down): never stream from an old one. Meanwhile a failover may need this
    // relay's WAL: the fence endpoint answers from the start.
    let early = early_fence(&cfg).await?;
    let target = initial_target(&cfg, &shutdown).await;
    if let Some((stop, server)) = early {
        stop.cancel();
        let _ = server.await;
    }
    let Some(target) = target else { return Ok(()) };
    let primary = follow::retarget(&configured, target.primary.as_ref());
    let admin = connect(&primary, "tandem_relay_admin").await?;
    let seg_size = check_primary(&admin).await?;
    ensure_slot(&admin, &cfg.relay_name).await?;

    let wal_dir = cfg.data_dir.join("wal");
    std::fs::create_dir_all(&wal_dir).map_err(RelayError::io(format!("create {}", wal_dir.display())))?;
    // pg_receivewal runs as the server user when we are root; it must own the directory, and
    // standbys' restore_command (run as that user too) must reach it.
    tandem_localpg::chown_for_server(&cfg.data_dir).map_err(RelayError::LocalPg)?;
    tandem_localpg::chown_for_server(&wal_dir).map_err(RelayError::LocalPg)?;
    let ident = identity::identify(&primary, &cfg.relay_name).await?;
    identity::check_and_record(&cfg.data_dir, &wal_dir, seg_size, ident.system_id)?;
    tracing::info!(system_id = ident.system_id, timeline = ident.timeline, position = %ident.position,
        wal_dir = %wal_dir.display(), "WAL relay starting");

    let board = Board::new(cfg.clone(), wal_dir.clone(), seg_size, ident.system_id);
    let stop = shutdown.child_token();
    let source = follow::Source::new(target);
    let receiver_state = SharedReceiverState::default();
    board.set_receiver(receiver_state.clone());
    if let Some(addr) = cfg.status_listen {
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|source| RelayError::Status { addr, source })?;
        let fence = follow::FenceState {
            source: source.clone(),
            receiver: receiver_state.clone(),
            slot: cfg.relay_name.clone(),
            wal_dir: wal_dir.clone(),
            seg_size,
            token: cfg.witness_token.clone(),
        };
        tokio::spawn(status::serve(listener, board.clone(), follow::router(fence), stop.clone()));
    }

    let spec =
        ReceiverSpec { wal_dir: wal_dir.clone(), dsn: cfg.primary.clone(), slot: cfg.relay_name.clone(), seg_size };
    let receiver_stop = CancellationToken::new();
    let mut receiver = {
        let (cfg, configured, wal_dir) = (cfg.clone(), configured.clone(), wal_dir.clone());
        tokio::spawn(receiver::supervise(spec, receiver_state, receiver_stop.clone(), source.subscribe(), move |t| {
            let (cfg, wal_dir) = (cfg.clone(), wal_dir.clone());
            let primary = follow::retarget(&configured, t.primary.as_ref());
            async move {
                let ident = identity::identify(&primary, &cfg.relay_name).await?;
                identity::check_and_record(&cfg.data_dir, &wal_dir, seg_size, ident.system_id)?;
                // A new primary after a failover has the slot from the failover; make sure.
                let admin = connect(&primary, "tandem_relay_admin").await?;
                ensure_slot(&admin, &cfg.relay_name).await
            }
        }))
    };
    let poller = tokio::spawn(status::poll(board.clone(), configured.clone(), source.clone(), stop.clone()));
    if !cfg.witnesses.is_empty() {
        let (witnesses, token) = (cfg.witnesses.clone(), cfg.witness_token.clone());
        let me = super::register::Identity {
            slot: cfg.relay_name.clone(),
            quorum: (cfg.mode == Mode::Sync).then(|| (cfg.sync_quorum, quorum_members(&cfg))),
        };
        tokio::spawn(super::register::run(board.clone(), witnesses.clone(), token, me, stop.clone()));
        tokio::spawn(follow::watch_group(source.clone(), witnesses, stop.clone()));
    }

    let members = quorum_members(&cfg);
    let joined = tokio::select! {
        r = join_quorum(&admin, &cfg, &members) => r,
        r = &mut receiver => return receiver_ended(r),
        _ = stop.cancelled() => Ok(()),
    };
    if let Err(e) = joined {
        tracing::error!(error = %e, "could not set the primary's synchronous_standby_names");
    }
    drop(admin);

    let result = tokio::select! {
        r = &mut receiver => receiver_ended(r),
        _ = stop.cancelled() => Ok(()),
    };
    if cfg.mode == Mode::Sync {
        let now = follow::retarget(&configured, source.current().primary.as_ref());
        if let Err(e) = leave_quorum(&now, &cfg, &members).await {
            tracing::error!(error = %e, "could not take the relay out of synchronous_standby_names");
        }
    }
    stop.cancel();
    receiver_stop.cancel();
    if !receiver.is_finished() {
        let _ = receiver.await;
    }
    let _ = poller.await;
    tracing::info!("WAL relay stopped");
    result
}

/// With a witness group and a status address: serves `/fence` (only) until the relay knows
/// its primary, so a failover that began while the relay was down can still consult its WAL.
/// The segment size comes from the WAL already there (none yet: nothing to consult).
async fn early_fence(
    cfg: &ReplicatorConfig,
) -> Result<Option<(CancellationToken, tokio::task::JoinHandle<()>)>, RelayError> {
    let Some(addr) = cfg.status_listen.filter(|_| !cfg.witnesses.is_empty()) else { return Ok(None) };
    let wal_dir = cfg.data_dir.join("wal");
    let seg_size = super::segments::size_in(&wal_dir).unwrap_or(16 * 1024 * 1024);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| RelayError::Status { addr, source })?;
    let fence = follow::FenceState {
        source: follow::Source::new(follow::Target { fenced: true, ..follow::Target::default() }),
        receiver: SharedReceiverState::default(),
        slot: cfg.relay_name.clone(),
        wal_dir,
        seg_size,
        token: cfg.witness_token.clone(),
    };
    let stop = CancellationToken::new();
    let server = tokio::spawn({
        let stop = stop.clone();
        async move {
            let _ = axum::serve(listener, follow::router(fence)).with_graceful_shutdown(stop.cancelled_owned()).await;
        }
    });
    Ok(Some((stop, server)))
}

/// Where to stream first: the configured primary, or with a witness group the group's
/// (waiting while a failover is in progress). `None`: shut down while waiting.
async fn initial_target(cfg: &ReplicatorConfig, shutdown: &CancellationToken) -> Option<follow::Target> {
    if cfg.witnesses.is_empty() {
        return Some(follow::Target::default());
    }
    let mut said = false;
    loop {
        match follow::ask(&cfg.witnesses).await {
            Some(t) if !t.fenced => return Some(t),
            other if !said => {
                tracing::warn!(fenced = other.is_some(), "waiting for the witness group to name the primary");
                said = true;
            }
            _ => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

fn receiver_ended(r: Result<Result<(), RelayError>, tokio::task::JoinError>) -> Result<(), RelayError> {
    match r {
        Ok(r) => r,
        Err(e) => Err(RelayError::Protocol(format!("the receiver task failed: {e}"))),
    }
}

/// The names in `synchronous_standby_names`: every standby's (its `cluster_name`, which its
/// WAL receiver uses as `application_name`), then the relay's.
pub fn quorum_members(cfg: &ReplicatorConfig) -> Vec<String> {
    let mut names: Vec<String> = cfg.replicas.iter().map(|r| r.name.as_str().to_owned()).collect();
    names.push(cfg.relay_name.clone());
    names
}

/// An SQL session on a server, with TLS per the DSN and a connect timeout.
pub(crate) async fn connect(config: &tokio_postgres::Config, application_name: &str) -> Result<Client, RelayError> {
    let mut cfg = config.clone();
    cfg.application_name(application_name);
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(Duration::from_secs(5));
    }
    let tls = crate::source::conn::tls_config().map_err(|e| RelayError::Protocol(e.to_string()))?;
    let what = format!("connecting to {}", hosts(config));
    let (client, _conn) = tandem_pgtls::connect(&cfg, Some(&tls)).await.map_err(RelayError::sql(what))?;
    Ok(client)
}

fn hosts(config: &tokio_postgres::Config) -> String {
    let port = config.get_ports().first().copied().unwrap_or(5432);
    match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => format!("{h}:{port}"),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => format!("{}:{port}", p.display()),
        None => format!("localhost:{port}"),
    }
}

/// Checks that the primary can feed a physical relay and returns its WAL segment size.
async fn check_primary(admin: &Client) -> Result<u64, RelayError> {
    let row = admin
        .query_one(
            "SELECT pg_is_in_recovery(), current_setting('wal_level'), \
             (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'), \
             (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)",
            &[],
        )
        .await
        .map_err(RelayError::sql("checking the primary"))?;
    let (in_recovery, wal_level, seg_size, may_replicate): (bool, String, i64, Option<bool>) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if in_recovery {
        return Err(RelayError::NotReady("the server is a standby (in recovery), not a primary".into()));
    }
    if wal_level == "minimal" {
        return Err(RelayError::NotReady("wal_level is minimal: set wal_level = replica and restart".into()));
    }
    if may_replicate != Some(true) {
        return Err(RelayError::NotReady("the DSN's role needs the REPLICATION attribute (or superuser)".into()));
    }
    u64::try_from(seg_size).map_err(|_| RelayError::Protocol(format!("wal_segment_size {seg_size}")))
}

/// Creates a physical slot (the relay's or a standby's) if it does not exist, reserving WAL
/// from now on.
pub(crate) async fn ensure_slot(admin: &Client, slot: &str) -> Result<(), RelayError> {
    let created = admin
        .execute(
            "SELECT pg_create_physical_replication_slot($1, true) \
             WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&slot],
        )
        .await
        .map_err(RelayError::sql(format!("creating slot {slot:?} on the primary")))?;
    if created > 0 {
        tracing::info!(slot, "created a physical replication slot on the primary");
    }
    Ok(())
}

/// Sync mode: waits (bounded) until the primary lists the relay as streaming, then sets
/// `ANY k (members)`. Async mode: clears a value this cluster wrote.
async fn join_quorum(admin: &Client, cfg: &ReplicatorConfig, members: &[String]) -> Result<(), RelayError> {
    if cfg.mode == Mode::Async {
        let current = show_sync(admin).await?;
        if quorum::mentions(&current, &cfg.relay_name) {
            set_sync(admin, "").await?;
        }
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + JOIN_WAIT;
    while tokio::time::Instant::now() < deadline {
        if streaming_names(admin).await?.contains(&cfg.relay_name) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let value = quorum::any_value(cfg.sync_quorum, &without_primary(admin, members).await?);
    set_sync(admin, &value).await?;
    tracing::info!(synchronous_standby_names = %value, "the relay is in the primary's commit quorum");
    Ok(())
}

async fn leave_quorum(
    primary: &tokio_postgres::Config,
    cfg: &ReplicatorConfig,
    members: &[String],
) -> Result<(), RelayError> {
    let admin = connect(primary, "tandem_relay_admin").await?;
    let current = show_sync(&admin).await?;
    if !quorum::mentions(&current, &cfg.relay_name) {
        return Ok(());
    }
    let streaming = streaming_names(&admin).await?;
    let members = without_primary(&admin, members).await?;
    let (value, warning) = quorum::value_without(&cfg.relay_name, cfg.sync_quorum, &members, &streaming);
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
    set_sync(&admin, &value).await?;
    tracing::info!(synchronous_standby_names = %value, "the relay left the primary's commit quorum");
    Ok(())
}

/// `members` without the primary itself: after a failover the primary is one of the
/// configured standbys, and a server never waits for itself.
async fn without_primary(admin: &Client, members: &[String]) -> Result<Vec<String>, RelayError> {
    let itself: String = admin
        .query_one("SELECT current_setting('cluster_name')", &[])
        .await
        .map_err(RelayError::sql("reading the primary's cluster_name"))?
        .get(0);
    Ok(members.iter().filter(|m| **m != itself).cloned().collect())
}

/// `application_name`s the primary is streaming to right now.
pub(crate) async fn streaming_names(admin: &Client) -> Result<Vec<String>, RelayError> {
    let rows = admin
        .query("SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'", &[])
        .await
        .map_err(RelayError::sql("reading pg_stat_replication"))?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}

/// The primary's `synchronous_standby_names` (shared with the logical mode).
async fn show_sync(admin: &Client) -> Result<String, RelayError> {
    primary::show_sync_standbys(admin).await.map_err(RelayError::Source)
}

/// `ALTER SYSTEM SET synchronous_standby_names` + reload, waiting until sessions see it
/// (shared with the logical mode).
async fn set_sync(admin: &Client, value: &str) -> Result<(), RelayError> {
    primary::set_sync_standbys(admin, value).await.map(drop).map_err(RelayError::Source)
}
