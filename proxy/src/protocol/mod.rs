//! PostgreSQL wire protocol v3, as the proxy needs it.
//!
//! First stop of the flow `client → frontend → router → pool → server`: bytes
//! from either peer are cut into messages here ([`frame`]), the few fields the
//! proxy looks at are read without copying ([`fields`]), and the messages the
//! proxy writes itself are built here ([`build`]). The data path forwards the
//! original bytes untouched; pgwire's codec is used for the startup phase and
//! for building messages (see [`startup`], [`build`]).

pub mod build;
pub mod fields;
pub mod frame;
pub mod startup;

pub use frame::{Frame, FrameError};
