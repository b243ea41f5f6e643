//! `idle`: N users log in, send initial presence and stay; after settling,
//! the memory each watched process grew by, per session; then, over a
//! further measured window of silence, each process's CPU use and wakeups
//! (voluntary context switches) per second: what keep-alives and timers
//! cost. CPU time comes in 10 ms ticks: over the default 10 s, 0.1 %.

use std::time::Duration;

use serde::Serialize;

use crate::procstat::{Watched, cpu, rss_kib, switches_between, voluntary_switches};
use crate::report::emit;
use crate::user::{Setup, next};

#[derive(Serialize)]
struct Row {
    scenario: &'static str,
    transport: String,
    users: usize,
    process: String,
    rss_before_kib: u64,
    rss_after_kib: u64,
    kib_per_session: f64,
    /// CPU use while idle, percent of one core.
    idle_cpu_percent: Option<f64>,
    /// Voluntary context switches (threads waking up) per second while idle.
    idle_wakeups_per_s: Option<f64>,
}

/// Runs the scenario.
pub async fn run(
    setup: Setup,
    watched: Vec<Watched>,
    users: usize,
    settle: u64,
    measure: u64,
) -> anyhow::Result<()> {
    let before = rss_all(&watched);
    let quic = setup.dialer.transport() == client_sdk::transport::Transport::Quic;
    let endpoints = crate::endpoints(&setup, if quic { users } else { 0 }, false)?;
    let online = crate::login_all(&setup, users, &endpoints).await?;
    let users = online.len();
    let held = Held::new(online);
    let transport = format!("{:?}", setup.dialer.transport()).to_lowercase();
    report(&watched, &before, users, &transport, settle, measure).await;
    held.close().await;
    crate::close_endpoints(&endpoints).await;
    Ok(())
}

/// Users' sessions held open, reading (and dropping) what the servers
/// send them (presence echoes), until [`Held::close`].
pub struct Held {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Held {
    /// Holds `online`.
    pub fn new(online: Vec<(usize, crate::user::Online)>) -> Self {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let tasks = online
            .into_iter()
            .map(|(_, mut u)| {
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let told = tokio::select! {
                        told = stopped.wait_for(|stop| *stop) => told.is_ok(),
                        _ = async { while next(&mut u.reader).await.is_some() {} } => false,
                    };
                    if told {
                        u.close().await;
                    }
                })
            })
            .collect();
        Self { stop, tasks }
    }

    /// Each user closes its stream (so the servers end the sessions at
    /// once, not at their idle timeouts); returns when all have.
    pub async fn close(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Resident memory of every watched process now.
pub fn rss_all(watched: &[Watched]) -> Vec<Option<u64>> {
    watched.iter().map(|w| rss_kib(w.pid)).collect()
}

/// With `users` sessions held since `before` was read: waits `settle`
/// seconds, reads each process's memory growth per session, then its CPU
/// and wakeups over `measure` more seconds of silence; emits a row each.
pub async fn report(
    watched: &[Watched],
    before: &[Option<u64>],
    users: usize,
    transport: &str,
    settle: u64,
    measure: u64,
) {
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let rss_after: Vec<Option<u64>> = watched.iter().map(|w| rss_kib(w.pid)).collect();
    let idle_before: Vec<_> = watched
        .iter()
        .map(|w| (cpu(w.pid), voluntary_switches(w.pid)))
        .collect();
    let t0 = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(measure)).await;
    let secs = t0.elapsed().as_secs_f64();
    let idle: Vec<(Option<f64>, Option<f64>)> = watched
        .iter()
        .zip(idle_before)
        .map(|(w, (c0, s0))| {
            let cpu = cpu(w.pid)
                .zip(c0)
                .map(|(c1, c0)| c1.saturating_sub(c0).as_secs_f64() * 100.0 / secs);
            let wakeups = voluntary_switches(w.pid)
                .zip(s0)
                .map(|(s1, s0)| switches_between(&s0, &s1) as f64 / secs);
            (cpu, wakeups)
        })
        .collect();
    for (((w, before), after), (idle_cpu, wakeups)) in
        watched.iter().zip(before).zip(rss_after).zip(idle)
    {
        let (Some(b), Some(a)) = (*before, after) else {
            continue;
        };
        let row = Row {
            scenario: "idle",
            transport: transport.to_owned(),
            users,
            process: w.name.clone(),
            rss_before_kib: b,
            rss_after_kib: a,
            kib_per_session: (a as f64 - b as f64) / users as f64,
            idle_cpu_percent: idle_cpu,
            idle_wakeups_per_s: wakeups,
        };
        let human = format!(
            "idle {users} users over {transport}: {} grew {} KiB → {:.1} KiB per session; idle {:.1} % CPU, {:.0} wakeups/s",
            w.name,
            a as i64 - b as i64,
            row.kib_per_session,
            idle_cpu.unwrap_or(f64::NAN),
            wakeups.unwrap_or(f64::NAN),
        );
        emit(&row, human);
    }
}
