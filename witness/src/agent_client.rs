//! TEMPORARY STUB (replaced by helper's agent client at merge).
use std::time::Duration;
use tandem_core::agent::*;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AgentClientError(String);

pub struct AgentClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl AgentClient {
    pub fn new(addr: &str, token: Option<&str>) -> Result<AgentClient, AgentClientError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(70))
            .build()
            .map_err(|e| AgentClientError(e.to_string()))?;
        Ok(AgentClient { base: format!("http://{addr}"), token: token.map(str::to_owned), http })
    }
    async fn call<T: serde::de::DeserializeOwned>(&self, r: reqwest::RequestBuilder) -> Result<T, AgentClientError> {
        let r = match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        };
        let resp = r.send().await.map_err(|e| AgentClientError(e.to_string()))?;
        if !resp.status().is_success() {
            let s = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return Err(AgentClientError(format!("{s}: {body}")));
        }
        resp.json().await.map_err(|e| AgentClientError(e.to_string()))
    }
    pub async fn node(&self) -> Result<NodeReport, AgentClientError> {
        self.call(self.http.get(format!("{}/v1/node", self.base)).timeout(Duration::from_secs(3))).await
    }
    pub async fn stop(&self) -> Result<StopReply, AgentClientError> {
        self.call(self.http.post(format!("{}/v1/stop", self.base)).json(&serde_json::json!({}))).await
    }
    pub async fn start(&self, req: &StartRequest) -> Result<StartReply, AgentClientError> {
        self.call(self.http.post(format!("{}/v1/start", self.base)).json(req)).await
    }
}
