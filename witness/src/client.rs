//! A client of the witness group's API, for the CLI (and later proxies and the replicator).
//!
//! It knows every witness's address and asks them in turn, so any one of them being down
//! is no error; every call is bounded by a timeout.

use std::time::Duration;

use crate::api::ClusterView;

/// Why the group could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No witness answered.
    #[error("no witness answered ({0})")]
    NoAnswer(String),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Setup(String),
}

/// Asks the witnesses at `addrs`.
#[derive(Clone, Debug)]
pub struct WitnessClient {
    addrs: Vec<String>,
    http: reqwest::Client,
}

impl WitnessClient {
    /// A client of the witnesses at `addrs` (`host:port`), each call bounded by `timeout`.
    pub fn new(addrs: Vec<String>, timeout: Duration) -> Result<WitnessClient, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(WitnessClient { addrs, http })
    }

    /// The cluster as the leader sees it (or, with no leader, as the first witness that
    /// answers sees it).
    pub async fn cluster(&self) -> Result<ClusterView, ClientError> {
        let mut errors = Vec::new();
        let mut first = None;
        for addr in &self.addrs {
            match self.get(addr).await {
                Ok(view) => {
                    let leader = view.leader;
                    if leader == Some(view.witness) {
                        return Ok(view);
                    }
                    let leader_addr =
                        leader.and_then(|l| view.witnesses.iter().find(|w| w.id == l)).map(|w| w.addr.clone());
                    if let Some(addr) = leader_addr {
                        if let Ok(v) = self.get(&addr).await {
                            return Ok(v);
                        }
                    }
                    first.get_or_insert(view);
                }
                Err(e) => errors.push(format!("{addr}: {e}")),
            }
        }
        first.ok_or_else(|| ClientError::NoAnswer(errors.join("; ")))
    }

    /// POSTs `body` to `path` on the leader (a follower's 421 names it), with the cluster's
    /// bearer `token`. `Ok((status, body))` for any answer from the leader; an error when no
    /// witness answered.
    pub async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
        token: Option<&str>,
    ) -> Result<(u16, serde_json::Value), ClientError> {
        let mut errors = Vec::new();
        let mut targets: Vec<String> = self.addrs.clone();
        let mut i = 0;
        while i < targets.len() && i < self.addrs.len() + 3 {
            let addr = targets[i].clone();
            i += 1;
            let mut req = self.http.post(format!("http://{addr}{path}")).json(body);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    errors.push(format!("{addr}: {e}"));
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let answer: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
            if status == 421 {
                if let Some(leader) = answer["leader"].as_str() {
                    targets.insert(i, leader.to_owned());
                }
                continue;
            }
            return Ok((status, answer));
        }
        Err(ClientError::NoAnswer(errors.join("; ")))
    }

    async fn get(&self, addr: &str) -> Result<ClusterView, reqwest::Error> {
        self.http.get(format!("http://{addr}/v1/cluster")).send().await?.error_for_status()?.json().await
    }
}
