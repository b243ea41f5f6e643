//! The short chaos run of issue 14, in CI: a balancer, three CMs and a core
//! as real processes, 60 clients chatting over QUIC with stream management
//! for about a minute while a CM, the core and the balancer (at least) are
//! SIGKILLed and restarted. Every acknowledged message must be delivered
//! once, in order per sender. The five-minute run is `scripts/chaos.sh`.
//! `LONGLINK_CHAOS_SEED` replays a seed.

use std::path::Path;

use longlink_bench::chaos::{Config, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kills_of_a_cm_the_core_and_the_balancer() {
    let seed = std::env::var("LONGLINK_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand_seed);
    let config = Config::short(Path::new(env!("CARGO_BIN_EXE_longlink")), seed);
    let report = run(config).await.expect("the chaos run ran");
    println!("{report}");
    assert!(
        report.kills.len() >= 3,
        "at least 3 kills, got {}",
        report.kills.len()
    );
    for kind in ["cm-", "core", "lb"] {
        assert!(
            report.kills.iter().any(|k| k.victim.starts_with(kind)),
            "a kill of {kind}"
        );
    }
    assert!(report.counts.acknowledged > 0, "messages were acknowledged");
    assert_eq!(
        report.counts.lost, 0,
        "acknowledged messages lost (seed {seed})"
    );
    assert_eq!(report.counts.duplicates, 0, "duplicates (seed {seed})");
    assert_eq!(report.counts.out_of_order, 0, "out of order (seed {seed})");
}

/// A seed from the clock (printed in the report, so a failure can be replayed).
fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}
