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
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::procstat::{CpuSnapshot, Watched};
use crate::report::{emit, pairs, percentiles};
use crate::user::{Online, Setup, next};

/// What one step measured.
#[derive(Serialize)]
pub struct Step {
    scenario: &'static str,
    transport: String,
    users: usize,
    /// The rate asked for, messages per second.
    pub rate: u64,
    seconds: u64,
    /// Messages written while the window was open.
    pub sent: u64,
    /// Of those, delivered once by the end of the grace period.
    pub delivered: u64,
    /// Sent and not delivered.
    pub lost: u64,
    /// Deliveries of a message already delivered.
    pub duplicated: u64,
    /// Slots of the schedule the tool skipped because it fell more than a
    /// second behind (the step then ran below its rate).
    pub skipped: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// How late the tool wrote the window's messages against the schedule:
    /// p99 and max, ms.
    lag_p99_ms: f64,
    lag_max_ms: f64,
    /// CPU µs per 1000 delivered messages, by process.
    cpu_us_per_1000: Vec<(String, f64)>,
    /// migrate: moves done in the window, and p99/max delivery time of
    /// messages sent within a second after their sender or recipient moved.
    #[serde(skip_serializing_if = "Option::is_none")]
    moves: Option<(u64, f64, f64)>,
}

/// The schedule the senders and movers follow, published at each change.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Schedule {
    /// Bumped at each step: the senders start the step's schedule over.
    step: u64,
    /// Total messages per second (0: nobody sends).
    rate: u64,
    /// When the step began, µs since `Shared::start`.
    epoch: i64,
    /// When the movers' schedule began (the window's opening), if they move.
    moves_from: Option<i64>,
}

/// When message `k` of user `i` of `n` is due, µs after the step began: the
/// step's messages leave one every `1/rate` s, message `j` from user `j mod n`.
fn due(i: usize, k: u64, n: usize, rate: u64) -> i64 {
    let slot = i as u64 + k * n as u64;
    (slot as f64 * 1e6 / rate as f64) as i64
}

/// What the senders, receivers and movers share.
struct Shared {
    start: Instant,
    schedule: watch::Sender<Schedule>,
    /// The open window's id, 0 while none is open. A message carries the id
    /// it was sent under; only the window's own count.
    open: AtomicU64,
    /// The id of the window being counted (kept through the grace period).
    counted: AtomicU64,
    sent: AtomicU64,
    delivered: AtomicU64,
    duplicated: AtomicU64,
    skipped: AtomicU64,
    latencies: std::sync::Mutex<Vec<u64>>,
    /// Send lag (µs behind schedule) of the window's messages.
    lags: std::sync::Mutex<Vec<u64>>,
    moved_latencies: std::sync::Mutex<Vec<u64>>,
    /// Per user: when it last moved (µs since start; i64::MIN never).
    moved_at: Vec<AtomicI64>,
    /// Moves done while the window was open.
    moves: AtomicU64,
}

