//! The load balancer's per-datagram routing decision and its Maglev table:
//! `Balancer::route` (three backends, QUIC-LB config 0 with 2-octet server
//! ids, 6-octet nonces, encrypted) for 1200-byte short-header datagrams with
//! routable CIDs and for 1200-byte client Initials with random 8-octet DCIDs
//! (the Maglev path); then `Maglev::new` build time for 10 backends
//! (65,537 slots) and `Maglev::lookup_index` throughput.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lb::balancer::{Backend, Balancer, Decision};
use lb::maglev::Maglev;
use lb_protocol::{CidEncoder, LbConfig};

const TABLE_SIZE: usize = 65_537;
const DATAGRAM_LEN: usize = 1200;
/// Distinct datagrams cycled through per iteration batch.
const BATCH: usize = 1024;

fn config() -> LbConfig {
    LbConfig::new(0, 2, 6, Some([7u8; 16])).unwrap()
}

/// Deterministic splitmix64, so runs are comparable without a rand dependency.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn balancer() -> Balancer {
    let mut b = Balancer::new(vec![config()], TABLE_SIZE).unwrap();
    for n in 1..=3u8 {
        b.upsert(Backend {
            name: format!("cm-{n}"),
            server_id: vec![0, n],
            addr: SocketAddr::from(([127, 0, 0, 1], 9000 + u16::from(n))),
            draining: false,
            packets: Default::default(),
            bytes: Default::default(),
        });
    }
    b
}

/// Short-header datagrams whose CIDs carry the server ids of the backends.
fn short_datagrams() -> Vec<Vec<u8>> {
    let encoders: Vec<CidEncoder> = (1..=3u8)
        .map(|n| CidEncoder::new(config(), &[0, n]).unwrap())
        .collect();
    (0..BATCH)
        .map(|i| {
            let mut d = vec![0x40];
            d.extend_from_slice(&encoders[i % encoders.len()].generate());
            d.resize(DATAGRAM_LEN, 0xaa);
            d
        })
        .collect()
}

/// Client Initials: version 1, random 8-octet DCID, empty SCID.
fn initial_datagrams() -> Vec<Vec<u8>> {
    let mut rng = SplitMix(0x5eed);
    (0..BATCH)
        .map(|_| {
            let mut d = vec![0xc0];
            d.extend_from_slice(&1u32.to_be_bytes());
            d.push(8);
            d.extend_from_slice(&rng.next().to_be_bytes());
            d.push(0);
            d.resize(DATAGRAM_LEN, 0);
            d
        })
        .collect()
}

fn route_all(b: &Balancer, datagrams: &[Vec<u8>]) -> usize {
    let mut forwarded = 0;
    for d in datagrams {
        if let Decision::Forward { index, .. } = b.route(black_box(d)) {
            forwarded += index + 1;
        }
    }
    forwarded
}

fn route(c: &mut Criterion) {
    let b = balancer();
    let short = short_datagrams();
    let initials = initial_datagrams();
    for set in [&short, &initials] {
        for d in set.iter() {
            assert!(
                matches!(b.route(d), Decision::Forward { .. }),
                "benchmark datagram not forwarded: {:?}",
                b.route(d)
            );
        }
    }

    let mut group = c.benchmark_group("lb/route");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(BenchmarkId::new("short_routable_cid", BATCH), |bench| {
        bench.iter(|| route_all(&b, &short))
    });
    group.bench_function(BenchmarkId::new("initial_maglev", BATCH), |bench| {
        bench.iter(|| route_all(&b, &initials))
    });
    group.finish();
}

fn maglev(c: &mut Criterion) {
    let backends: Vec<(String, u32)> = (1..=10).map(|n| (format!("cm-{n}"), 1)).collect();
    let mut group = c.benchmark_group("lb/maglev");

    group.throughput(Throughput::Elements(TABLE_SIZE as u64));
    group.bench_function(BenchmarkId::new("build_10_backends", TABLE_SIZE), |bench| {
        bench.iter(|| Maglev::new(black_box(&backends), TABLE_SIZE).unwrap())
    });

    let table = Maglev::new(&backends, TABLE_SIZE).unwrap();
    let mut rng = SplitMix(0xcafe);
    let keys: Vec<[u8; 8]> = (0..BATCH).map(|_| rng.next().to_be_bytes()).collect();
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(BenchmarkId::new("lookup_index", BATCH), |bench| {
        bench.iter(|| {
            let mut sum = 0usize;
            for k in &keys {
                sum += table.lookup_index(black_box(k)).unwrap();
            }
            sum
        })
    });
    group.finish();
}

criterion_group!(benches, route, maglev);
criterion_main!(benches);
