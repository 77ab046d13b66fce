//! One witness assembled: storage, Raft, probes, the leader's duties, the HTTP API.
//!
//! Place in the data flow: all of it, wired. The leader's loop runs on every witness and
//! acts only while this witness is the leader: it bootstraps the cluster state from the
//! cluster file once, and each probe interval judges the primary from the freshest report
//! of every witness (its own included, see [`crate::detector`]), committing a declaration
//! when the verdict changes. Reports from other witnesses arrive over HTTP and are kept in
//! memory: a new leader starts the failure clock again from the reports it receives.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::BasicNode;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::WitnessConfig;
use crate::detector::{self, Sighting, Verdict};
use crate::probe::{self, Views};
use crate::raft::log_store::LogStore;
use crate::raft::network::HttpNetwork;
use crate::raft::state_machine::StateMachine;
use crate::raft::{Raft, WitnessId};
use crate::state::{ClusterState, Command, NodeRole, NodeState, OperationKind, Outcome, Request};
use crate::WitnessError;

/// A running witness, shared by the API handlers and its own loops.
pub struct Witness {
    /// Its configuration.
    pub cfg: Arc<WitnessConfig>,
    /// Its Raft handle.
    pub raft: Raft,
    /// The cluster state as applied here.
    pub state: watch::Receiver<ClusterState>,
    /// What this witness's probes see.
    pub views: Views,
    /// The latest report about the primary from each witness (leader's use).
    pub sightings: Mutex<BTreeMap<u64, Sighting>>,
    /// What this leader last answered each lease holder (see [`LeaseAnswers`]).
    pub lease_answers: Mutex<BTreeMap<String, LeaseAnswers>>,
    /// Which proxies went quiet for the switchover in progress (leader's use).
    pub quiet: Mutex<crate::switchover::quiet::QuietReports>,
    /// A switchover's old primary is being restarted as a standby (one task at a time).
    pub restarting: std::sync::atomic::AtomicBool,
    /// Makes request ids unique per process.
    next_request: std::sync::atomic::AtomicU64,
    started: Instant,
}

/// What a leader last answered one lease holder, to end the async failover's lease wait
/// early when it can prove every lease ended.
#[derive(Clone, Debug)]
pub struct LeaseAnswers {
    /// The epoch of the answers.
    pub epoch: tandem_core::Epoch,
    /// When this leader last granted it a lease (after the grant was committed).
    pub last_grant: Option<Instant>,
    /// It asked without a valid lease since that grant, and was refused.
    pub ended: bool,
}