impl Shared {
    fn now(&self) -> i64 {
        self.start.elapsed().as_micros() as i64
    }
    fn recently_moved(&self, user: usize, t: i64) -> bool {
        let m = self.moved_at[user].load(Relaxed);
        m != i64::MIN && t >= m && t - m <= 1_000_000
    }
    fn take(v: &std::sync::Mutex<Vec<u64>>) -> Vec<u64> {
        std::mem::take(&mut *v.lock().unwrap_or_else(|e| e.into_inner()))
    }
    fn push(v: &std::sync::Mutex<Vec<u64>>, x: u64) {
        v.lock().unwrap_or_else(|e| e.into_inner()).push(x);
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
    /// only if it has an endpoint of its own), staggered over the period
    /// from the window's opening.
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
    result.map(|_| ())
}

/// Drives the plan's steps with users already online: user `i` (of
/// `0..plan.users`) sends to user `i + 1`; `endpoints[i]`, if there is one,
/// is user `i`'s own and moves it. The users' connections end with it.
/// Emits each step's row and returns them.
pub async fn run_online(
    setup: &Setup,
    watched: &[Watched],
    plan: &Plan,
    online: Vec<(usize, Online)>,
    endpoints: &[quinn::Endpoint],
) -> anyhow::Result<Vec<Step>> {
    let n = plan.users.max(2);
    let shared = Arc::new(Shared {
        start: Instant::now(),
        schedule: watch::Sender::new(Schedule::default()),
        open: AtomicU64::new(0),
        counted: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        duplicated: AtomicU64::new(0),
        skipped: AtomicU64::new(0),
        latencies: Default::default(),
        lags: Default::default(),
        moved_latencies: Default::default(),
        moved_at: (0..n).map(|_| AtomicI64::new(i64::MIN)).collect(),
        moves: AtomicU64::new(0),
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
    let mut steps = Vec::new();
    for (index, &rate) in plan.rates.iter().enumerate() {
        let moving = plan.move_every.is_some() && index >= plan.move_from_step;
        let scenario = if moving { "migrate" } else { "chat" };
        let schedule = Schedule {
            step: index as u64 + 1,
            rate,
            epoch: shared.now(),
            moves_from: None,
        };
        shared.schedule.send_replace(schedule);
        tokio::time::sleep(Duration::from_secs(plan.warmup_secs)).await;
        // Open the window: a new id, so nothing sent before counts.
        let id = index as u64 + 1;
        for c in [
            &shared.sent,
            &shared.delivered,
            &shared.duplicated,
            &shared.skipped,
            &shared.moves,
        ] {
            c.store(0, SeqCst);
        }
        for v in [&shared.latencies, &shared.lags, &shared.moved_latencies] {
            Shared::take(v);
        }
        let cpu_before = CpuSnapshot::take(watched);
        shared.counted.store(id, SeqCst);
        shared.open.store(id, SeqCst);
        if moving {
            shared.schedule.send_replace(Schedule {
                moves_from: Some(shared.now()),
                ..schedule
            });
        }
        eprintln!("window open: {scenario} rate {rate}/s");
        tokio::time::sleep(Duration::from_secs(plan.step_secs)).await;
        shared.open.store(0, SeqCst);
        let cpu_after = CpuSnapshot::take(watched);
        let moves = shared.moves.load(SeqCst);
        tokio::time::sleep(Duration::from_secs(plan.grace_secs)).await;
        // Read the window's figures, then stop counting it: a message of
        // it that arrives later must not land in the next window's counts.
        let sent = shared.sent.load(SeqCst);
        let delivered = shared.delivered.load(SeqCst);
        shared.counted.store(0, SeqCst);
        let (p50, p99, max) = percentiles(&mut Shared::take(&shared.latencies));
        let (_, lag_p99, lag_max) = percentiles(&mut Shared::take(&shared.lags));
        let cpu = cpu_after.per(&cpu_before, delivered, 1000);
        let moves = moving.then(|| {
            let (_, mp99, mmax) = percentiles(&mut Shared::take(&shared.moved_latencies));
            (moves, mp99, mmax)
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
            duplicated: shared.duplicated.load(SeqCst),
            skipped: shared.skipped.load(SeqCst),
            p50_ms: p50,
            p99_ms: p99,
            max_ms: max,
            lag_p99_ms: lag_p99,
            lag_max_ms: lag_max,
            cpu_us_per_1000: cpu,
            moves,
        };
        let human = format!(
            "{scenario} rate {rate}/s: sent {sent} ({:.0}/s{}) delivered {delivered} lost {} dup {} | ms p50 {p50:.2} p99 {p99:.2} max {max:.1} | tool lag p99 {lag_p99:.2} max {lag_max:.1} ms | CPU µs/1000 msgs {}{}",
            sent as f64 / plan.step_secs.max(1) as f64,
            match step.skipped {
                0 => String::new(),
                k => format!(", {k} skipped: the tool fell behind"),
            },
            step.lost,
            step.duplicated,
            pairs(&step.cpu_us_per_1000),
            step.moves
                .map(|(m, p, x)| format!(" | {m} moves, around them p99 {p:.1} max {x:.1} ms"))
                .unwrap_or_default()
        );
        emit(&step, human);
        steps.push(step);
    }
    shared.schedule.send_replace(Schedule::default());
    for t in tasks {
        t.abort();
    }
    Ok(steps)
}

/// ~100-byte message bodies: `b WINDOW FROM SEQ MICROS` plus padding. User
/// `i` of `n` sends messages `i, i + n, i + 2n, …` of each step's schedule.
async fn send(
    mut writer: Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
    i: usize,
    n: usize,
    to: String,
    shared: Arc<Shared>,
    _quic: Option<quinn::Connection>,
) {
    let mut schedule = shared.schedule.subscribe();
    let mut now_is = *schedule.borrow_and_update();
    let mut k = 0u64;
    let mut seq = 0u64;
    loop {
        if now_is.rate == 0 {
            if schedule.changed().await.is_err() {
                return;
            }
            let next = *schedule.borrow_and_update();
            if next.step != now_is.step {
                k = 0;
            }
            now_is = next;
            continue;
        }
        let intended = now_is.epoch + due(i, k, n, now_is.rate);
        let wait = intended - shared.now();
        if wait > 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_micros(wait as u64)) => {}
                changed = schedule.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let next = *schedule.borrow_and_update();
                    if next.step != now_is.step {
                        k = 0; // a new step: its schedule starts over
                    }
                    now_is = next;
                    continue;
                }
            }
        }
        k += 1;
        seq += 1;
        let window = shared.open.load(SeqCst);
        let t = shared.now();
        let lag = t - intended;
        if lag > 1_000_000 {
            // fell far behind: skip the missed slots rather than burst
            let missed = (lag as f64 * now_is.rate as f64 / 1e6 / n as f64) as u64;
            k += missed;
            if window != 0 {
                shared.skipped.fetch_add(missed, Relaxed);
            }
        }
        let msg = format!(
            "<message to='{to}' type='chat' id='m{seq}'><body>b {window} {i} {seq} {t} ........................................................</body></message>"
        );
        if window != 0 {
            shared.sent.fetch_add(1, Relaxed);
        }
        if writer.write_all(msg.as_bytes()).await.is_err() || writer.flush().await.is_err() {
            tracing::warn!(user = i, "send failed; the user stops");
            return;
        }
        if window != 0 {
            Shared::push(&shared.lags, lag.max(0) as u64);
        }
    }
}

