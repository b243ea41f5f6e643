//! `core-sim`: one real core process loaded with millions of sessions by
//! simulated CMs speaking the real CM↔core protocol (issue 15's
//! ten-million-user proof). The core runs as a child process (`core-sim
//! host`) on the generated [`fixture`] store; the parent is the CMs.
//!
//! Steps, each reported as a JSON line on stdout:
//! 1. **hold**: sessions are announced up to each of the `--steps` counts;
//!    once the core's routing table holds them all and its CPU has gone
//!    quiet, its resident memory is read (per session: growth since the
//!    core started, over the sessions).
//! 2. **load**: for `--secs` seconds each, messages alone, presence
//!    broadcasts alone, reconnects alone (a clean end, a new session and
//!    its initial presence), then the traffic model's mix at increasing scale:
//!    delivery p50/p99, lost, core CPU per event.
//! 3. **rebuild**: the core is SIGKILLed and started again; the time from
//!    the CMs' reconnection until its routing table holds every session
//!    again.

pub mod fixture;
pub mod rooms;
pub mod sim_cm;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::BytesMut;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::procstat::{cpu, rss_kib};
use fixture::Population;
use sim_cm::SimNode;

/// The simulated domain.
pub const DOMAIN: &str = "sim.test";

/// Rates of the traffic mix, per online session per second (from the
/// model in docs/SCALING.md).
#[derive(Clone, Copy, Debug)]
pub struct Mix {
    /// One-to-one messages.
    pub messages: f64,
    /// Presence broadcasts.
    pub presences: f64,
    /// Reconnects (clean end, new session).
    pub reconnects: f64,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Sessions held at each hold step (ascending; the last is the total).
    pub steps: Vec<u32>,
    /// Contacts per user.
    pub contacts: u32,
    /// Simulated CM nodes.
    pub nodes: u32,
    /// Seconds per load step.
    pub secs: u64,
    /// Events per second of each kind alone (messages, presences,
    /// reconnects).
    pub alone: [f64; 3],
    /// The traffic mix per session, and the scales to try it at.
    pub mix: Mix,
    /// Multiples of the mix to step through (stopping at the first whose
    /// p99 is over 50 ms).
    pub mix_scales: Vec<f64>,
    /// Also measure a rebuild after a restart.
    pub rebuild: bool,
    /// Where the PKI and the core's data go.
    pub dir: PathBuf,
}

/// A running core host.
struct Host {
    child: tokio::process::Child,
    pid: u32,
    quic: SocketAddr,
    admin: SocketAddr,
}

impl Host {
    async fn start(dir: &Path, population: Population) -> Result<Self> {
        Self::start_with(dir, population, &[]).await
    }