/// Milliseconds since the Unix epoch (for display fields only).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Witness {
    /// Opens the store in `cfg.data_dir` and starts Raft (joining or forming the group).
    pub async fn start(cfg: Arc<WitnessConfig>) -> Result<Arc<Witness>, WitnessError> {
        cfg.validate()?;
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| WitnessError::DataDir(format!("create {}: {e}", cfg.data_dir.display())))?;
        let path = cfg.data_dir.join("witness.redb");
        let db = redb::Database::create(&path).map_err(|e| {
            WitnessError::DataDir(format!(
                "open {}: {e} (a damaged witness data directory: move it away and the witness rejoins from its peers)",
                path.display()
            ))
        })?;
        let db = Arc::new(db);
        let log_store = LogStore::new(db.clone())?;
        let state_machine = StateMachine::open(db)?;
        let state = state_machine.subscribe();
        let t = &cfg.timing;
        let raft_config = openraft::Config {
            cluster_name: "tandem".into(),
            heartbeat_interval: t.heartbeat.as_millis() as u64,
            election_timeout_min: t.election_min.as_millis() as u64,
            election_timeout_max: t.election_max.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
            max_in_snapshot_log_to_keep: 200,
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate().map_err(|e| WitnessError::Raft(e.to_string()))?);
        let network = HttpNetwork::new().map_err(|e| WitnessError::Raft(e.to_string()))?;
        let raft = Raft::new(cfg.id, raft_config, network, log_store, state_machine)
            .await
            .map_err(|e| WitnessError::Raft(e.to_string()))?;
        // The lowest id forms the group the first time; the others wait to be contacted.
        let lowest = cfg.cluster.witnesses.iter().map(|w| w.id).min();
        if lowest == Some(cfg.id) && !raft.is_initialized().await.map_err(|e| WitnessError::Raft(e.to_string()))? {
            let members: BTreeMap<WitnessId, BasicNode> =
                cfg.cluster.witnesses.iter().map(|w| (w.id, BasicNode::new(&w.addr))).collect();
            if let Err(e) = raft.initialize(members).await {
                tracing::info!(error = %e, "not forming the group (already formed)");
            }
        }
        Ok(Arc::new(Witness {
            cfg,
            raft,
            state,
            views: Views::default(),
            sightings: Mutex::new(BTreeMap::new()),
            lease_answers: Mutex::new(BTreeMap::new()),
            quiet: Mutex::default(),
            restarting: Default::default(),
            next_request: std::sync::atomic::AtomicU64::new(0),
            started: Instant::now(),
        }))
    }

    /// A request id unique to this process.
    pub fn request_id(&self) -> String {
        let n = self.next_request.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("w{}-{}-{n}", self.cfg.id, self.started.elapsed().as_nanos())
    }

    /// Proposes `command` (on the leader), bounded by the write timeout: `Err` when this
    /// witness is not the leader or the outcome is unknown (retry with the same `id`).
    pub async fn propose(&self, id: String, command: Command) -> Result<Outcome, WitnessError> {
        let req = Request { id, at_ms: now_ms(), command };
        match tokio::time::timeout(self.cfg.timing.write_timeout, self.raft.client_write(req)).await {
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(openraft::error::RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(f)))) => {
                Err(WitnessError::NotLeader { leader: f.leader_node.map(|n| n.addr) })
            }
            Ok(Err(e)) => Err(WitnessError::Raft(e.to_string())),
            Err(_) => Err(WitnessError::Unknown),
        }
    }

    /// Whether this witness is the leader now (by its own metrics; cheap).
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.cfg.id)
    }

    /// The leader's API address, if known.
    pub fn leader_addr(&self) -> Option<String> {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader?;
        m.membership_config.membership().get_node(&leader).map(|n| n.addr.clone())
    }

    /// Records the answer to `holder`'s lease request in `epoch`: refused or granted, and
    /// whether the proxy said it held a valid lease when it sent the request.
    pub fn record_lease_answer(&self, holder: &str, epoch: tandem_core::Epoch, refused: bool, held: bool) {
        let mut answers = self.lease_answers.lock().unwrap_or_else(|p| p.into_inner());
        let a = answers.entry(holder.to_owned()).or_insert(LeaseAnswers { epoch, last_grant: None, ended: false });
        if a.epoch != epoch {
            *a = LeaseAnswers { epoch, last_grant: None, ended: false };
        }
        if !refused {
            a.last_grant = Some(Instant::now());
            a.ended = false;
        } else if !held {
            // It held no lease when it asked, and this refusal gives it none: it has none
            // for this epoch from then on (a proxy sends one request at a time).
            a.ended = true;
        }
    }

    /// Whether no holder of a lease for the current epoch in `state` can still write with it,
    /// as far as this leader can prove: each asked again without a valid lease and was
    /// refused, or its last grant here is older than `wait` (the whole lease, drift included).
    pub fn leases_all_ended(&self, state: &ClusterState, wait: Duration) -> bool {
        let answers = self.lease_answers.lock().unwrap_or_else(|p| p.into_inner());
        state.leases.values().filter(|l| l.epoch == state.epoch).all(|l| {
            answers.get(&l.holder).is_some_and(|a| {
                a.epoch == state.epoch && (a.ended || a.last_grant.is_some_and(|t| t.elapsed() >= wait))
            })
        })
    }

    /// Records a witness's report about the primary (leader's use).
    pub fn record_sighting(&self, witness: u64, node: &str, failing_for: Option<Duration>) {
        let mut s = self.sightings.lock().unwrap_or_else(|p| p.into_inner());
        s.insert(witness, Sighting { node: node.to_owned(), received: Instant::now(), failing_for });
    }

    /// How long this witness has failed to reach `node` (None: reachable or never probed
    /// successfully... a node never reached counts as failing since the first probe).
    pub fn own_failing_for(&self, node: &str) -> Option<Option<Duration>> {
        let views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        views.get(node).map(|v| (!v.reachable).then(|| Duration::from_millis(v.failing_for_ms)))
    }
}

