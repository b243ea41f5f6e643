//! The library side of `longlink-bench`: scenarios other programs run too.
//! The chaos run ([`chaos`]) is called by the `longlink-bench chaos`
//! subcommand and by the end-to-end test `tests/chaos.rs`. The simulated
//! user ([`user`]: log in, close) is here too, so the end-to-end tests
//! check the tool's own close path.
//! [`core_sim`] loads one core with millions of simulated sessions (the
//! `core-sim` binary); [`procstat`] reads what processes cost; [`ports`]
//! chooses loopback ports for the processes a run starts.

pub mod chaos;
pub mod core_sim;
pub mod ports;
pub mod procstat;
pub mod user;
