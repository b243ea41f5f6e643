//! Many cores, one domain (issue 15, in progress): users are partitioned
//! into shard slots by a hash of the bare JID
//! ([`cm_protocol::slots::slot_of`]), and each slot is owned by one live
//! core at a time, by a lease in PostgreSQL with a fencing epoch.
//!
//! [`leases`] decides what this core owns (sans-IO), [`lease_store`] runs
//! its rounds and the write fence in PostgreSQL, and [`driver`] connects
//! the two. The embedded single-core deployment does not use any of it.

pub mod driver;
pub mod lease_store;
pub mod leases;
#[cfg(test)]
mod tests;

pub use driver::{LeaseCommand, LeaseHandle};
pub use lease_store::{FENCE_CHECK, Fence, LeaseError, LeaseStore, check_fence};
pub use leases::{Epoch, LeaseConfig, LeaseEvent, Member, Round, RoundOutcome, SlotLeases};
