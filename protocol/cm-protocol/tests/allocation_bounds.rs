//! The decoder's memory is bounded by what the peer actually sent, never by
//! a length or count it declared: this test binary's allocator records the
//! largest allocation each thread asks for while decoding hostile input.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::Bytes;
use cm_protocol::{Frame, FrameDecoder, FrameTag, MAX_FRAME};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The system allocator, noting the largest size asked for on this thread.
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: allocations during thread teardown are not tracked.
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
}

// SAFETY: every call is forwarded unchanged to `System`.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// The largest single allocation `f` makes on this thread.
fn largest_allocation(f: impl FnOnce()) -> usize {
    LARGEST.with(|largest| largest.set(0));
    f();
    LARGEST.with(Cell::get)
}

/// What decoding one body may take: its strings and byte strings are copies
/// of at most its length; `Skipped` holds at most one `u32` per octet (with
/// a growing `Vec`'s doubling), `DeliverMany` one `u64` per octet (sized
/// once); `Welcome` at most 16 `String`s.
fn body_budget(body_len: usize) -> usize {
    8 * body_len + 16 * size_of::<String>() * 2
}

/// Bodies that declare far more than they carry.
fn liars() -> Vec<(&'static str, Vec<u8>)> {
    let huge = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
    let big = [0x80, 0x80, 0x80, 0x80, 0x01]; // 2^28
    let with = |prefix: &[u8], varint: &[u8]| {
        let mut body = prefix.to_vec();
        body.extend_from_slice(varint);
        body.extend_from_slice(b"abc");
        body
    };
    vec![
        ("hello node length u64::MAX", with(&[0], &huge)),
        ("hello node length 2^28", with(&[0], &big)),
        ("deliver payload length 2^28", with(&[11, 1], &big)),
        ("welcome mechanism count u64::MAX", with(&[1, 0, 0], &huge)),
        ("skipped count u64::MAX", with(&[20, 1], &huge)),
        ("skipped count 2^28", with(&[20, 1], &big)),
        (
            "slot-owners count u64::MAX",
            with(&[25, 1, b'c', 0x80, 0x20], &huge),
        ),
        (
            "slot-owners count 2^28",
            with(&[25, 1, b'c', 0x80, 0x20], &big),
        ),
        (
            "slot-owners cores count 2^28",
            with(&[25, 1, b'c', 0x80, 0x20, 0], &big),
        ),
        ("bind resource length 2^28", with(&[7, 1, 0, 0, 1], &big)),
        ("deliver-many count u64::MAX", with(&[28], &huge)),
        ("deliver-many count 2^28", with(&[28], &big)),
        // within MAX_FANOUT_SIDS, beyond the frame
        ("deliver-many count 16384", with(&[28], &[0x80, 0x80, 0x01])),
        ("deliver-many payload length 2^28", with(&[28, 1, 1], &big)),
    ]
}

#[test]
fn declared_lengths_and_counts_do_not_size_allocations() {
    for (what, body) in liars() {
        let len = body.len();
        let mut result = None;
        let largest = largest_allocation(|| result = Some(Frame::decode(Bytes::from(body))));
        assert!(result.is_some_and(|r| r.is_err()), "{what}");
        assert!(largest <= body_budget(len), "{what}: {largest} bytes");
    }
}

#[test]
fn random_bodies_allocate_within_their_budget() {
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..20_000 {
        let mut body = vec![0; rng.gen_range(1..64)];
        rng.fill(&mut body[..]);
        body[0] = rng.gen_range(0..FrameTag::ALL.len() as u8);
        let len = body.len();
        let body = Bytes::from(body);
        let largest = largest_allocation(|| drop(Frame::decode(body.clone())));
        assert!(largest <= body_budget(len), "{body:?}: {largest} bytes");
    }
}

#[test]
fn frame_length_above_the_limit_is_refused_before_buffering() {
    let mut decoder = FrameDecoder::new();
    decoder.push(&u32::MAX.to_be_bytes());
    let largest = largest_allocation(|| assert!(decoder.next_frame().is_err()));
    assert!(largest < 1024, "{largest} bytes");
}

#[test]
fn frame_length_within_the_limit_reserves_at_most_that_frame() {
    let mut decoder = FrameDecoder::new();
    let largest = largest_allocation(|| {
        decoder.push(&(MAX_FRAME as u32).to_be_bytes());
        assert_eq!(decoder.next_frame(), Ok(None));
    });
    // `BytesMut` may round up to twice what it was asked for.
    assert!(largest <= 2 * (4 + MAX_FRAME), "{largest} bytes");
}
