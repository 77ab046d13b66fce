//! Stored password secrets, as PostgreSQL keeps them in `pg_authid.rolpassword`.
//!
//! A secret comes from the `[[proxy.users]]` list of the configuration or from
//! the servers' own catalog through `auth_query` (see [`super::SecretStore`]).
//! [`super::authenticate_client`] checks a client against it, and its kind
//! decides what the proxy can later present to the servers
//! ([`super::ServerCredential`]).

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// SCRAM iteration count the proxy uses when it derives a secret itself
/// (PostgreSQL's default `scram_iterations`).
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// Salt length the proxy uses when it derives a secret itself (PostgreSQL's).
pub const DEFAULT_SALT_LEN: usize = 16;

/// A user's password secret in one of the forms PostgreSQL stores.
///
/// `Debug` is written by hand so that logging a secret never prints it.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// A clear-text password (only ever from the proxy's own configuration).
    Plain(String),
    /// `"md5"` followed by 32 lower-case hex digits of `md5(password || user)`.
    Md5(String),
    /// A SCRAM-SHA-256 verifier.
    Scram(ScramSecret),
}

impl Secret {
    /// Reads a `pg_authid`-style string the way PostgreSQL's
    /// `get_password_type` does: an `md5` hash if it is `md5` plus 32 hex
    /// digits, a SCRAM secret if it parses as one, else a plain password.
    pub fn parse(s: &str) -> Secret {
        if is_md5_hash(s) {
            return Secret::Md5(s.to_ascii_lowercase());
        }
        match ScramSecret::parse(s) {
            Some(scram) => Secret::Scram(scram),
            None => {
                if s.starts_with("SCRAM-SHA-256$") {
                    tracing::warn!("a password looks like a SCRAM secret but does not parse; using it as plain text");
                }
                Secret::Plain(s.to_owned())
            }
        }
    }

    /// Short name of the kind of secret, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Secret::Plain(_) => "plain",
            Secret::Md5(_) => "md5",
            Secret::Scram(_) => "scram-sha-256",
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret::{}(<redacted>)", self.kind())
    }
}

/// True for `md5` followed by exactly 32 hex digits.
pub fn is_md5_hash(s: &str) -> bool {
    s.len() == 35 && s.starts_with("md5") && s[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// A SCRAM-SHA-256 verifier: what a server needs to check a client's proof
/// without knowing the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramSecret {
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// PBKDF2 salt (raw bytes, base64 in the text form).
    pub salt: Vec<u8>,
    /// `H(ClientKey)`: checks the client key recovered from a proof.
    pub stored_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`: signs the server's final message.
    pub server_key: [u8; 32],
}

impl ScramSecret {
    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`
    /// (base64 salt and keys). `None` when the string is not one.
    pub fn parse(s: &str) -> Option<ScramSecret> {
        let rest = s.strip_prefix("SCRAM-SHA-256$")?;
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iterations, salt) = iter_salt.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let iterations: u32 = iterations.parse().ok().filter(|&n| n > 0)?;
        let salt = B64.decode(salt).ok().filter(|s| !s.is_empty())?;
        let stored_key = B64.decode(stored).ok()?.try_into().ok()?;
        let server_key = B64.decode(server).ok()?.try_into().ok()?;
        Some(ScramSecret { iterations, salt, stored_key, server_key })
    }

    /// Derives the secret of `password` with the given salt and iteration
    /// count, SASLprep-ing the password first as PostgreSQL does.
    pub fn derive(password: &str, salt: &[u8], iterations: u32) -> ScramSecret {
        let salted = salted_password(password.as_bytes(), salt, iterations);
        let keys = Keys::from_salted_password(&salted);
        ScramSecret { iterations, salt: salt.to_vec(), stored_key: keys.stored_key(), server_key: keys.server_key }
    }
}

impl fmt::Display for ScramSecret {
    /// The `pg_authid` text form, as `Secret::parse` reads it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

impl fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramSecret").field("iterations", &self.iterations).finish_non_exhaustive()
    }
}

