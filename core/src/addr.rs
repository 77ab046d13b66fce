//! Network addresses of PostgreSQL nodes as operators write them.
//!
//! `--primary HOST:PORT` and `--replica HOST:PORT` flags, and the `host`/`port`
//! of `tandem.toml`, become a [`NodeAddr`]. It keeps the host as written (a
//! name is resolved when a connection is made, so DNS changes are followed).

use std::fmt;
use std::str::FromStr;

/// A `host:port` pair naming a PostgreSQL server.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeAddr {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// Why a string is not a `host:port`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid address {0:?}: expected HOST:PORT, like 127.0.0.1:5432 or [::1]:5432")]
pub struct AddrError(String);

impl FromStr for NodeAddr {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || AddrError(s.to_owned());
        let (host, port) = s.rsplit_once(':').ok_or_else(err)?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if host.is_empty() || host.contains(['/', ' ']) {
            return Err(err());
        }
        let port: u16 = port.parse().map_err(|_| err())?;
        if port == 0 {
            return Err(err());
        }
        Ok(NodeAddr { host: host.to_owned(), port })
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl serde::Serialize for NodeAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for NodeAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_port() {
        let a: NodeAddr = "127.0.0.1:5432".parse().unwrap();
        assert_eq!((a.host.as_str(), a.port), ("127.0.0.1", 5432));
        let b: NodeAddr = "[::1]:6432".parse().unwrap();
        assert_eq!((b.host.as_str(), b.port), ("::1", 6432));
        assert_eq!(b.to_string(), "[::1]:6432");
    }

    #[test]
    fn rejects_bad_addresses() {
        for s in ["", "host", ":5432", "h:0", "h:99999", "h:x"] {
            assert!(s.parse::<NodeAddr>().is_err(), "{s} parsed");
        }
    }
}
