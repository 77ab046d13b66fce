//! Fencing the WAL relay: it must stop acknowledging the old primary, and say how far its
//! WAL goes.
//!
//! Place in the data flow: the fence step ([`super`]) → **`POST http://RELAY/fence`** → the
//! relay stops its receiver (the old primary loses that quorum member) and answers with its
//! final flush position, which the catch-up target includes. The relay stays fenced until
//! the group publishes a newer epoch, then streams from that epoch's primary.

use std::time::Duration;

use serde::Deserialize;
use tandem_core::{Epoch, Lsn};

/// The relay's answer.
#[derive(Debug, Deserialize)]
pub struct RelayFenced {
    /// Its slot name (its name in the commit quorum).
    pub slot: String,
    /// The last position it flushed; nothing after it will come from the old primary.
    pub flushed: Option<Lsn>,
}

/// Asks the relay at `addr` (its status endpoint) to fence itself for `epoch`.
pub async fn fence(addr: &str, epoch: Epoch, token: Option<&str>, timeout: Duration) -> Result<RelayFenced, String> {
    let http = reqwest::Client::builder().timeout(timeout).build().map_err(|e| e.to_string())?;
    let mut req = http.post(format!("http://{addr}/fence")).json(&serde_json::json!({ "epoch": epoch }));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|e| format!("relay at {addr}: {e}"))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(format!("relay at {addr}: HTTP {status}: {}", body.trim()));
    }
    resp.json().await.map_err(|e| format!("relay at {addr}: {e}"))
}