/// The two keys a SCRAM client holds after hashing its password.
pub(crate) struct Keys {
    pub(crate) client_key: [u8; 32],
    pub(crate) server_key: [u8; 32],
}

impl Keys {
    pub(crate) fn from_salted_password(salted: &[u8; 32]) -> Keys {
        Keys { client_key: hmac(salted, b"Client Key"), server_key: hmac(salted, b"Server Key") }
    }

    pub(crate) fn stored_key(&self) -> [u8; 32] {
        sha256(&self.client_key)
    }
}

/// SASLprep as PostgreSQL's `pg_saslprep` applies it: a password that is not
/// valid UTF-8, or that SASLprep rejects (prohibited or unassigned code
/// points), is used as raw bytes.
pub(crate) fn saslprep(password: &[u8]) -> Vec<u8> {
    match std::str::from_utf8(password) {
        Ok(s) => match stringprep::saslprep(s) {
            Ok(p) => p.into_owned().into_bytes(),
            Err(_) => password.to_vec(),
        },
        Err(_) => password.to_vec(),
    }
}

/// `Hi(Normalize(password), salt, i)` of RFC 5802: PBKDF2-HMAC-SHA-256.
pub(crate) fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(&saslprep(password), salt, iterations, &mut out);
    out
}

/// HMAC-SHA-256.
pub(crate) fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail; the
    // fallback only exists to avoid an `expect`.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut m) => {
            m.update(data);
            m.finalize().into_bytes().into()
        }
        Err(_) => [0; 32],
    }
}

/// SHA-256.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Compares two byte strings in time independent of where they differ.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    // Secret of "pencil" from RFC 7677 (salt W22ZaJ0SNY7soEsUEjb6gQ==, 4096 iterations).
    const RFC7677: &str = "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$\
        WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";

    #[test]
    fn parses_each_kind() {
        assert_eq!(Secret::parse("hunter2"), Secret::Plain("hunter2".into()));
        let md5 = "md5ABCDEF0123456789abcdef0123456789";
        assert_eq!(Secret::parse(md5), Secret::Md5(md5.to_ascii_lowercase()));
        assert!(matches!(Secret::parse("md5abc"), Secret::Plain(_)));
        let Secret::Scram(s) = Secret::parse(RFC7677) else { panic!("not scram") };
        assert_eq!(s.iterations, 4096);
        assert_eq!(s.salt.len(), 16);
        assert_eq!(s.to_string(), RFC7677);
    }

    #[test]
    fn derives_the_rfc7677_secret() {
        let Secret::Scram(s) = Secret::parse(RFC7677) else { panic!("not scram") };
        assert_eq!(ScramSecret::derive("pencil", &s.salt, 4096), s);
    }

    #[test]
    fn broken_scram_secrets_are_plain() {
        for bad in [
            "SCRAM-SHA-256$",
            "SCRAM-SHA-256$0:W22ZaJ0SNY7soEsUEjb6gQ==$AAAA:AAAA",
            "SCRAM-SHA-256$4096:!!!$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$AAAA:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==",
            "SCRAM-SHA-256$x:W22ZaJ0SNY7soEsUEjb6gQ==$a:b",
        ] {
            assert!(matches!(Secret::parse(bad), Secret::Plain(_)), "{bad}");
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let s = format!("{:?}", Secret::parse("hunter2"));
        assert!(!s.contains("hunter2"), "{s}");
    }

    #[test]
    fn saslprep_like_postgres() {
        // Soft hyphen maps to nothing, non-ASCII space to a space.
        assert_eq!(saslprep("I\u{00AD}X".as_bytes()), b"IX");
        assert_eq!(saslprep("a\u{00A0}b".as_bytes()), b"a b");
        // Prohibited (control character) and invalid UTF-8: raw bytes.
        assert_eq!(saslprep(b"a\x07b"), b"a\x07b");
        assert_eq!(saslprep(b"\xff\xfe"), b"\xff\xfe");
    }
}
