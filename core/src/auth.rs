//! The bearer token every Tandem HTTP API checks on requests that change something.
//!
//! The witnesses (proxies, the relay and the CLI call them), the relay's fence endpoint and
//! the node agent all take the cluster's token the same way: `Authorization: Bearer <token>`,
//! and no token configured leaves the endpoint open (loopback demos only).

/// Whether a request with this `Authorization` header value may pass when the endpoint
/// expects `token` (none: every request passes).
pub fn bearer_allows(token: Option<&str>, authorization: Option<&[u8]>) -> bool {
    let Some(token) = token else { return true };
    let given = authorization.and_then(|v| std::str::from_utf8(v).ok()).and_then(|v| v.strip_prefix("Bearer "));
    given == Some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_passes() {
        assert!(bearer_allows(None, None));
        assert!(bearer_allows(Some("s"), Some(b"Bearer s")));
        for bad in [None, Some(&b"Bearer x"[..]), Some(b"s"), Some(b"Basic s"), Some(b"Bearer \xff")] {
            assert!(!bearer_allows(Some("s"), bad), "{bad:?}");
        }
    }
}
