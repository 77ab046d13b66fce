//! SCRAM-SHA-256 (RFC 5802, RFC 7677) on both sides of the proxy, sans I/O.
//!
//! [`ScramServer`] checks a client during login (driven by
//! [`super::authenticate_client`]); on success it hands back the client's
//! `ClientKey`, recovered from the proof as
//! `ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage)` and checked by
//! `H(ClientKey) == StoredKey`. [`ScramClient`] logs the proxy in to a server
//! (driven by [`crate::pool::connect`]) with either a password or such a
//! recovered `ClientKey`, which is what lets a drop-in proxy log in to servers
//! without a password list.
//!
//! Hand-written: postgres-protocol's `ScramSha256` is a client that only
//! accepts a password, and pgwire's server side is bound to its own server
//! framework and cannot return the recovered `ClientKey`. Only channel-binding
//! flags `n` and `y` are supported: the proxy offers plain `SCRAM-SHA-256`,
//! never `-PLUS`, and talks plain TCP to servers.
//!
//! Each side is a small typestate: a step consumes the state and returns the
//! next one together with the message to send, so a message cannot be handled
//! twice or out of order.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::secret::{ct_eq, hmac, salted_password, sha256, Keys, ScramSecret};

/// The only SASL mechanism the proxy offers and uses.
pub const MECHANISM: &str = "SCRAM-SHA-256";

/// Raw nonce length before base64, as PostgreSQL uses (`SCRAM_RAW_NONCE_LEN`).
const NONCE_LEN: usize = 18;

/// Highest PBKDF2 iteration count the proxy computes for a server. The work
/// runs on the connecting task; the bound keeps a misconfigured or hostile
/// server from stalling it for minutes.
pub const MAX_ITERATIONS: u32 = 10_000_000;

/// A SCRAM exchange cannot go on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    /// A message does not follow the RFC 5802 grammar.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client asked for something the proxy does not offer (channel
    /// binding, an authorization identity, a mandatory extension).
    #[error("unsupported SCRAM feature: {0}")]
    Unsupported(&'static str),
    /// The channel-binding data of client-final does not repeat client-first's header.
    #[error("SCRAM channel binding check failed")]
    ChannelBindingMismatch,
    /// The nonce of a later message does not continue the earlier one.
    #[error("SCRAM nonce mismatch")]
    NonceMismatch,
    /// The client's proof is wrong: wrong password (or no such user).
    #[error("SCRAM proof is invalid")]
    InvalidProof,
    /// The server's signature is wrong: it does not hold this user's secret.
    #[error("server's SCRAM signature is invalid")]
    InvalidServerSignature,
    /// The server ended the exchange with `e=...`.
    #[error("server reported SCRAM error: {0}")]
    ServerError(String),
    /// The server asks for more PBKDF2 iterations than [`MAX_ITERATIONS`].
    #[error("server asks for {0} SCRAM iterations, more than the proxy computes")]
    TooManyIterations(u32),
}

fn random_nonce() -> String {
    let raw: [u8; NONCE_LEN] = rand::random();
    B64.encode(raw)
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, (x, y)) in out.iter_mut().zip(a.iter().zip(b)) {
        *o = x ^ y;
    }
    out
}

/// A nonce is printable ASCII without commas (RFC 5802 `printable`).
fn valid_nonce(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// Splits `attr=value` off the front of `s`, checking the attribute letter.
fn attr<'a>(s: &'a str, name: char, what: &'static str) -> Result<&'a str, ScramError> {
    let mut chars = s.chars();
    if chars.next() != Some(name) || chars.next() != Some('=') {
        return Err(ScramError::Malformed(what));
    }
    Ok(&s[2..])
}

fn utf8(msg: &[u8]) -> Result<&str, ScramError> {
    std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))
}

// ---------------------------------------------------------------- server side

/// The proxy's side of a client login, before client-first.
pub struct ScramServer {
    secret: ScramSecret,
    server_nonce: String,
    /// Set for a mock exchange: the user has no usable SCRAM secret, and the
    /// exchange runs to the end only so as not to reveal that.
    doomed: bool,
}

/// The proxy's side after it has sent server-first.
pub struct ScramServerFirstSent {
    secret: ScramSecret,
    doomed: bool,
    gs2_header: String,
    full_nonce: String,
    auth_message_prefix: String,
}

/// A client that proved it knows the password.
#[derive(Debug)]
pub struct ScramServerSuccess {
    /// `server-final-message` (`v=...`) for AuthenticationSASLFinal.
    pub server_final: Vec<u8>,
    /// The client's `ClientKey`, recovered from its proof.
    pub client_key: [u8; 32],
}

impl ScramServer {
    /// Starts verifying a client against `secret` with a fresh random nonce.
    pub fn new(secret: ScramSecret) -> Self {
        ScramServer { secret, server_nonce: random_nonce(), doomed: false }
    }

