//! Shared by the end-to-end tests (each test file includes it as `mod
//! support`): in-process clusters ([`cluster`], re-exported here) and the
//! `longlink` binary run as real processes ([`process`]).

#![allow(dead_code)]

pub mod cluster;
pub mod process;

#[allow(unused_imports)]
pub use cluster::*;
