//! `login`: logins per second (connect, TLS, SASL, bind, presence, close)
//! at rising concurrency, with failures and latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::procstat::{CpuSnapshot, Watched};
use crate::report::{emit, pairs, percentiles};
use crate::user::{Setup, login};

#[derive(Serialize)]
struct Step {
    scenario: &'static str,
    transport: String,
    concurrency: usize,
    seconds: u64,
    logins: u64,
    failures: u64,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU µs per login, by process.
    cpu_us_per_login: Vec<(String, f64)>,
}

/// Runs the scenario.
pub async fn run(
    setup: Setup,
    watched: Vec<Watched>,
    users: usize,
    levels: Vec<usize>,
    secs: u64,
) -> anyhow::Result<()> {
    let quic = setup.dialer.transport() == client_sdk::transport::Transport::Quic;
    // Warm the SCRAM cache: one login per account, not measured.
    let warm = crate::endpoints(&setup, if quic { users } else { 0 }, false)?;
    for (_, u) in crate::login_all(&setup, users, &warm).await? {
        u.close().await;
    }
    crate::close_endpoints(&warm).await;
    for c in levels {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let deadline = Instant::now() + Duration::from_secs(secs);
        let cpu_before = CpuSnapshot::take(&watched);
        let started = Instant::now();
        let workers: Vec<_> = (0..c)
            .map(|w| {
                let (setup, ok, failed, latencies) =
                    (setup.clone(), ok.clone(), failed.clone(), latencies.clone());
                let ep = if quic {
                    setup.dialer.endpoint().ok()
                } else {
                    None
                };
                tokio::spawn(async move {
                    let mut i = w % users;
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        match login(&setup, i, ep.as_ref()).await {
                            Ok(u) => {
                                latencies
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .push(t.elapsed().as_micros() as u64);
                                ok.fetch_add(1, Relaxed);
                                u.close().await;
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "login failed");
                                failed.fetch_add(1, Relaxed);
                            }
                        }
                        i = (i + c) % users;
                    }
                    ep
                })
            })
            .collect();
        // Each worker's endpoint outlives it, until its connections'
        // closes are sent (after the measurement).
        let mut endpoints = Vec::new();
        for w in workers {
            if let Ok(Some(ep)) = w.await {
                endpoints.push(ep);
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = CpuSnapshot::take(&watched).per(&cpu_before, ok.load(Relaxed), 1);
        let mut lat = std::mem::take(&mut *latencies.lock().unwrap_or_else(|e| e.into_inner()));
        let (p50, p99, _) = percentiles(&mut lat);
        let logins = ok.load(Relaxed);
        let step = Step {
            scenario: "login",
            transport: format!("{:?}", setup.dialer.transport()).to_lowercase(),
            concurrency: c,
            seconds: secs,
            logins,
            failures: failed.load(Relaxed),
            per_second: logins as f64 / elapsed,
            p50_ms: p50,
            p99_ms: p99,
            cpu_us_per_login: cpu,
        };
        let human = format!(
            "login concurrency {c}: {:.0}/s ({logins} ok, {} failed) | ms p50 {p50:.1} p99 {p99:.1} | CPU µs/login {}",
            step.per_second,
            step.failures,
            pairs(&step.cpu_us_per_login)
        );
        emit(&step, human);
        crate::close_endpoints(&endpoints).await;
        // let closed connections drain before the next step
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}
