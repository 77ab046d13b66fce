//! Tandem replicator: the change stream from the primary to every replica.
//!
//! Data flow: slot (`source/`) → decoder (`decoder/`) → change log
//! (`changelog/`) → applier per replica (`apply/`). [`change`] holds the
//! decoded transactions that travel along it.

pub mod apply;
pub mod change;
pub mod changelog;
pub mod copy;
pub mod ddl;
pub mod status;
