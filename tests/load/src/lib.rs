//! The library side of `longlink-bench`: scenarios other programs run too.
//! The chaos run ([`chaos`]) is called by the `longlink-bench chaos`
//! subcommand and by the end-to-end test `tests/chaos.rs`.

pub mod chaos;
