//! Routing: which node serves a statement.

pub mod classify;
