//! Authentication: the proxy as a server towards clients, and as a client
//! towards PostgreSQL servers.
//!
//! In the flow `client → frontend → router → pool → server`, the frontend
//! calls [`SecretStore::lookup`] for the user of a StartupMessage and then
//! [`authenticate_client`]; what that yields, a [`ServerCredential`], is what
//! the pool presents to servers in [`crate::pool::connect`]. Secrets come from
//! the configuration or from the servers themselves through `auth_query`
//! ([`store`]); with SCRAM the `ClientKey` recovered from the client's proof
//! logs in to the servers ([`scram`]), with md5 the stored hash does ([`md5`]). In
//! pass-through mode ([`passthrough`]) the primary authenticates the client instead.

pub mod exchange;
pub mod md5;
pub mod passthrough;
pub mod scram;
pub mod secret;
pub mod store;

pub use exchange::authenticate_client;
pub use secret::{ScramSecret, Secret};
pub use store::SecretStore;

use crate::protocol::build::sqlstate;

/// What the proxy presents to servers on behalf of a logged-in client.
#[derive(Clone)]
pub enum ServerCredential {
    /// Nothing: the servers must trust the proxy for this user.
    None,
    /// A clear-text password (from the proxy's configuration); answers every method.
    Password(String),
    /// An `md5...` secret; answers md5 challenges (pass-the-hash).
    Md5Hash(String),
    /// A SCRAM `ClientKey` recovered from the client's proof; answers
    /// SCRAM-SHA-256 of servers holding the same secret.
    ScramClientKey {
        /// The client's `ClientKey`.
        client_key: [u8; 32],
        /// The matching `ServerKey`, when known, to check the server's signature.
        server_key: Option<[u8; 32]>,
    },
}

impl ServerCredential {
    /// Short name of the kind of credential, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerCredential::None => "none",
            ServerCredential::Password(_) => "password",
            ServerCredential::Md5Hash(_) => "md5-hash",
            ServerCredential::ScramClientKey { .. } => "scram-client-key",
        }
    }
}

impl std::fmt::Debug for ServerCredential {
    /// Names the kind only: credentials never reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerCredential::{}", self.kind())
    }
}

/// Why a login failed. `Display` is safe to send to the client.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong password, unknown user, or a secret that cannot serve the
    /// method; deliberately indistinguishable to the client.
    #[error("password authentication failed for user \"{user}\"")]
    PasswordFailed {
        /// The role the client asked for.
        user: String,
    },
    /// Authentication cannot proceed for another reason (a server demands a
    /// method the proxy cannot answer, no credential for a server).
    #[error("{0}")]
    Rejected(String),
    /// The peer broke the protocol.
    #[error("{0}")]
    Protocol(String),
    /// The peer hung up or the socket failed.
    #[error("connection lost during authentication: {0}")]
    Io(#[from] std::io::Error),
    /// `auth_query` could not be run. `detail` is for the proxy's log only.
    #[error("could not look up the credentials of user \"{user}\"")]
    Lookup {
        /// The role being looked up.
        user: String,
        /// What went wrong, for the log.
        detail: String,
    },
}

impl AuthError {
    /// SQLSTATE for the ErrorResponse the caller sends.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            AuthError::PasswordFailed { .. } => sqlstate::INVALID_PASSWORD,
            AuthError::Rejected(_) => sqlstate::INVALID_AUTHORIZATION,
            AuthError::Protocol(_) => sqlstate::PROTOCOL_VIOLATION,
            AuthError::Io(_) | AuthError::Lookup { .. } => sqlstate::CONNECTION_FAILURE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_and_messages() {
        let e = AuthError::PasswordFailed { user: "bob".into() };
        assert_eq!(e.sqlstate(), "28P01");
        assert_eq!(e.to_string(), "password authentication failed for user \"bob\"");
        assert_eq!(AuthError::Protocol("x".into()).sqlstate(), "08P01");
        assert_eq!(AuthError::Rejected("x".into()).sqlstate(), "28000");
        let io = AuthError::from(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        assert_eq!(io.sqlstate(), "08006");
        let lookup = AuthError::Lookup { user: "bob".into(), detail: "secret detail".into() };
        assert!(!lookup.to_string().contains("secret detail"));
    }

    #[test]
    fn debug_hides_credentials() {
        let s = format!("{:?}", ServerCredential::Password("hunter2".into()));
        assert!(!s.contains("hunter2"), "{s}");
    }
}
