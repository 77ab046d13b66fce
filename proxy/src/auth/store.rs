//! Where users' secrets come from: the configured user list, else the
//! servers' own catalog through `auth_query` (as PgBouncer's `auth_query`),
//! so that a drop-in deployment needs no password list.
//!
//! The frontend calls [`SecretStore::lookup`] before
//! [`super::authenticate_client`]. The query runs over the control plane
//! (tokio-postgres) as the control user, not through the data path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tandem_core::NodeAddr;

use super::{AuthError, Secret};
use crate::config::{AuthMethod, ControlConfig, ProxyConfig};
use crate::server_tls::ServerTls;

/// Finds users' secrets for client authentication.
pub struct SecretStore {
    /// Secrets of `[[proxy.users]]`, by role name.
    users: HashMap<String, Secret>,
    /// The query to run for other users; `None` when lookups are off (trust
    /// auth, or an empty query).
    auth_query: Option<String>,
    /// Who runs the query, and where.
    control: ControlConfig,
    /// Bound on connecting and running the query.
    timeout: Duration,
    /// TLS towards the servers, for the auth_query connection.
    tls: Arc<ServerTls>,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore")
            .field("users", &self.users.len())
            .field("auth_query", &self.auth_query)
            .field("control_user", &self.control.user)
            .finish_non_exhaustive()
    }
}

impl SecretStore {
    /// Builds the store from the proxy configuration.
    pub fn new(cfg: &ProxyConfig, tls: Arc<ServerTls>) -> Self {
        let users = cfg.users.iter().map(|u| (u.name.clone(), Secret::parse(&u.password))).collect();
        let auth_query =
            (cfg.auth != AuthMethod::Trust && !cfg.auth_query.trim().is_empty()).then(|| cfg.auth_query.clone());
        SecretStore { users, auth_query, control: cfg.control.clone(), timeout: cfg.connect_timeout(), tls }
    }

    /// Finds `user`'s secret: configured users first, else `auth_query` on
    /// `server` as the control user (parameter `$1` = user name; the
    /// secret is the second column). `Ok(None)` when the user does not exist
    /// or has no password.
    pub async fn lookup(&self, user: &str, server: &NodeAddr) -> Result<Option<Secret>, AuthError> {
        if let Some(secret) = self.users.get(user) {
            return Ok(Some(secret.clone()));
        }
        let Some(query) = &self.auth_query else { return Ok(None) };
        let lookup_err = |detail: String| AuthError::Lookup { user: user.to_owned(), detail };
        let passwd = tokio::time::timeout(self.timeout, self.run_query(query, user, server))
            .await
            .map_err(|_| lookup_err(format!("auth_query on {server} timed out")))?
            .map_err(|e| lookup_err(format!("auth_query on {server}: {e}")))?;
        tracing::debug!(user, %server, found = passwd.is_some(), "auth_query");
        Ok(passwd.map(|p| Secret::parse(&p)))
    }

    async fn run_query(
        &self,
        query: &str,
        user: &str,
        server: &NodeAddr,
    ) -> Result<Option<String>, tokio_postgres::Error> {
        let mut pg = tokio_postgres::Config::new();
        pg.host(&server.host)
            .port(server.port)
            .user(&self.control.user)
            .dbname(&self.control.database)
            .application_name("tandem-proxy auth_query")
            .connect_timeout(self.timeout);
        if let Some(password) = &self.control.password {
            pg.password(password);
        }
        let (client, conn_task) = self.tls.connect_control(pg).await?;
        let rows = client.query(query, &[&user]).await;
        drop(client);
        // Dropping the client closes the connection; let its task finish.
        let _ = conn_task.await;
        let rows = rows?;
        match rows.first() {
            Some(row) => row.try_get::<_, Option<String>>(1),
            None => Ok(None),
        }
    }
}
