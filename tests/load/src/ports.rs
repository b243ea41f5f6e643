//! Loopback ports for the processes a run starts.
//!
//! A port found free by binding port 0 comes from the kernel's ephemeral
//! range, from which any process's next outgoing connection may take it
//! before the process it was chosen for binds it ("Address already in
//! use", seen in CI). [`free_port`] chooses below that range instead, where
//! the kernel never picks on its own, from a counter no two choices of one
//! process share and a random start (two processes choosing at once meet
//! only if their starts fall within the ports they use of each other; the
//! bind check catches ports already taken).

use std::hash::{BuildHasher, RandomState};
use std::net::{TcpListener, UdpSocket};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port chosen.
const LOW: u32 = 10_000;

/// Choices made by this process so far.
static CHOSEN: AtomicU32 = AtomicU32::new(0);

/// Where this process starts counting: random (std's per-process hash keys).
static START: LazyLock<u32> =
    LazyLock::new(|| RandomState::new().hash_one(std::process::id()) as u32);

/// A loopback port nothing listens on now, over TCP and UDP (`tcp` says
/// which the caller binds; both are checked, so it fits either).
pub fn free_port(tcp: bool) -> std::io::Result<u16> {
    let Some(high) = ephemeral_low().filter(|&h| h >= LOW + 4_000) else {
        return ephemeral(tcp);
    };
    let span = high - LOW;
    let start = *START % span;
    for _ in 0..span {
        let n = CHOSEN.fetch_add(1, Ordering::Relaxed);
        let Ok(port) = u16::try_from(LOW + start.wrapping_add(n) % span) else {
            continue;
        };
        let addr = ("127.0.0.1", port);
        if TcpListener::bind(addr).is_ok() && UdpSocket::bind(addr).is_ok() {
            return Ok(port);
        }
    }
    ephemeral(tcp)
}

/// The low end of the kernel's ephemeral port range, where it is known.
fn ephemeral_low() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A port the kernel gave from its ephemeral range (where no other is known).
fn ephemeral(tcp: bool) -> std::io::Result<u16> {
    Ok(if tcp {
        TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()
    } else {
        UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port()
    })
}
