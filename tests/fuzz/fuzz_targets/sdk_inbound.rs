//! The client SDK's sans-IO session after a normal login, fed the server's
//! stream from the input, read as a live connection reads it, with app
//! commands, clock steps and connection events between. The first octet
//! picks the seed and stream management; then each octet below 0xe0 says
//! how many of the following octets (1 to 224) are the server's next
//! bytes, and each octet from 0xe0 up is one app step.
//!
//! The harness (`client_sdk::fuzzing`) checks on every step that what the
//! client writes frames and parses as XML, that nothing comes out after the
//! session ended, and that one step's outputs are bounded.

#![no_main]

use std::time::Duration;

use client_sdk::fuzzing::{AppStep, InboundHarness};
use libfuzzer_sys::fuzz_target;

fn app_step(op: u8) -> AppStep {
    match op - 0xe0 {
        0..=1 => AppStep::SendMessage,
        2 => AppStep::JoinRoom,
        3 => AppStep::LeaveRoom,
        4 => AppStep::Roster,
        5 => AppStep::History,
        6 => AppStep::Presence,
        7 => AppStep::Inactive,
        8 => AppStep::Wait(Duration::from_millis(500)),
        9 => AppStep::Wait(Duration::from_secs(21)),
        10 => AppStep::Wait(Duration::from_secs(120)),
        11 => AppStep::ConnectionLost,
        12 => AppStep::WriteFailed(false),
        13 => AppStep::WriteFailed(true),
        14..=17 => AppStep::Connected(None),
        18..=29 => AppStep::Connected(Some(u32::from(op) * 3 % 7)),
        30 => AppStep::Connected(Some(u32::MAX)),
        _ => AppStep::Close,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&setup, mut input)) = data.split_first() else {
        return;
    };
    let mut harness = InboundHarness::new(u64::from(setup >> 1), setup & 1 == 0);
    while let [op, rest @ ..] = input {
        if *op >= 0xe0 {
            harness.app(app_step(*op));
            input = rest;
        } else {
            let n = (usize::from(*op) + 1).min(rest.len());
            harness.server_bytes(&rest[..n]);
            input = &rest[n..];
        }
        if harness.ended() {
            break;
        }
    }
});
