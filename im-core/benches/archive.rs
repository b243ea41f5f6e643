//! Durable archive writes (XEP-0313) through the storage thread, on both
//! backends side by side: 1000 messages submitted at once (as a busy
//! router does), which the thread group-commits, and for contrast 100
//! messages each awaited before the next (one commit per message). Every
//! commit is durable: SQLite with `synchronous=FULL`, PostgreSQL with fsync.
//!
//! PostgreSQL is measured when `LONGLINK_TEST_POSTGRES` names a server
//! (`scripts/postgres.sh start DIR PORT` prints one), e.g.
//! `LONGLINK_TEST_POSTGRES="host=127.0.0.1 port=54329 user=postgres" cargo bench -p im-core --bench archive`.

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use im_core::storage::{ArchiveEntry, Storage, Stored, open, postgres_for_tests};

const BURST: usize = 1000;
const SERIAL: usize = 100;

fn entry(n: u64) -> ArchiveEntry {
    ArchiveEntry {
        user: "alice".into(),
        id: format!("{n:016x}"),
        peer: "bob@example.org".into(),
        stamp: n as i64,
        payload: Bytes::from(format!(
            "<message xmlns='jabber:client' from='alice@example.org/phone' to='bob@example.org' type='chat' id='m{n}'><body>A message of about a hundred bytes, as people type them on phones.</body></message>"
        )),
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut backends = vec![("sqlite", None)];
    if let Some(url) = postgres_for_tests("ll_bench") {
        backends.push(("postgres", Some(url)));
    }
    let mut group = c.benchmark_group("archive");
    group.sample_size(10);
    for (name, url) in backends {
        let path = dir.path().join(name);
        let storage = Storage::start(move || open(url.as_deref(), &path, 10_000)).expect("store");
        let creds = xmpp_sasl::StoredCredentials::new("pw", 4096);
        rt.block_on(storage.call(move |db| db.add_user("alice", &creds)))
            .expect("user");
        let mut next = 0u64;
        group.throughput(Throughput::Elements(BURST as u64));
        group.bench_function(format!("{name}/group-commit"), |b| {
            b.iter(|| {
                let writes: Vec<_> = (0..BURST)
                    .map(|_| {
                        next += 1;
                        let e = entry(next);
                        storage.submit(move |db| db.archive(&e))
                    })
                    .collect();
                rt.block_on(async {
                    for w in writes {
                        assert_eq!(w.await.expect("archived"), Stored::Stored);
                    }
                });
            })
        });
        group.throughput(Throughput::Elements(SERIAL as u64));
        group.bench_function(format!("{name}/commit-each"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    for _ in 0..SERIAL {
                        next += 1;
                        let e = entry(next);
                        storage
                            .call(move |db| db.archive(&e))
                            .await
                            .expect("archived");
                    }
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