async fn receive(mut reader: client_sdk::transport::Io, me: usize, shared: Arc<Shared>) {
    let mut seen: (u64, HashSet<(u64, u64)>) = (0, HashSet::new());
    while let Some(el) = next(&mut reader).await {
        if el.name != "message" {
            continue;
        }
        let Some(body) = el.child("body", xmpp_stream::ns::CLIENT).map(|b| b.text()) else {
            continue;
        };
        let mut f = body.split(' ').skip(1).map(|x| x.parse::<i64>().ok());
        let (Some(Some(window)), Some(Some(from)), Some(Some(seq)), Some(Some(t))) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let window = window as u64;
        if window == 0 || window != shared.counted.load(SeqCst) {
            continue; // sent outside the window being counted
        }
        if seen.0 != window {
            seen = (window, HashSet::new());
        }
        if !seen.1.insert((from as u64, seq as u64)) {
            shared.duplicated.fetch_add(1, Relaxed);
            continue;
        }
        shared.delivered.fetch_add(1, Relaxed);
        let lat = (shared.now() - t).max(0) as u64;
        Shared::push(&shared.latencies, lat);
        if shared.recently_moved(me, t)
            || shared.recently_moved(from as usize % shared.moved_at.len(), t)
        {
            Shared::push(&shared.moved_latencies, lat);
        }
    }
}

/// Moves client `i` to a new UDP socket every `every` while its schedule
/// says so: at `moves_from + every·i/n`, then every `every` after that.
async fn mover(ep: quinn::Endpoint, i: usize, n: usize, every: Duration, shared: Arc<Shared>) {
    let mut schedule = shared.schedule.subscribe();
    loop {
        let Some(from) = schedule.borrow_and_update().moves_from else {
            if schedule.changed().await.is_err() {
                return;
            }
            continue;
        };
        let offset = every.mul_f64(i as f64 / n as f64).as_micros() as i64;
        let mut at = from + offset;
        loop {
            let wait = (at - shared.now()).max(0) as u64;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_micros(wait)) => {}
                changed = schedule.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break; // a new schedule
                }
            }
            at += every.as_micros() as i64;
            let Ok(socket) = std::net::UdpSocket::bind("127.0.0.1:0") else {
                continue;
            };
            shared.moved_at[i].store(shared.now(), Relaxed);
            if ep.rebind(socket).is_ok() && shared.open.load(SeqCst) != 0 {
                shared.moves.fetch_add(1, Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_spreads_a_steps_messages_evenly_over_all_users() {
        // 4 users at 1000/s: message j leaves at j ms, from user j mod 4.
        let mut times: Vec<(i64, usize)> = (0..4)
            .flat_map(|i| (0..5).map(move |k| (due(i, k, 4, 1000), i)))
            .collect();
        times.sort();
        let expected: Vec<(i64, usize)> = (0..20).map(|j| (j * 1000, j as usize % 4)).collect();
        assert_eq!(times, expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn through_the_floor_switch_every_message_of_a_step_is_sent_on_schedule_and_delivered_once()
     {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = tokio::spawn(crate::switch::serve_on(listener, "floor.test".into()));
        let dialer = client_sdk::transport::Dialer::new(
            addr,
            "floor.test",
            client_sdk::transport::Transport::Plain,
            rustls::RootCertStore::empty(),
        )
        .expect("dialer");
        let setup = Setup {
            dialer,
            prefix: "u".into(),
            password: "p".into(),
            mechanism: client_sdk::Mechanism::from_name("PLAIN").expect("PLAIN"),
            cache: Arc::default(),
            resource: "t".into(),
        };
        let online = crate::login_all(&setup, 20, &[]).await.expect("logins");
        assert_eq!(online.len(), 20);
        let plan = Plan {
            users: 20,
            rates: vec![400],
            step_secs: 2,
            warmup_secs: 1,
            grace_secs: 1,
            move_every: None,
            move_from_step: 0,
        };
        let steps = tokio::time::timeout(
            Duration::from_secs(30),
            run_online(&setup, &[], &plan, online, &[]),
        )
        .await
        .expect("the step ends in time")
        .expect("the step ran");
        server.abort();
        let step = &steps[0];
        // 2 s at 400/s: 800 slots, give or take the window's edges (and
        // timers late on a loaded machine)
        assert!(
            (700..=900).contains(&step.sent),
            "sent {} of ~800",
            step.sent
        );
        assert_eq!(step.delivered, step.sent);
        assert_eq!((step.lost, step.duplicated, step.skipped), (0, 0, 0));
    }
}
