//! Tandem replicator.

pub mod changelog;
