//! The proxy's link to the witness group: its write lease ([`link`]), the topology the
//! group publishes ([`topology`]) and its part in a planned switchover ([`switchover`]).
//!
//! Place in the data flow: beside `frontend → router`. A unit headed for the primary asks
//! [`WriteLease::is_valid`] first; the lease is renewed by [`link::run`] from the group. A
//! proxy without witnesses configured has an unconditional lease (it behaves as before).
//!
//! Lease math. The group commits each grant in Raft (a deposed leader cannot grant), and
//! grants none while the primary is declared failed. The proxy counts a grant of `L` ms as
//! valid until `sent + L·(1 − ρ)` on its monotonic clock, where `sent` is when it SENT the
//! renewal (so network and queueing delay only shorten the lease) and ρ = 1 % bounds the
//! clock-rate difference between the proxy and the witnesses. It renews every `L / 4` (and
//! every 100 ms after a failed attempt), so a witness leader's crash and re-election (0.5–0.75
//! s measured) passes without writes stopping. `L` = 2 s by default: the failover issue's fence
//! then waits W ≥ L·(1+ρ)/(1−ρ) + δ ≈ 2.1 s after the declaration before promoting, unless
//! the mode makes the wait unnecessary (sync mode with the standbys detached from the old
//! primary: it can acknowledge nothing).

pub mod lease;
pub mod link;
pub mod switchover;
pub mod topology;

pub use lease::WriteLease;
