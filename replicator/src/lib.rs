//! Tandem replicator.
