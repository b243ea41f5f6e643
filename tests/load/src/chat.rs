//! `chat` and `migrate`: N online users, each sending ~100-byte messages to
//! the next (user i to user i+1) at a total rate R, stepped up; per step:
//! sent, delivered, lost, duplicated, time to delivery, CPU per 1000
//! delivered messages of every watched process.
//!
//! The schedule is open-loop and even: message k of a step leaves at
//! `k / R` seconds after the step began, sent by user `k mod N`, whoever
//! answered or not. Delivery time runs from the moment the message is
//! written to the moment its recipient has parsed it; how late the tool
//! wrote messages against the schedule is reported apart (`lag`), so a tool
//! that cannot keep up shows as lag, not as server latency. `migrate` (QUIC only) is
//! one step of it with every client moving to a new UDP socket every T
//! seconds, reporting the delivery time of messages around the moves.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::procstat::{CpuSnapshot, Watched};
use crate::report::{emit, pairs, percentiles};
use crate::user::{Online, Setup, next};

/// What one step measured.
#[derive(Serialize)]
struct Step {
    scenario: &'static str,
    transport: String,
    users: usize,
    rate: u64,
    seconds: u64,
    sent: u64,
    delivered: u64,
    lost: u64,
    duplicated: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// How late the tool wrote the step's messages against the schedule:
    /// p99 and max, ms.
    lag_p99_ms: f64,
    lag_max_ms: f64,
    /// CPU µs per 1000 delivered messages, by process.
    cpu_us_per_1000: Vec<(String, f64)>,
    /// migrate: rebinds done, and p99/max delivery time of messages sent
    /// within a second after their sender or recipient moved.
    #[serde(skip_serializing_if = "Option::is_none")]
    moves: Option<(u64, f64, f64)>,
}

/// Shared counters of the measuring window.
struct Shared {
    start: Instant,
    /// Current total rate (messages per second).
    rate: AtomicU64,
    /// When the current rate took effect, µs since `start`.
    epoch: AtomicI64,
    /// Bumped after `rate` and `epoch` are set: the senders start over.
    step: AtomicU64,
    /// Window bounds in µs since `start` (end = i64::MAX while open).
    window: (AtomicI64, AtomicI64),
    sent: AtomicU64,
    delivered: AtomicU64,
    duplicated: AtomicU64,
    latencies: std::sync::Mutex<Vec<u64>>,
    /// Send lag (µs behind schedule) of the window's messages.
    lags: std::sync::Mutex<Vec<u64>>,
    moved_latencies: std::sync::Mutex<Vec<u64>>,
    /// Per user: when it last moved (µs since start; i64::MIN never).
    moved_at: Vec<AtomicI64>,
    moves: AtomicU64,
    /// Whether the movers move (the current step is a migrate step).
    moving: AtomicBool,
}

impl Shared {
    fn now(&self) -> i64 {
        self.start.elapsed().as_micros() as i64
    }
    fn in_window(&self, t: i64) -> bool {
        t >= self.window.0.load(Relaxed) && t <= self.window.1.load(Relaxed)
    }
    fn recently_moved(&self, user: usize, t: i64) -> bool {
        let m = self.moved_at[user].load(Relaxed);
        m != i64::MIN && t >= m && t - m <= 1_000_000
    }
}

/// The knobs.
pub struct Plan {
    /// Users online.
    pub users: usize,
    /// Total rates to step through.
    pub rates: Vec<u64>,
    /// Measured seconds per step.
    pub step_secs: u64,
    /// Seconds at each new rate before measuring.
    pub warmup_secs: u64,
    /// Seconds after a step for late deliveries.
    pub grace_secs: u64,
    /// migrate: every client moves this often (QUIC only; a client moves
    /// only if it has an endpoint of its own).
    pub move_every: Option<Duration>,
    /// migrate: the moves start with this step (0: from the first).
    pub move_from_step: usize,
}

/// Runs the plan: logs the users in (each QUIC user on a UDP socket of its
/// own, as every phone has, and as moving needs), then drives the steps.
pub async fn run(setup: Setup, watched: Vec<Watched>, plan: Plan) -> anyhow::Result<()> {
    let n = plan.users.max(2);
    let quic = setup.dialer.transport() == client_sdk::transport::Transport::Quic;
    let endpoints = crate::endpoints(&setup, if quic { n } else { 0 }, true)?;
    let online = crate::login_all(&setup, n, &endpoints).await?;
    eprintln!("{n} users online");
    let result = run_online(&setup, &watched, &plan, online, &endpoints).await;
    crate::close_endpoints(&endpoints).await;
    result
}

