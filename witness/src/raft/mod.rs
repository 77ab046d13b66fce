//! The Raft layer: openraft wired to Tandem's types, disk and network.
//!
//! Place in the data flow: a [`crate::state::Request`] proposed by the leader → replicated
//! through [`network`] to a majority → stored by [`log_store`] (redb, fsynced before openraft
//! hears it is durable) → applied by [`state_machine`] to the [`crate::state::ClusterState`]
//! on every witness. openraft does the consensus; these modules only adapt it.

// openraft's StorageError is large (it carries a backtrace and the subject); it is the type
// openraft's storage traits return, so boxing it here would only add a conversion.
#![allow(clippy::result_large_err)]

use std::io::Cursor;

pub mod log_store;
pub mod network;
pub mod state_machine;

openraft::declare_raft_types!(
    /// Tandem's Raft types: witness ids are `u64`, a witness is reached at `BasicNode::addr`
    /// (`host:port` of its HTTP API), log entries carry cluster-state requests.
    pub TypeConfig:
        D = crate::state::Request,
        R = crate::state::Outcome,
);

/// A witness's Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;
/// Witness id.
pub type WitnessId = u64;
/// Raft errors as openraft types them for this config.
pub type StorageError = openraft::StorageError<WitnessId>;

/// A redb error as openraft's storage error (the operation, then the cause).
pub(crate) fn storage_error(
    subject: openraft::ErrorSubject<WitnessId>,
    verb: openraft::ErrorVerb,
    e: impl std::fmt::Display,
) -> StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::error(e)).into()
}
