//! Node identities and roles.
//!
//! A node is one PostgreSQL server of the cluster. Operators name them
//! (`pg1`, `east-replica`) in `tandem.toml` and on the command line; the name
//! is what shows up in status output, metrics labels and admin `SHOW` rows.

use std::fmt;
use std::str::FromStr;

/// The operator-given name of a PostgreSQL node.
///
/// Restricted to `[A-Za-z0-9_.-]`, 1 to 63 bytes, so it is safe as a metrics
/// label, a file name and a PostgreSQL `application_name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct NodeId(String);

/// Why a string cannot name a node.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid node name {0:?}: use 1 to 63 characters from A-Z a-z 0-9 _ . -")]
pub struct NodeIdError(String);

impl NodeId {
    /// Checks and wraps a node name.
    pub fn new(name: impl Into<String>) -> Result<NodeId, NodeIdError> {
        let name = name.into();
        let ok = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok {
            Ok(NodeId(name))
        } else {
            Err(NodeIdError(name))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeId {
    type Err = NodeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeId::new(s)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        NodeId::new(s).map_err(serde::de::Error::custom)
    }
}

/// What a node does in the current epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Takes writes; the source of the change stream.
    Primary,
    /// Serves reads; fed by the primary.
    Replica,
}

impl Role {
    /// Lower-case name, as used in metrics labels and admin output.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The physical replication slot a standby named `name` streams from (on whichever node is
/// primary): slot names allow only `[a-z0-9_]`, so other characters become `_` (and upper
/// case lower case). Shared by `tandem replica add`, the relay's trimming and failover.
pub fn standby_slot_name(name: &NodeId) -> String {
    let cleaned: String = name
        .as_str()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .take(48)
        .collect();
    format!("tandem_standby_{cleaned}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_simple_names() {
        for name in ["pg1", "east-replica", "a.b_c"] {
            assert_eq!(NodeId::new(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn rejects_unsafe_names() {
        for name in ["", "has space", "semi;colon", "ü", &"x".repeat(64)] {
            assert!(NodeId::new(name).is_err(), "{name:?} accepted");
        }
    }
}
