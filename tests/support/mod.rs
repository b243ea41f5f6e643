//! Shared by the end-to-end tests (each test file includes it as `mod
//! support`): in-process clusters ([`cluster`], re-exported here) and the
//! `longlink` binary run as real processes ([`process`]), network
//! namespaces to run them in ([`netns`]), and ring chat over them ([`ring`]).

#![allow(dead_code)]

pub mod cluster;
pub mod netns;
pub mod process;
pub mod ring;

#[allow(unused_imports)]
pub use cluster::*;
