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
    /// `[cluster]`: the nodes and witnesses, read by `tandem witness` and `tandem status`.
    #[serde(default)]
    pub cluster: Option<tandem_core::ClusterSpec>,
}

/// Reads and parses a cluster file.
pub fn load(path: &Path) -> anyhow::Result<ClusterFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid cluster file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The annotated example in docs/ must stay a file Tandem accepts.
    #[test]
    fn the_documented_example_loads_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/tandem.example.toml");
        let file = load(&path).expect("docs/tandem.example.toml loads");
        let proxy = file.proxy.expect("[proxy]");
        proxy.validate().expect("[proxy] is valid");
        assert_eq!(proxy.replicas.len(), 2);
        assert_eq!(proxy.server_idle_timeout_ms, 600_000);
        let replicator = file.replicator.expect("[replicator]");
        replicator.validate().expect("[replicator] is valid");
        assert_eq!(replicator.replicas.len(), 1);
    }

    /// A misspelt key is an error, not a silent default.
    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<ClusterFile>("[proxy]\npool_sise = 5\n").expect_err("typo rejected");
        assert!(err.to_string().contains("pool_sise"), "{err}");
    }
}