    /// Starts an exchange that looks normal but always fails with
    /// [`ScramError::InvalidProof`], for a user with no usable SCRAM secret
    /// (as PostgreSQL's mock authentication). `salt` should be stable per
    /// user so that repeated attempts look like a real user's.
    pub fn mock(salt: Vec<u8>) -> Self {
        let secret = ScramSecret {
            iterations: super::secret::DEFAULT_ITERATIONS,
            salt,
            stored_key: [0; 32],
            server_key: [0; 32],
        };
        ScramServer { secret, server_nonce: random_nonce(), doomed: true }
    }

    /// Uses a fixed server nonce (test vectors).
    #[cfg(test)]
    fn with_nonce(mut self, nonce: &str) -> Self {
        self.server_nonce = nonce.to_owned();
        self
    }

    /// Reads `client-first-message`, returns the next state and
    /// `server-first-message` for AuthenticationSASLContinue.
    pub fn handle_client_first(self, msg: &[u8]) -> Result<(ScramServerFirstSent, Vec<u8>), ScramError> {
        let msg = utf8(msg)?;
        // gs2-header = gs2-cbind-flag "," [ authzid ] ","
        let (flag, rest) = msg.split_once(',').ok_or(ScramError::Malformed("missing GS2 header"))?;
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => {
                return Err(ScramError::Unsupported("channel binding (SCRAM-SHA-256-PLUS is not offered)"))
            }
            _ => return Err(ScramError::Malformed("invalid channel binding flag")),
        }
        let (authzid, bare) = rest.split_once(',').ok_or(ScramError::Malformed("missing GS2 header"))?;
        if !authzid.is_empty() {
            if authzid.starts_with("a=") {
                return Err(ScramError::Unsupported("authorization identity"));
            }
            return Err(ScramError::Malformed("invalid GS2 header"));
        }
        let gs2_header = msg[..msg.len() - bare.len()].to_owned();

        // client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
        if bare.starts_with("m=") {
            return Err(ScramError::Unsupported("mandatory extension"));
        }
        let mut parts = bare.split(',');
        // The user name is ignored, as PostgreSQL does: the startup packet's counts.
        attr(parts.next().unwrap_or(""), 'n', "expected user name")?;
        let client_nonce = attr(parts.next().unwrap_or(""), 'r', "expected nonce")?;
        if !valid_nonce(client_nonce) {
            return Err(ScramError::Malformed("invalid nonce"));
        }

        let full_nonce = format!("{client_nonce}{}", self.server_nonce);
        let server_first = format!("r={full_nonce},s={},i={}", B64.encode(&self.secret.salt), self.secret.iterations);
        let auth_message_prefix = format!("{bare},{server_first},");
        let next = ScramServerFirstSent {
            secret: self.secret,
            doomed: self.doomed,
            gs2_header,
            full_nonce,
            auth_message_prefix,
        };
        Ok((next, server_first.into_bytes()))
    }
}

impl ScramServerFirstSent {
    /// Reads `client-final-message` and checks it. On success returns
    /// `server-final-message` and the recovered `ClientKey`.
    pub fn handle_client_final(self, msg: &[u8]) -> Result<ScramServerSuccess, ScramError> {
        let msg = utf8(msg)?;
        // client-final-message = channel-binding "," nonce ["," extensions] "," proof
        let proof_at = msg.rfind(",p=").ok_or(ScramError::Malformed("missing proof"))?;
        let without_proof = &msg[..proof_at];
        let proof_b64 = &msg[proof_at + 3..];

        let mut parts = without_proof.split(',');
        let cbind = attr(parts.next().unwrap_or(""), 'c', "expected channel binding")?;
        let cbind = B64.decode(cbind).map_err(|_| ScramError::Malformed("channel binding is not base64"))?;
        if cbind != self.gs2_header.as_bytes() {
            return Err(ScramError::ChannelBindingMismatch);
        }
        let nonce = attr(parts.next().unwrap_or(""), 'r', "expected nonce")?;
        if !ct_eq(nonce.as_bytes(), self.full_nonce.as_bytes()) {
            return Err(ScramError::NonceMismatch);
        }
        let proof: [u8; 32] =
            B64.decode(proof_b64).ok().and_then(|p| p.try_into().ok()).ok_or(ScramError::Malformed("invalid proof"))?;

        let auth_message = format!("{}{without_proof}", self.auth_message_prefix);
        let client_signature = hmac(&self.secret.stored_key, auth_message.as_bytes());
        let client_key = xor(&proof, &client_signature);
        if self.doomed || !ct_eq(&sha256(&client_key), &self.secret.stored_key) {
            return Err(ScramError::InvalidProof);
        }
        let server_signature = hmac(&self.secret.server_key, auth_message.as_bytes());
        Ok(ScramServerSuccess { server_final: format!("v={}", B64.encode(server_signature)).into_bytes(), client_key })
    }
}

