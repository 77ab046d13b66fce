//! Raft RPC between witnesses: JSON over HTTP.
//!
//! Place in the data flow: openraft on one witness → [`HttpNetwork`] → `POST
//! /raft/{append,vote,snapshot}` on another (served by `api/raft.rs`) → that witness's
//! openraft. Every call is bounded by openraft's own per-RPC deadline (`RPCOption::hard_ttl`)
//! and a connect timeout, so a frozen or cut-off peer is an error, never a hang.

use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{TypeConfig, WitnessId};

/// How long opening a connection to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);

/// Makes a client per peer; all share one HTTP connection pool.
#[derive(Clone)]
pub struct HttpNetwork {
    http: reqwest::Client,
}

impl HttpNetwork {
    /// A network with its own pooled HTTP client.
    pub fn new() -> Result<HttpNetwork, reqwest::Error> {
        let http = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true).build()?;
        Ok(HttpNetwork { http })
    }
}

/// A connection to one peer.
pub struct PeerClient {
    http: reqwest::Client,
    target: WitnessId,
    base: String,
}

impl RaftNetworkFactory<TypeConfig> for HttpNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: WitnessId, node: &BasicNode) -> PeerClient {
        PeerClient { http: self.http.clone(), target, base: format!("http://{}", node.addr) }
    }
}

type RpcResult<T, E> = Result<T, RPCError<WitnessId, BasicNode, RaftError<WitnessId, E>>>;

impl PeerClient {
    async fn post<Req, Resp, E>(&self, path: &str, req: &Req, option: &RPCOption) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let url = format!("{}/raft/{path}", self.base);
        let sent = self.http.post(&url).json(req).timeout(option.hard_ttl()).send().await;
        let response = match sent {
            Ok(r) => r,
            Err(e) if e.is_connect() => return Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e) => return Err(RPCError::Network(NetworkError::new(&e))),
        };
        if !response.status().is_success() {
            let status = response.status();
            let e = std::io::Error::other(format!("{url}: HTTP {status}"));
            return Err(RPCError::Network(NetworkError::new(&e)));
        }
        let body: Result<Resp, RaftError<WitnessId, E>> =
            response.json().await.map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        body.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<WitnessId>, openraft::error::Infallible> {
        self.post("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<WitnessId>, InstallSnapshotError> {
        self.post("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<WitnessId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<WitnessId>, openraft::error::Infallible> {
        self.post("vote", &rpc, &option).await
    }
}