/// Runs the witness's loops until `stop`: probes, reporting to the leader, and the leader's
/// duties.
pub async fn run_loops(w: Arc<Witness>, stop: CancellationToken) {
    let probes = tokio::spawn(probe::run(
        w.cfg.cluster.nodes.clone(),
        w.cfg.probe.clone(),
        w.cfg.timing.clone(),
        w.views.clone(),
        stop.clone(),
    ));
    let reporter = tokio::spawn(crate::report::run(w.clone(), stop.clone()));
    leader_loop(&w, &stop).await;
    let _ = probes.await;
    let _ = reporter.await;
}

/// How often the leader checks that fenced nodes stay fenced and standbys follow.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);

async fn leader_loop(w: &Arc<Witness>, stop: &CancellationToken) {
    let mut ticker = tokio::time::interval(w.cfg.timing.probe_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let bootstrap_id = "bootstrap".to_owned();
    let mut reconciled = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if !w.is_leader() {
            continue;
        }
        let state = w.state.borrow().clone();
        if state.nodes.is_empty() {
            let nodes = w
                .cfg
                .cluster
                .nodes
                .iter()
                .map(|n| NodeState {
                    name: n.name.clone(),
                    addr: n.addr.to_string(),
                    role: if n.role == tandem_core::Role::Primary { NodeRole::Primary } else { NodeRole::Standby },
                    priority: n.priority,
                })
                .collect();
            match w.propose(bootstrap_id.clone(), Command::Bootstrap { nodes }).await {
                Ok(o) => tracing::info!(applied = o.applied, epoch = %o.epoch, "cluster state bootstrapped"),
                Err(e) => tracing::warn!(error = %e, "bootstrapping the cluster state"),
            }
            continue;
        }
        judge_primary(w, &state).await;
        // A verdict just committed opens the failover: act on it without waiting a tick.
        let state = w.state.borrow().clone();
        if let Some(op) = &state.operation {
            match op.kind {
                OperationKind::Failover => crate::failover::drive(w, &state).await,
                OperationKind::Switchover => crate::switchover::drive(w, &state).await,
            }
        } else if reconciled.elapsed() >= RECONCILE_EVERY {
            crate::failover::reconcile(w, &state).await;
            crate::switchover::finish_restart(w, &state);
            reconciled = Instant::now();
        }
    }
}

async fn judge_primary(w: &Arc<Witness>, state: &ClusterState) {
    let Some(primary) = state.primary.clone() else { return };
    if let Some(own) = w.own_failing_for(primary.as_str()) {
        w.record_sighting(w.cfg.id, primary.as_str(), own);
    }
    let members: BTreeSet<u64> = w.cfg.cluster.witnesses.iter().map(|x| x.id).collect();
    let sightings = w.sightings.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let t = &w.cfg.timing;
    let fresh = t.probe_interval * 4;
    let verdict =
        detector::judge(primary.as_str(), &sightings, members.len(), Instant::now(), fresh, t.failure_timeout);
    let command = match verdict {
        Verdict::Failed(witnesses) if state.primary_failed_ms.is_none() => {
            tracing::warn!(primary = %primary, ?witnesses, "a majority of witnesses cannot reach the primary");
            Command::DeclarePrimaryFailed { primary, witnesses }
        }
        Verdict::Healthy if state.primary_failed_ms.is_some() => {
            tracing::info!(primary = %primary, "a majority of witnesses reach the primary again");
            Command::PrimaryRecovered { primary }
        }
        _ => return,
    };
    if let Err(e) = w.propose(w.request_id(), command).await {
        tracing::warn!(error = %e, "committing the verdict on the primary");
    }
}
