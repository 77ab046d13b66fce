//! Attaching a server connection to a unit of work, and losing it.
//!
//! `frontend → router → pool`: at the start of each unit the session passes the PAUSE gate,
//! asks the router for a node, and takes a connection from that node's pool (or keeps the
//! one it holds). The connection is then brought in line with the session (prepared
//! statements, settings) before the client's messages go out. When the connection fails,
//! a read nothing has answered yet is replayed on another node; anything else ends the
//! session with the server's reason.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::client_side::{Failure, UnitFailed};
use super::pipeline::Expect;
use super::session::{discard, Attached, End, Session, MAX_REPLAY_BYTES};
use crate::config::PoolMode;
use crate::context::{ClientState, ProxyContext};
use crate::gate::Busy;
use crate::pool::{AcquireError, Checkout, ConnectError, PoolKey, ServerPool};
use crate::protocol::build::{self, sqlstate, Severity};
use crate::protocol::fields::{self, TxStatus};
use crate::router::classify::Route;
use crate::router::Node;
use tandem_core::Role;

/// Drops the prepared statements the proxy manages (made with the protocol's Parse, or
/// SQL `PREPARE`s under Tandem names) and keeps those of the client's own SQL `PREPARE`.
const DEALLOCATE_PROTOCOL_STATEMENTS: &str = "DO $$DECLARE s text; BEGIN \
     FOR s IN SELECT name FROM pg_catalog.pg_prepared_statements \
     WHERE NOT from_sql OR name LIKE 'tandem\\_%' LOOP \
     EXECUTE 'DEALLOCATE ' || pg_catalog.quote_ident(s); END LOOP; END$$";

impl Session {
    /// Makes sure a server connection is attached for a unit with `route`.
    pub(super) async fn begin_unit(&mut self, route: Route) -> Result<(), Failure> {
        if self.busy.is_none() {
            // A new unit: through the PAUSE gate first, pinned sessions too.
            self.busy = Some(self.pass_gate().await);
        }
        if self.stuck_to_active() {
            if let Some(ended) = self.left_behind() {
                return Err(ended);
            }
            // A session pinned to the primary: its writes need the lease too (its reads may
            // go on, as on replicas).
            let on_primary = self.active.as_ref().is_some_and(|a| a.node.role == Role::Primary);
            if on_primary && route == Route::Write && self.tx == TxStatus::Idle && !self.wait_for_lease().await {
                self.ctx.metrics.error("no_write_lease");
                self.busy = None;
                return Err(Failure::Unit(no_lease()));
            }
            if self.pipeline.is_idle() && self.tx == TxStatus::Idle {
                // A pinned session at a unit boundary: its own RESET ALL may have left the
                // connection with the server's startup settings.
                self.sync_connection();
            }
            return Ok(());
        }
        let route = self.unit_route(route);
        let mut last_err = None;
        let mut waited = false;
        for _attempt in 0..4 {
            let node = self.ctx.router.pick(route, &mut self.floor);
            if route == Route::Write && node.role == Role::Primary && !self.ctx.lease.is_valid() {
                // The witness group has not confirmed this primary lately: a write now could
                // land on a node that is being replaced. (Reads go on.) Wait a while (a
                // failover takes about 2 s), then pick again: the primary may have moved.
                if !waited {
                    waited = true;
                    if self.wait_for_lease().await {
                        continue;
                    }
                }
                self.ctx.metrics.error("no_write_lease");
                last_err = Some(no_lease());
                break;
            }
            if let Some(a) = &self.active {
                if Arc::ptr_eq(&a.node, &node) {
                    last_err = None;
                    break;
                }
            }
            // Session mode: keep the idle connection for later units.
            if let Some(mut a) = self.active.take() {
                if self.mode == PoolMode::Session && self.held.len() < 8 {
                    self.held.push(a);
                } else if self.pinned {
                    // A replica connection this session pinned carries its session state.
                    a.conn.broken = true;
                }
            }
            if let Some(pos) = self.held.iter().position(|h| Arc::ptr_eq(&h.node, &node)) {
                self.active = Some(self.held.swap_remove(pos));
                last_err = None;
                break;
            }
            self.info.set_state(ClientState::Waiting);
            let pool = self.pool_for(&node);
            match pool.acquire(self.last_server).await {
                Ok(conn) => {
                    self.active = Some(Attached { conn, pool, node, inflight: None });
                    last_err = None;
                    break;
                }
                Err(e) => {
                    let kind = if matches!(e, AcquireError::PoolTimeout) { "pool_timeout" } else { "server_connect" };
                    self.ctx.metrics.error(kind);
                    self.span
                        .in_scope(|| tracing::warn!(node = %node.id, error = %e, "could not get a server connection"));
                    let retry = node.role == Role::Replica && replica_unavailable(&e);
                    // With a witness group, a primary that cannot be reached is likely being
                    // failed over: wait (bounded) for the group to publish another, then go
                    // there, instead of failing the write.
                    let failing_over = node.role == Role::Primary && self.ctx.lease.required() && !waited;
                    last_err = Some(failure_for(&node.id.to_string(), e));
                    if retry {
                        node.set_healthy(false);
                        continue;
                    }
                    if failing_over {
                        waited = true;
                        if self.wait_for_new_primary(&node).await {
                            continue;
                        }
                    }
                    break;
                }
            }
        }
        if let Some(f) = last_err {
            self.info.set_state(ClientState::Idle);
            if self.active.is_none() {
                self.busy = None; // no unit runs: PAUSE need not wait for this session
            }
            return Err(Failure::Unit(f));
        }
        self.start_unit_on_active(route);
        Ok(())
    }