// ---------------------------------------------------------------- client side

/// What the proxy proves itself with when it logs in to a server.
#[derive(Clone)]
pub enum ScramCredential {
    /// A password: SaltedPassword is derived with the server's salt and iteration count.
    Password(String),
    /// A `ClientKey` recovered from a client's proof. It works with any salt
    /// the server announces, as long as the server's StoredKey is `H(client_key)`.
    ClientKey {
        /// The client's `ClientKey`.
        client_key: [u8; 32],
        /// The matching `ServerKey` when the proxy knows the secret, to check the server.
        server_key: Option<[u8; 32]>,
    },
}

/// The proxy's side of a server login, after client-first.
pub struct ScramClient {
    credential: ScramCredential,
    client_nonce: String,
    client_first_bare: String,
}

/// The proxy's side after it has sent client-final.
pub struct ScramClientFinalSent {
    expected_server_signature: Option<[u8; 32]>,
}

impl ScramClient {
    /// Starts a login with a fresh nonce; returns the state and
    /// `client-first-message` for SASLInitialResponse.
    pub fn new(credential: ScramCredential) -> (Self, Vec<u8>) {
        Self::with_nonce(credential, random_nonce())
    }

    /// Starts a login with a given nonce (test vectors use it).
    pub fn with_nonce(credential: ScramCredential, client_nonce: String) -> (Self, Vec<u8>) {
        // The user name is left empty, as libpq does: the server takes the
        // startup packet's.
        let client_first_bare = format!("n=,r={client_nonce}");
        let first = format!("n,,{client_first_bare}").into_bytes();
        (ScramClient { credential, client_nonce, client_first_bare }, first)
    }

    /// Reads `server-first-message`, returns the next state and
    /// `client-final-message` for SASLResponse.
    pub fn handle_server_first(self, msg: &[u8]) -> Result<(ScramClientFinalSent, Vec<u8>), ScramError> {
        let server_first = utf8(msg)?;
        if server_first.starts_with("m=") {
            return Err(ScramError::Unsupported("mandatory extension"));
        }
        let mut parts = server_first.split(',');
        let nonce = attr(parts.next().unwrap_or(""), 'r', "expected nonce")?;
        let salt = attr(parts.next().unwrap_or(""), 's', "expected salt")?;
        let iterations = attr(parts.next().unwrap_or(""), 'i', "expected iteration count")?;
        if !valid_nonce(nonce) || !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(ScramError::NonceMismatch);
        }
        let salt = B64.decode(salt).map_err(|_| ScramError::Malformed("salt is not base64"))?;
        if salt.is_empty() {
            return Err(ScramError::Malformed("empty salt"));
        }
        let iterations: u32 =
            iterations.parse().ok().filter(|&i| i > 0).ok_or(ScramError::Malformed("invalid iteration count"))?;

        let (client_key, server_key) = match &self.credential {
            ScramCredential::Password(password) => {
                if iterations > MAX_ITERATIONS {
                    return Err(ScramError::TooManyIterations(iterations));
                }
                let keys = Keys::from_salted_password(&salted_password(password.as_bytes(), &salt, iterations));
                (keys.client_key, Some(keys.server_key))
            }
            // With only the ClientKey (the client's secret came from the user
            // list without a ServerKey), the server's signature cannot be
            // checked: ServerKey derives from SaltedPassword, which the proxy
            // never saw. The proxy then trusts that it reached the configured
            // server; the server still verifies the proxy fully.
            ScramCredential::ClientKey { client_key, server_key } => (*client_key, *server_key),
        };

        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let stored_key = sha256(&client_key);
        let proof = xor(&client_key, &hmac(&stored_key, auth_message.as_bytes()));
        let expected_server_signature = server_key.map(|k| hmac(&k, auth_message.as_bytes()));
        let client_final = format!("{without_proof},p={}", B64.encode(proof)).into_bytes();
        Ok((ScramClientFinalSent { expected_server_signature }, client_final))
    }
}

impl ScramClientFinalSent {
    /// Reads `server-final-message` and checks the server's signature when
    /// the `ServerKey` is known.
    pub fn handle_server_final(self, msg: &[u8]) -> Result<(), ScramError> {
        let msg = utf8(msg)?;
        if let Some(err) = msg.strip_prefix("e=") {
            return Err(ScramError::ServerError(err.to_owned()));
        }
        let sig_b64 = attr(msg.split(',').next().unwrap_or(""), 'v', "expected verifier")?;
        let sig = B64.decode(sig_b64).map_err(|_| ScramError::Malformed("verifier is not base64"))?;
        match self.expected_server_signature {
            Some(expected) if !ct_eq(&sig, &expected) => Err(ScramError::InvalidServerSignature),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
#[path = "scram_tests.rs"]
mod tests;
