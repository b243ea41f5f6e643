//! The core's routing table (`im_core::routing::RoutingTable`) at scale:
//! `bind` of N sessions into an empty table, `full` and `best` lookups of
//! random bare JIDs in a table of N, and `unbind` of all N sessions; plus the
//! resident memory per entry (VmRSS from /proc/self/status before and after
//! filling a table of N entries), printed to stderr.
//!
//! N is 100,000 by default. Set `LONGLINK_BENCH_ROUTES` to change it, e.g.
//! `LONGLINK_BENCH_ROUTES=10000000 cargo bench -p im-core` for 10 million
//! routes (needs several GiB of memory and a few minutes).
//!
//! Entries are bare JIDs `user{i}@example.org` with resource `phone`, spread
//! over 8 CM nodes, session id `i`.

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use im_core::routing::{NodeId, RoutingTable};

const DEFAULT_ROUTES: usize = 100_000;
const NODES: usize = 8;
const RESOURCE: &str = "phone";
/// Lookups per measured iteration.
const LOOKUPS: usize = 10_000;

fn routes() -> usize {
    match std::env::var("LONGLINK_BENCH_ROUTES") {
        Ok(v) => v
            .trim()
            .replace('_', "")
            .parse()
            .expect("LONGLINK_BENCH_ROUTES must be a positive integer"),
        Err(_) => DEFAULT_ROUTES,
    }
}

fn node_of(i: usize) -> NodeId {
    (i % NODES) as NodeId
}

fn bare(i: usize) -> String {
    format!("user{i}@example.org")
}

/// Resident set size in bytes, from /proc/self/status (None off Linux).
fn vm_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Fills a table without keeping any key strings around (so that the RSS
/// delta is the table's own memory).
fn fill_in_place(n: usize) -> RoutingTable {
    let mut table = RoutingTable::new();
    let mut name = String::new();
    for i in 0..n {
        name.clear();
        write!(name, "user{i}@example.org").unwrap();
        table.bind(&name, RESOURCE, node_of(i), i as u64, true, 0);
    }
    table
}

fn fill(bares: &[String]) -> RoutingTable {
    let mut table = RoutingTable::new();
    for (i, b) in bares.iter().enumerate() {
        table.bind(b, RESOURCE, node_of(i), i as u64, true, 0);
    }
    table
}

/// xorshift64*, deterministic lookup order without a rand dependency.
fn pseudo_random_indices(n: usize, count: usize) -> Vec<usize> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..count)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
        })
        .collect()
}

fn routing(c: &mut Criterion) {
    let n = routes();
    assert!(n > 0, "LONGLINK_BENCH_ROUTES must be positive");

    // Memory first, before anything else has grown the heap.
    let before = vm_rss();
    let table = fill_in_place(n);
    let after = vm_rss();
    assert_eq!(table.len(), n);
    match (before, after) {
        (Some(before), Some(after)) => eprintln!(
            "im_core/routing: {n} entries: VmRSS {} -> {} KiB, {:.1} bytes per entry",
            before / 1024,
            after / 1024,
            after.saturating_sub(before) as f64 / n as f64
        ),
        _ => eprintln!("im_core/routing: VmRSS not available on this system"),
    }

    // Lookups on that table.
    let probes: Vec<String> = pseudo_random_indices(n, LOOKUPS)
        .into_iter()
        .map(bare)
        .collect();
    let mut group = c.benchmark_group("im_core/routing");
    group.throughput(Throughput::Elements(LOOKUPS as u64));
    group.bench_function(BenchmarkId::new("full", n), |b| {
        b.iter(|| {
            let mut found = 0usize;
            for p in &probes {
                found += usize::from(table.full(black_box(p), RESOURCE).is_some());
            }
            assert_eq!(found, LOOKUPS);
            found
        })
    });
    group.bench_function(BenchmarkId::new("best", n), |b| {
        b.iter(|| {
            let mut found = 0usize;
            for p in &probes {
                found += table.best(black_box(p)).len();
            }
            assert_eq!(found, LOOKUPS);
            found
        })
    });
    drop(table);

    // Insert and remove: N operations per iteration.
    let bares: Vec<String> = (0..n).map(bare).collect();
    group.sample_size(10);
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function(BenchmarkId::new("bind", n), |b| {
        b.iter_batched(
            RoutingTable::new,
            |mut table| {
                for (i, bare) in bares.iter().enumerate() {
                    table.bind(black_box(bare), RESOURCE, node_of(i), i as u64, true, 0);
                }
                table
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function(BenchmarkId::new("unbind", n), |b| {
        b.iter_batched(
            || fill(&bares),
            |mut table| {
                for i in 0..n {
                    black_box(table.unbind(node_of(i), i as u64));
                }
                assert!(table.is_empty());
                table
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