/// Drives the plan's steps with users already online: user `i` (of
/// `0..plan.users`) sends to user `i + 1`; `endpoints[i]`, if there is one,
/// is user `i`'s own and moves it. The users' connections end with it.
pub async fn run_online(
    setup: &Setup,
    watched: &[Watched],
    plan: &Plan,
    online: Vec<(usize, Online)>,
    endpoints: &[quinn::Endpoint],
) -> anyhow::Result<()> {
    let n = plan.users.max(2);
    let shared = Arc::new(Shared {
        start: Instant::now(),
        rate: AtomicU64::new(0),
        epoch: AtomicI64::new(0),
        step: AtomicU64::new(0),
        window: (AtomicI64::new(i64::MAX), AtomicI64::new(i64::MAX)),
        sent: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        duplicated: AtomicU64::new(0),
        latencies: Default::default(),
        lags: Default::default(),
        moved_latencies: Default::default(),
        moved_at: (0..n).map(|_| AtomicI64::new(i64::MIN)).collect(),
        moves: AtomicU64::new(0),
        moving: AtomicBool::new(false),
    });
    let mut tasks = Vec::new();
    for (i, user) in online {
        let Online {
            writer,
            reader,
            quic,
            ..
        } = user;
        let to = setup.jid((i + 1) % n);
        tasks.push(tokio::spawn(receive(reader, i, shared.clone())));
        tasks.push(tokio::spawn(send(writer, i, n, to, shared.clone(), quic)));
        if let (Some(every), Some(ep)) = (plan.move_every, endpoints.get(i)) {
            tasks.push(tokio::spawn(mover(ep.clone(), i, n, every, shared.clone())));
        }
    }
    for (index, &rate) in plan.rates.iter().enumerate() {
        let moving = plan.move_every.is_some() && index >= plan.move_from_step;
        shared.moving.store(moving, SeqCst);
        let scenario = if moving { "migrate" } else { "chat" };
        shared.rate.store(rate, SeqCst);
        shared.epoch.store(shared.now(), SeqCst);
        shared.step.fetch_add(1, SeqCst);
        tokio::time::sleep(Duration::from_secs(plan.warmup_secs)).await;
        for c in [&shared.sent, &shared.delivered, &shared.duplicated] {
            c.store(0, Relaxed);
        }
        for v in [&shared.latencies, &shared.lags] {
            v.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
        shared
            .moved_latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let moves_before = shared.moves.load(Relaxed);
        let cpu_before = CpuSnapshot::take(watched);
        shared.window.1.store(i64::MAX, Relaxed);
        shared.window.0.store(shared.now(), Relaxed);
        tokio::time::sleep(Duration::from_secs(plan.step_secs)).await;
        shared.window.1.store(shared.now(), Relaxed);
        let cpu_after = CpuSnapshot::take(watched);
        tokio::time::sleep(Duration::from_secs(plan.grace_secs)).await;
        let sent = shared.sent.load(Relaxed);
        let delivered = shared.delivered.load(Relaxed);
        let mut lat =
            std::mem::take(&mut *shared.latencies.lock().unwrap_or_else(|e| e.into_inner()));
        let (p50, p99, max) = percentiles(&mut lat);
        let mut lags = std::mem::take(&mut *shared.lags.lock().unwrap_or_else(|e| e.into_inner()));
        let (_, lag_p99, lag_max) = percentiles(&mut lags);
        let cpu = cpu_after.per(&cpu_before, delivered, 1000);
        let moves = moving.then(|| {
            let mut m = std::mem::take(
                &mut *shared
                    .moved_latencies
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()),
            );
            let (_, mp99, mmax) = percentiles(&mut m);
            (shared.moves.load(Relaxed) - moves_before, mp99, mmax)
        });
        let step = Step {
            scenario,
            transport: format!("{:?}", setup.dialer.transport()).to_lowercase(),
            users: n,
            rate,
            seconds: plan.step_secs,
            sent,
            delivered,
            lost: sent.saturating_sub(delivered),
            duplicated: shared.duplicated.load(Relaxed),
            p50_ms: p50,
            p99_ms: p99,
            max_ms: max,
            lag_p99_ms: lag_p99,
            lag_max_ms: lag_max,
            cpu_us_per_1000: cpu,
            moves,
        };
        let human = format!(
            "{scenario} rate {rate}/s: sent {sent} delivered {delivered} lost {} dup {} | ms p50 {p50:.2} p99 {p99:.2} max {max:.1} | tool lag p99 {lag_p99:.2} max {lag_max:.1} ms | CPU µs/1000 msgs {}{}",
            step.lost,
            step.duplicated,
            pairs(&step.cpu_us_per_1000),
            step.moves
                .map(|(m, p, x)| format!(" | {m} moves, around them p99 {p:.1} max {x:.1} ms"))
                .unwrap_or_default()
        );
        emit(&step, human);
    }
    shared.rate.store(0, SeqCst);
    shared.step.fetch_add(1, SeqCst);
    for t in tasks {
        t.abort();
    }
    Ok(())
}

