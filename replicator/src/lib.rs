//! Tandem replicator.

pub mod apply;
pub mod copy;