    /// Starts the host with more of its arguments (`--muc-per-session`).
    async fn start_with(dir: &Path, population: Population, extra: &[&str]) -> Result<Self> {
        let exe = std::env::current_exe()?;
        // CORE_SIM_WRAP runs the host under a profiler ("valgrind
        // --tool=massif ..."); its words come before the host's command.
        let wrap = std::env::var("CORE_SIM_WRAP").unwrap_or_default();
        let mut words = wrap.split_whitespace();
        let mut command = match words.next() {
            Some(program) => {
                let mut c = tokio::process::Command::new(program);
                c.args(words).arg(exe);
                c
            }
            None => tokio::process::Command::new(exe),
        };
        let mut child = command
            .arg("host")
            .arg("--dir")
            .arg(dir)
            .arg("--users")
            .arg(population.users.to_string())
            .arg("--contacts")
            .arg(population.contacts.to_string())
            .args(extra)
            .stdout(Stdio::piped())
            .stdin(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the core host")?;
        let pid = child.id().ok_or_else(|| anyhow!("the host has no pid"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("the host did not start within 30 s")??
            .ok_or_else(|| anyhow!("the host exited before it was ready"))?;
        let mut words = line.split_whitespace();
        let (Some("ready"), Some(quic), Some(admin)) = (words.next(), words.next(), words.next())
        else {
            bail!("unexpected first line from the host: {line}");
        };
        Ok(Self {
            child,
            pid,
            quic: quic.parse()?,
            admin: admin.parse()?,
        })
    }

    /// SIGKILL: the core dies at once.
    async fn kill(mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// Closes the host's standard input, which stops its core cleanly
    /// (and lets a profiler wrapping it write its output); kills it if it
    /// has not exited within a minute.
    async fn stop(mut self) -> Result<()> {
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .is_err()
        {
            self.child.kill().await?;
        }
        Ok(())
    }
}

/// The value of metric `name` (no labels) on the core's admin endpoint.
async fn metric(admin: SocketAddr, name: &str) -> Result<f64> {
    let mut s = tokio::net::TcpStream::connect(admin).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: core\r\n\r\n")
        .await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    body.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == name).then(|| v.trim().parse().ok()).flatten()
        })
        .ok_or_else(|| anyhow!("no metric {name}"))
}

/// Waits until the core's routing table holds `n` sessions; fails if the
/// core ends any session meanwhile.
async fn until_sessions(
    admin: SocketAddr,
    nodes: &[SimNode],
    n: u32,
    limit: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        if metric(admin, "longlink_core_sessions").await? >= f64::from(n) {
            return Ok(started.elapsed());
        }
        let kicks: u64 = nodes.iter().map(SimNode::kicks).sum();
        if kicks > 0 {
            bail!("the core ended {kicks} sessions while they were announced");
        }
        if started.elapsed() > limit {
            bail!("the core did not hold {n} sessions within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the core uses under 5 % of a core over a second.
async fn until_quiet(pid: u32) {
    for _ in 0..120 {
        let before = cpu(pid).unwrap_or_default();
        tokio::time::sleep(Duration::from_secs(1)).await;
        if cpu(pid).unwrap_or_default().saturating_sub(before) < Duration::from_millis(50) {
            return;
        }
    }
}

/// Announces sessions `from..to` over the nodes, in batches.
async fn announce(nodes: &[SimNode], from: u32, to: u32) -> Result<()> {
    let mut batches: Vec<BytesMut> = nodes.iter().map(|_| BytesMut::new()).collect();
    for i in from..to {
        let n = (i % nodes.len() as u32) as usize;
        sim_cm::announce(&mut batches[n], nodes[n].sid(i), i, DOMAIN);
        if batches[n].len() > 64 * 1024 {
            nodes[n].send(std::mem::take(&mut batches[n])).await?;
        }
    }
    for (node, batch) in nodes.iter().zip(batches) {
        if !batch.is_empty() {
            node.send(batch).await?;
        }
    }
    Ok(())
}

/// Connects the simulated CMs.
async fn connect_nodes(
    endpoint: &quinn::Endpoint,
    dir: &Path,
    core: SocketAddr,
    nodes: u32,
    sessions: u32,
) -> Result<Vec<SimNode>> {
    let mut out = Vec::new();
    for index in 0..nodes {
        out.push(SimNode::connect(endpoint, &dir.join("pki"), core, index, nodes, sessions).await?);
    }
    Ok(out)
}

/// One kind of event the load step sends.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Event {
    Message,
    Presence,
    Reconnect,
}

/// What one load step saw.
struct LoadResult {
    sent: [u64; 3],
    timed_sent: u64,
    timed_delivered: u64,
    delivered: u64,
    kicks: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    core_cpu: Duration,
    secs: f64,
}

/// Sends events at `rates` (per second, by kind) among `sessions`
/// sessions for `secs`, on an even schedule, then waits for what is
/// outstanding.
async fn load(
    nodes: &[SimNode],
    host: &Host,
    population: Population,
    rates: [f64; 3],
    secs: u64,
    rng: &mut rand::rngs::StdRng,
) -> Result<LoadResult> {
    for node in nodes {
        node.take_counts();
    }
    let total: f64 = rates.iter().sum();
    if total <= 0.0 {
        bail!("nothing to send");
    }
    let cpu_before = cpu(host.pid).unwrap_or_default();
    let started = Instant::now();
    // Exactly this many events, on an even schedule (a late wakeup sends
    // what is due at once).
    let target = (total * secs as f64).round() as u64;
    let mut sent = [0u64; 3];
    let mut due = 0f64;
    let tick = Duration::from_millis(5);
    let mut next = tokio::time::Instant::now();
    let mut away = false;
    while sent.iter().sum::<u64>() < target {
        next += tick;
        tokio::time::sleep_until(next).await;
        due += total * tick.as_secs_f64();
        let mut batches: Vec<BytesMut> = nodes.iter().map(|_| BytesMut::new()).collect();
        while due >= 1.0 && sent.iter().sum::<u64>() < target {
            due -= 1.0;
            let pick = rng.gen_range(0.0..total);
            let kind = if pick < rates[0] {
                Event::Message
            } else if pick < rates[0] + rates[1] {
                Event::Presence
            } else {
                Event::Reconnect
            };
            let from = rng.gen_range(0..population.users);
            let n = (from % nodes.len() as u32) as usize;
            match kind {
                Event::Message => {
                    let contacts: Vec<u32> = population.contacts_of(from).collect();
                    let to = if contacts.is_empty() {
                        from
                    } else {
                        contacts[rng.gen_range(0..contacts.len())]
                    };
                    sim_cm::message(&mut batches[n], nodes[n].sid(from), from, to, DOMAIN);
                    sent[0] += 1;
                }
                Event::Presence => {
                    away = !away;
                    sim_cm::presence(&mut batches[n], nodes[n].sid(from), from, away, DOMAIN);
                    sent[1] += 1;
                }
                Event::Reconnect => {
                    // A clean end, then a new session as a CM binds one
                    // (announced, not yet available) and its initial
                    // presence: broadcast, probes and the offline flush.
                    sim_cm::end(&mut batches[n], nodes[n].sid(from), from, DOMAIN);
                    let sid = nodes[n].renew(from);
                    sim_cm::bound(&mut batches[n], sid, from, DOMAIN);
                    sim_cm::presence(&mut batches[n], sid, from, false, DOMAIN);
                    sent[2] += 1;
                }
            }
        }
        for (node, batch) in nodes.iter().zip(batches) {
            if !batch.is_empty() {
                node.send(batch).await?;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    // Grace for what is in flight (a reconnected session can lose a
    // message sent to it between its end and its new announcement).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let core_cpu = cpu(host.pid).unwrap_or_default().saturating_sub(cpu_before);
    let mut latencies = Vec::new();
    let (mut delivered, mut timed, mut kicks) = (0, 0, 0);
    for node in nodes {
        let c = node.take_counts();
        delivered += c.delivered;
        timed += c.timed;
        kicks += c.kicks;
        latencies.extend(c.latencies_us);
    }
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(f64::NAN, |us| *us as f64 / 1000.0)
    };
    Ok(LoadResult {
        sent,
        timed_sent: sent[0],
        timed_delivered: timed,
        delivered,
        kicks,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: latencies.last().map_or(f64::NAN, |us| *us as f64 / 1000.0),
        core_cpu,
        secs,
    })
}

/// Runs the whole simulation (module docs).
pub async fn run(opts: SimOptions) -> Result<()> {
    let users = *opts.steps.last().ok_or_else(|| anyhow!("no steps"))?;
    let population = Population {
        users,
        contacts: opts.contacts,
    };
    std::fs::create_dir_all(&opts.dir)?;
    certs::issue::init(&opts.dir.join("pki"), DOMAIN, opts.nodes, true)?;
    let mut host = Host::start(&opts.dir, population).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base_kib = rss_kib(host.pid).unwrap_or(0);
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    let mut nodes = connect_nodes(&endpoint, &opts.dir, host.quic, opts.nodes, users).await?;
    let mut held = 0;
    for &step in &opts.steps {
        let started = Instant::now();
        announce(&nodes, held, step).await?;
        until_sessions(host.admin, &nodes, step, Duration::from_secs(3600)).await?;
        let announced = started.elapsed();
        until_quiet(host.pid).await;
        let kib = rss_kib(host.pid).unwrap_or(0);
        let per = (kib.saturating_sub(base_kib) as f64 * 1024.0) / f64::from(step);
        let line = json!({
            "step": "hold", "sessions": step, "core_rss_kib": kib, "core_base_kib": base_kib,
            "bytes_per_session": per.round(),
            "announce_per_s": (f64::from(step - held) / announced.as_secs_f64()).round(),
        });
        println!("{line}");
        eprintln!(
            "hold {step}: core RSS {:.1} MiB, {:.0} B per session, announced at {:.0}/s",
            kib as f64 / 1024.0,
            per,
            f64::from(step - held) / announced.as_secs_f64()
        );
        held = step;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(15);
    let names = ["messages", "presences", "reconnects"];
    for (k, name) in names.iter().enumerate() {
        let mut rates = [0.0; 3];
        rates[k] = opts.alone[k];
        if rates[k] <= 0.0 {
            continue;
        }
        let r = load(&nodes, &host, population, rates, opts.secs, &mut rng).await?;
        report(&format!("alone:{name}"), rates, &r);
    }
    for &scale in &opts.mix_scales {
        let n = f64::from(users) * scale;
        let rates = [
            opts.mix.messages * n,
            opts.mix.presences * n,
            opts.mix.reconnects * n,
        ];
        let r = load(&nodes, &host, population, rates, opts.secs, &mut rng).await?;
        report(&format!("mix x{scale}"), rates, &r);
        if r.p99_ms > 50.0 || r.timed_delivered < r.timed_sent * 99 / 100 {
            break;
        }
    }
    if opts.rebuild {
        for node in &nodes {
            node.close();
        }
        host.kill().await?;
        host = Host::start(&opts.dir, population).await?;
        let started = Instant::now();
        nodes = connect_nodes(&endpoint, &opts.dir, host.quic, opts.nodes, users).await?;
        announce(&nodes, 0, users).await?;
        until_sessions(host.admin, &nodes, users, Duration::from_secs(3600)).await?;
        let took = started.elapsed();
        println!(
            "{}",
            json!({"step": "rebuild", "sessions": users, "secs": took.as_secs_f64()})
        );
        eprintln!(
            "rebuild: {users} sessions re-announced and routed in {:.2} s",
            took.as_secs_f64()
        );
    }
    for node in &nodes {
        node.close();
    }
    host.stop().await
}

fn report(name: &str, rates: [f64; 3], r: &LoadResult) {
    let events: u64 = r.sent.iter().sum();
    let cpu_us = r.core_cpu.as_secs_f64() * 1e6;
    let line = json!({
        "step": name, "rates": rates, "secs": r.secs, "sent": r.sent,
        "delivered": r.delivered, "timed_sent": r.timed_sent,
        "timed_delivered": r.timed_delivered, "kicks": r.kicks,
        "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "max_ms": r.max_ms,
        "core_cpu_s": r.core_cpu.as_secs_f64(),
        "core_cpu_us_per_event": cpu_us / events.max(1) as f64,
        "core_cpu_us_per_delivery": cpu_us / r.delivered.max(1) as f64,
    });
    println!("{line}");
    eprintln!(
        "{name}: sent {:?} in {:.1} s, delivered {} (timed {}/{}), kicks {}, p50 {:.2} p99 {:.2} max {:.1} ms, core CPU {:.1} µs/event, {:.1} µs/delivery",
        r.sent,
        r.secs,
        r.delivered,
        r.timed_delivered,
        r.timed_sent,
        r.kicks,
        r.p50_ms,
        r.p99_ms,
        r.max_ms,
        cpu_us / events.max(1) as f64,
        cpu_us / r.delivered.max(1) as f64
    );
}

/// The child: runs a core on the fixture until its standard input closes.
pub async fn host(dir: &Path, population: Population, muc_per_session: bool) -> Result<()> {
    let mut config = im_core::CoreConfig::new(DOMAIN, dir.join("data"), dir.join("pki"));
    config.muc_fanout_per_session = muc_per_session;
    config.listen = "127.0.0.1:0".parse()?;
    config.admin_listen = "127.0.0.1:0".parse()?;
    config.archive = false;
    std::fs::create_dir_all(&config.data_dir)?;
    let fixture = fixture::FixtureStore::new(population, DOMAIN, config.offline_quota);
    let core = im_core::start_with_store(config, move || {
        Ok(Box::new(fixture) as Box<dyn im_core::storage::Store>)
    })
    .await?;
    println!("ready {} {}", core.quic_addr, core.admin_addr);
    let _ = tokio::task::spawn_blocking(|| {
        use std::io::Read;
        let mut sink = [0u8; 64];
        while std::io::stdin().read(&mut sink).unwrap_or(0) > 0 {}
    })
    .await;
    core.shutdown().await;
    Ok(())
}
