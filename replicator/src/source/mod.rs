//! The source side of the replicator: everything that talks to the primary.
//!
//! - `conn`: replication connection on the raw protocol (startup, auth, commands);
//! - `stream`: the CopyBoth phase (XLogData in, standby status updates out);
//! - `slot`: slot creation with an exported snapshot held for the initial copy;
//! - `primary`: checks, publication, slot state, `synchronous_standby_names`;
//! - `progress`: which positions may be reported, per mode;
//! - `pipeline`: stream → decoder → change log loop of one database.

pub mod conn;
pub mod error;
pub mod pipeline;
pub mod primary;
pub mod progress;
pub mod slot;
pub mod stream;
pub(crate) mod wire;

pub use conn::{CreatedSlot, ReplicationConnection, SimpleRow, SystemInfo};
pub use error::{ServerError, SourceError};
pub use pipeline::{stream_database, AppliedLsn, ChangeSink, StreamOptions, StreamStats};
pub use progress::FlushTracker;
pub use slot::HeldSnapshot;
pub use stream::{Feedback, ReplicationStream, StreamEvent};
