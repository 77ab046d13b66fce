//! Applying the change stream to replicas.

pub mod session;
pub mod split;
pub mod sql;
pub mod text;