    /// A session pinned to a node that is no longer the primary (the witness group moved the
    /// primary): its server state cannot follow, so it ends with 57P01 at the next unit
    /// boundary rather than write to the old primary. (Inside a transaction it goes on until
    /// the transaction ends: the old primary cannot commit it through the sync quorum once
    /// fenced.)
    fn left_behind(&mut self) -> Option<Failure> {
        let a = self.active.as_ref()?;
        let current = self.ctx.router.topology();
        // By address: a RELOAD that changes only the replicas makes new node handles too.
        if a.node.role != Role::Primary || a.node.addr == current.primary.addr || self.tx != TxStatus::Idle {
            return None;
        }
        if let Some(a) = self.active.as_mut() {
            a.conn.broken = true;
        }
        self.busy = None;
        Some(Failure::Ended {
            code: sqlstate::ADMIN_SHUTDOWN,
            message: format!(
                "the primary moved to node \"{}\" (epoch {}); this session's server state stayed on the old one: reconnect",
                current.primary.id, current.epoch
            ),
        })
    }

    /// Session pooling: the primary connection taken at login, whose backend pid the client
    /// was given, becomes the session's own.
    pub(super) fn adopt(&mut self, conn: Checkout, pool: Arc<ServerPool>, node: Arc<Node>) {
        self.pools.push((node.clone(), pool.clone()));
        self.active = Some(Attached { conn, pool, node, inflight: None });
    }

    /// Counts the session busy once the PAUSE gate is open (waiting while it is closed).
    async fn pass_gate(&mut self) -> Busy {
        loop {
            if let Some(busy) = self.ctx.gate.try_enter(self.info.worker) {
                return busy;
            }
            self.info.set_state(ClientState::Waiting);
            self.ctx.gate.wait_open().await;
        }
    }

    /// The pool of `node` for this client's user and database, cached per session
    /// (the lookup would otherwise build a key from three strings per request).
    fn pool_for(&mut self, node: &Arc<Node>) -> Arc<ServerPool> {
        if let Some((_, p)) = self.pools.iter().find(|(n, _)| Arc::ptr_eq(n, node)) {
            return p.clone();
        }
        let key = PoolKey { node: node.id.clone(), user: self.user.clone(), database: self.database.clone() };
        let pool = self.ctx.pools.get(self.info.worker, &key, &node.addr, &self.cred);
        self.pools.retain(|(n, _)| Arc::strong_count(n) > 1);
        self.pools.push((node.clone(), pool.clone()));
        pool
    }

    fn start_unit_on_active(&mut self, route: Route) {
        let Some(a) = self.active.as_mut() else { return };
        if a.inflight.is_none() {
            a.inflight = Some(a.node.begin_request());
            self.unit_started = Some(Instant::now());
        }
        self.cancel.set_target(Some(&a.conn.cancel_key));
        if a.conn.last_client != self.cancel.pid {
            a.conn.last_client = self.cancel.pid;
            self.ctx.cancels.note_backend_user(&a.conn.cancel_key, self.cancel.pid);
        }
        self.info.attach_node(&a.node);
        self.info.set_state(ClientState::Active);
        if route == Route::Write && a.node.role == Role::Primary {
            self.unit_wrote = true;
        }
        self.sync_connection();
    }

    /// At the start of a unit: brings the connection's prepared statements and settings in
    /// line with what the session expects, with hidden requests ahead of the client's.
    fn sync_connection(&mut self) {
        let Some(a) = self.active.as_mut() else { return };
        if a.conn.statements_stale {
            // A schema change made a statement on this connection return other columns
            // (server: "cached plan must not change result type"). The statements are
            // shared by text, so a client's new Parse of the same text would still get the
            // old one; start over on this connection. Only the protocol-level statements
            // go (the proxy's): the client's SQL `PREPARE`d ones stay, as in PostgreSQL.
            build::query(&mut self.sout, DEALLOCATE_PROTOCOL_STATEMENTS);
            self.pipeline.push(Expect::Query { swallow: true }, &mut self.cout);
            a.conn.prepared.clear();
            a.conn.statements_stale = false;
        }
        let want = self.params.signature();
        if a.conn.params_signature != want {
            build::query(&mut self.sout, &self.params.replay_sql());
            self.pipeline.push(Expect::Query { swallow: true }, &mut self.cout);
            a.conn.params_signature = want;
        }
    }

    /// Whether the outstanding units are reads on a replica that nothing has
    /// answered yet, so that they can run on another node instead.
    pub(super) fn can_retry_elsewhere(&self) -> bool {
        let Some(a) = &self.active else { return false };
        !self.forwarded
            && self.tx == TxStatus::Idle
            && !self.pinned
            && !self.unit_wrote
            && a.node.role == Role::Replica
            && self.replay_bytes <= MAX_REPLAY_BYTES
            && !self.replay.is_empty()
    }

