//! The cluster file, `tandem.toml`.
//!
//! One file describes every part; each part reads its own table. Unknown keys
//! are errors, so a typo never silently falls back to a default.

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;
use tandem_proxy::ProxyConfig;
use tandem_replicator::ReplicatorConfig;

/// Top level of `tandem.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// `[proxy]`
    #[serde(default)]
    pub proxy: Option<ProxyConfig>,
    /// `[replicator]`, read by `tandem replicator`.
    #[serde(default)]
    pub replicator: Option<ReplicatorConfig>,
}

/// Reads and parses a cluster file.
pub fn load(path: &Path) -> anyhow::Result<ClusterFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid cluster file {}", path.display()))
}