/// ~100-byte message bodies: `b STEP FROM SEQ MICROS` plus padding. User
/// `i` of `n` sends messages `i, i + n, i + 2n, …` of the step's schedule.
async fn send(
    mut writer: Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
    i: usize,
    n: usize,
    to: String,
    shared: Arc<Shared>,
    _quic: Option<quinn::Connection>,
) {
    let mut seq = 0u64;
    let (mut step, mut k) = (u64::MAX, 0u64);
    loop {
        let now_step = shared.step.load(SeqCst);
        let rate = shared.rate.load(SeqCst);
        if rate == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        if now_step != step {
            (step, k) = (now_step, 0);
        }
        let epoch = shared.epoch.load(SeqCst);
        let slot = i as u64 + k * n as u64;
        let intended = epoch + (slot as f64 * 1e6 / rate as f64) as i64;
        let wait = intended - shared.now();
        if wait > 0 {
            tokio::time::sleep(Duration::from_micros(wait as u64)).await;
            if shared.step.load(SeqCst) != step {
                continue; // the rate changed while waiting: the new schedule
            }
        }
        k += 1;
        seq += 1;
        let t = shared.now();
        let lag = t - intended;
        if lag > 1_000_000 {
            // fell far behind: skip the missed slots rather than burst
            k += (lag as f64 * rate as f64 / 1e6 / n as f64) as u64;
        }
        let msg = format!(
            "<message to='{to}' type='chat' id='m{seq}'><body>b {step} {i} {seq} {t} ........................................................</body></message>"
        );
        if shared.in_window(t) {
            shared.sent.fetch_add(1, Relaxed);
            shared
                .lags
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(lag.max(0) as u64);
        }
        if writer.write_all(msg.as_bytes()).await.is_err() || writer.flush().await.is_err() {
            tracing::warn!(user = i, "send failed; the user stops");
            return;
        }
    }
}

async fn receive(mut reader: client_sdk::transport::Io, me: usize, shared: Arc<Shared>) {
    let mut seen: (u64, HashSet<u64>) = (0, HashSet::new());
    while let Some(el) = next(&mut reader).await {
        if el.name != "message" {
            continue;
        }
        let Some(body) = el.child("body", xmpp_stream::ns::CLIENT).map(|b| b.text()) else {
            continue;
        };
        let mut f = body.split(' ').skip(1).map(|x| x.parse::<i64>().ok());
        let (Some(Some(step)), Some(Some(from)), Some(Some(seq)), Some(Some(t))) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if !shared.in_window(t) {
            continue;
        }
        if seen.0 != step as u64 {
            seen = (step as u64, HashSet::new());
        }
        if !seen.1.insert(seq as u64) {
            shared.duplicated.fetch_add(1, Relaxed);
            continue;
        }
        shared.delivered.fetch_add(1, Relaxed);
        let lat = (shared.now() - t).max(0) as u64;
        shared
            .latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(lat);
        if shared.recently_moved(me, t)
            || shared.recently_moved(from as usize % shared.moved_at.len(), t)
        {
            shared
                .moved_latencies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(lat);
        }
    }
}

/// Moves client `i` to a new UDP socket every `every` (staggered).
async fn mover(ep: quinn::Endpoint, i: usize, n: usize, every: Duration, shared: Arc<Shared>) {
    tokio::time::sleep(every.mul_f64(i as f64 / n as f64)).await;
    loop {
        tokio::time::sleep(every).await;
        let Ok(socket) = std::net::UdpSocket::bind("127.0.0.1:0") else {
            continue;
        };
        if !shared.moving.load(Relaxed) {
            continue;
        }
        shared.moved_at[i].store(shared.now(), Relaxed);
        if ep.rebind(socket).is_ok() {
            shared.moves.fetch_add(1, Relaxed);
        }
    }
}