    /// The active server connection failed. A read that has not answered yet
    /// moves to another node; anything else ends the session.
    pub(super) async fn server_lost(&mut self) -> Result<(), End> {
        let replayable = self.can_retry_elsewhere();
        let Some(a) = self.active.take() else { return Ok(()) };
        let node = a.node.clone();
        self.span.in_scope(|| tracing::warn!(node = %node.id, "server connection lost"));
        self.ctx.metrics.error("server_lost");
        discard(a);
        // One lost connection (a terminated backend, say) is not a node failure: the node
        // goes out of rotation only when a new connection or a health check fails.
        self.pipeline.clear();
        self.sout.clear();
        self.restore_at_sync = None;
        if replayable {
            let frames = std::mem::take(&mut self.replay);
            // The replayed Parses define their names again (not as duplicates).
            for f in frames.iter().filter(|f| f.tag() == b'P') {
                if let Ok(p) = fields::parse(f.body()) {
                    self.statements.remove(p.name);
                }
            }
            self.replay_bytes = 0;
            self.pending.clear();
            for f in frames {
                Box::pin(self.handle_client_message(f)).await?;
            }
            return Ok(());
        }
        if self.server_fatal {
            // The client already has the server's reason (e.g. 57P01 from
            // pg_terminate_backend); a second FATAL of the proxy's would hide it.
            return Err(End::Fatal);
        }
        self.client_error(
            Severity::Fatal,
            sqlstate::CONNECTION_FAILURE,
            &format!("server connection to node \"{}\" was lost", node.id),
        );
        Err(End::Fatal)
    }
}

/// Whether a replica that gave `e` instead of a connection is unavailable as a whole (and a
/// read goes elsewhere): it cannot be reached, or refuses logins for now (57P03: shutting
/// down, starting up, in recovery without hot standby). A full pool or a login refusal of
/// this user is the client's answer.
fn replica_unavailable(e: &AcquireError) -> bool {
    match e {
        AcquireError::PoolTimeout => false,
        AcquireError::Connect(ConnectError::Server { code, .. }) => code == "57P03",
        AcquireError::Connect(_) => true,
    }
}

impl Session {
    /// Waits up to `write_lease_wait_ms` for a valid write lease (true: there is one).
    async fn wait_for_lease(&mut self) -> bool {
        self.wait_for_group(|ctx| ctx.lease.is_valid()).await
    }

    /// Waits up to `write_lease_wait_ms` until the group's topology names another primary
    /// than `unreachable` and the proxy holds a lease for it (true: go there).
    async fn wait_for_new_primary(&mut self, unreachable: &Node) -> bool {
        let addr = unreachable.addr.clone();
        self.wait_for_group(move |ctx| ctx.router.topology().primary.addr != addr && ctx.lease.is_valid()).await
    }

    /// Polls `ready` for up to `write_lease_wait_ms` (the unit has passed the PAUSE gate; a
    /// proxy shutting down stops the wait).
    async fn wait_for_group(&mut self, ready: impl Fn(&ProxyContext) -> bool) -> bool {
        if ready(&self.ctx) {
            return true;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.ctx.cfg.write_lease_wait_ms);
        self.info.set_state(ClientState::Waiting);
        while tokio::time::Instant::now() < deadline && !self.ctx.shutdown.is_cancelled() {
            tokio::time::sleep(LEASE_POLL).await;
            if ready(&self.ctx) {
                return true;
            }
        }
        false
    }
}

/// How often a write waiting for the lease looks again.
const LEASE_POLL: Duration = Duration::from_millis(10);

/// A unit bound for the primary while the proxy holds no write lease.
fn no_lease() -> UnitFailed {
    UnitFailed {
        code: sqlstate::READ_ONLY_SQL_TRANSACTION,
        message: "cannot use the primary: this proxy holds no write lease from the witness group \
                  (the primary may be failing over); reads on replicas still work"
            .into(),
    }
}

fn failure_for(node: &str, e: AcquireError) -> UnitFailed {
    match e {
        AcquireError::Connect(ConnectError::Server { code, message, .. }) => {
            UnitFailed { code: static_code(&code), message }
        }
        AcquireError::PoolTimeout => UnitFailed {
            code: sqlstate::TOO_MANY_CONNECTIONS,
            message: "timed out waiting for a free server connection".into(),
        },
        other => UnitFailed {
            code: sqlstate::CONNECTION_FAILURE,
            message: format!("could not connect to node \"{node}\": {other}"),
        },
    }
}

/// Maps a server's SQLSTATE to a static string (the common login failures),
/// falling back to a generic connection failure.
fn static_code(code: &str) -> &'static str {
    match code {
        "3D000" => "3D000",
        "28P01" => "28P01",
        "28000" => "28000",
        "53300" => "53300",
        "57P03" => "57P03",
        "42501" => "42501",
        _ => sqlstate::CONNECTION_FAILURE,
    }
}
