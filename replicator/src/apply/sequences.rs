//! Keeping sequence values of replicas in step with the primary.
//!
//! Place in the data flow: beside the change stream. Logical decoding does
//! not carry `nextval()` calls, yet a replica promoted to primary must not
//! hand out numbers already used; so a periodic task copies every sequence's
//! `last_value` from the primary to each replica (`setval`). Values only
//! lag: promotion adds a margin on top (witness group's job).

use std::time::Duration;

use tokio_postgres::Config;
use tokio_util::sync::CancellationToken;

use super::session;
use crate::copy::{read_sequences, write_sequences};

/// Copies the sequence values of `database` from the primary to each replica
/// once; returns how many were set per replica, in order.
pub async fn sync_sequences_once(
    primary: &Config,
    replicas: &[(String, Config)],
    database: &str,
) -> Result<Vec<usize>, tokio_postgres::Error> {
    let primary = session::connect(primary, database, "tandem-sequences").await?;
    let values = read_sequences(&primary).await?;
    let mut counts = Vec::with_capacity(replicas.len());
    for (_, replica) in replicas {
        let writer = session::connect_writer(replica, database).await?;
        counts.push(write_sequences(&writer, &values).await?);
    }
    Ok(counts)
}

/// Runs [`sync_sequences_once`] every `interval` until `shutdown`; failures
/// (a replica down, the primary restarting) are logged and retried next time.
pub async fn run_sequence_sync(
    primary: Config,
    replicas: Vec<(String, Config)>,
    database: String,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match sync_sequences_once(&primary, &replicas, &database).await {
            Ok(counts) => tracing::debug!(database = %database, ?counts, "sequences synced"),
            Err(e) => {
                tracing::warn!(database = %database, error = %e, "sequence sync failed; retrying next round")
            }
        }
    }
}
