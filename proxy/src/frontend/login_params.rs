//! A client's startup settings, checked by the primary before the client is greeted.
//!
//! `client → frontend`: PostgreSQL applies the settings of a StartupMessage
//! (`client_encoding`, `DateStyle`, `TimeZone`, `search_path`, ...) at login. It refuses a
//! bad value with a FATAL error, and it reports the canonical form of the settings it reports
//! in ParameterStatus (`'utf-8'` becomes `UTF8`, `iso, dmy` becomes `ISO, DMY`); drivers
//! read those back (asyncpg's `get_settings().client_encoding`). The proxy greets clients from
//! the parameters its pool remembered, without a server login of their own, so
//! [`check`] has the primary log in once with each distinct set of client settings and
//! caches the outcome per pool ([`SettingsChecks`]): the greeting then carries what the
//! server reported, and a client whose settings the server refuses gets the server's own
//! FATAL instead of a session in which every replayed `SET` would fail unseen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;

use crate::auth::ServerCredential;
use crate::pool::{connect, ConnectError, ServerPool};
use crate::server_tls::ServerTls;
use tandem_core::NodeAddr;

/// Distinct setting sets remembered per pool; the cache starts over when full.
const MAX_CHECKS: usize = 256;

/// The server's verdict on one set of startup settings.
#[derive(Clone, Debug)]
pub enum Verdict {
    /// Accepted, with what that login reported.
    Accepted(Arc<Reported>),
    /// Refused with this ErrorResponse (sent to the client as is).
    Refused(Bytes),
}

/// What a login with a client's settings reported, for the client's own greeting.
#[derive(Debug, Default)]
pub struct Reported {
    /// ParameterStatus values.
    pub params: Vec<(String, String)>,
    /// NoticeResponse messages (PostgreSQL warns of a truncated `application_name`, say).
    pub notices: Vec<Bytes>,
}

/// Verdicts by settings, kept in each [`ServerPool`].
#[derive(Debug, Default)]
pub struct SettingsChecks {
    verdicts: Mutex<HashMap<Vec<(String, String)>, Verdict>>,
}

impl SettingsChecks {
    fn get(&self, key: &[(String, String)]) -> Option<Verdict> {
        self.verdicts.lock().unwrap_or_else(PoisonError::into_inner).get(key).cloned()
    }

    fn put(&self, key: Vec<(String, String)>, verdict: Verdict) {
        let mut map = self.verdicts.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_CHECKS {
            map.clear();
        }
        map.insert(key, verdict);
    }
}

/// Startup settings worth asking the server about: those PostgreSQL would apply, minus
/// values identical to what the server reports already and a plain `application_name`
/// (any short printable ASCII text is reported back as sent; the server replaces other bytes
/// with `?` and truncates at 63).
pub fn to_check(settings: &[(String, String)], server: &[(String, String)]) -> Vec<(String, String)> {
    settings
        .iter()
        .filter(|(name, value)| !(super::state::is_identity(name) || name == "application_name" && plain_name(value)))
        .filter(|(name, value)| !server.iter().any(|(n, v)| n == name && v == value))
        .cloned()
        .collect()
}

/// Text PostgreSQL keeps as it is in `application_name`.
fn plain_name(value: &str) -> bool {
    value.len() < 64 && value.bytes().all(|b| (b' '..=b'~').contains(&b))
}

/// The primary's verdict on `settings` (see [`to_check`]), from the pool's cache or from a
/// login made for it. `None` when there is nothing to check, or the check login failed for
/// another reason than the settings (the client then gets its settings as it sent them).
pub async fn check(
    pool: &ServerPool,
    addr: &NodeAddr,
    settings: Vec<(String, String)>,
    cred: &ServerCredential,
    timeout: Duration,
    tls: &ServerTls,
) -> Option<Verdict> {
    if settings.is_empty() {
        return None;
    }
    if let Some(v) = pool.settings_checks.get(&settings) {
        return Some(v);
    }
    let verdict = match connect::connect(addr, &pool.key.user, &pool.key.database, &settings, cred, timeout, tls).await
    {
        // The connection closes when dropped; it carries this client's settings, which
        // pooled connections get by replay instead.
        Ok(startup) => Verdict::Accepted(Arc::new(Reported { params: startup.params, notices: startup.notices })),
        Err(ConnectError::Server { code, frame, .. }) if refuses_settings(&code) => Verdict::Refused(frame),
        Err(e) => {
            tracing::warn!(error = %e, "could not check the client's startup settings with the server");
            return None;
        }
    };
    pool.settings_checks.put(settings, verdict.clone());
    Some(verdict)
}

/// SQLSTATEs with which PostgreSQL refuses a login over its settings (invalid value,
/// unknown parameter, not settable, permission), as opposed to the login itself.
fn refuses_settings(code: &str) -> bool {
    matches!(code, "22023" | "42704" | "55P02" | "42501" | "22P02")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn only_settings_that_differ_are_checked() {
        let server = pairs(&[("client_encoding", "UTF8"), ("DateStyle", "ISO, MDY")]);
        let client = pairs(&[
            ("user", "u"),
            ("database", "d"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "iso, dmy"),
            ("application_name", "x"),
            ("search_path", "a"),
            ("_pq_.x", "1"),
        ]);
        assert_eq!(to_check(&client, &server), pairs(&[("DateStyle", "iso, dmy"), ("search_path", "a")]));
        assert!(to_check(&pairs(&[("client_encoding", "UTF8")]), &server).is_empty());
        let long = "x".repeat(64);
        let odd = pairs(&[("application_name", &long), ("application_name", "café")]);
        assert_eq!(to_check(&odd, &server), odd, "the server truncates or cleans these");
    }

    #[test]
    fn cache_starts_over_when_full() {
        let checks = SettingsChecks::default();
        for i in 0..MAX_CHECKS + 1 {
            checks.put(pairs(&[("search_path", &i.to_string())]), Verdict::Refused(Bytes::new()));
        }
        assert!(checks.get(&pairs(&[("search_path", "0")])).is_none());
        assert!(checks.get(&pairs(&[("search_path", &MAX_CHECKS.to_string())])).is_some());
    }
}
