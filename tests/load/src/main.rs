//! `longlink-bench`: an XMPP load tool. It speaks XMPP over plain TCP,
//! STARTTLS, direct TLS and QUIC (XEP-0467), so the same scenarios drive
//! longlink, ejabberd and Prosody; thousands of users from one process,
//! SCRAM keys cached so the tool does not burn the CPU it measures.
//! Results: JSON lines on stdout, a table on stderr. See docs/BENCHMARKS.md.

mod chat;
mod idle;
mod login;
mod reconnect;
mod relay;
mod report;
mod scale;
mod switch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use client_sdk::Mechanism;
use client_sdk::transport::{Dialer, Transport};

use longlink_bench::{procstat, user};

use crate::procstat::Watched;
pub use crate::user::close_endpoints;
use crate::user::{Online, Setup, login};

/// Command line.
#[derive(Parser)]
#[command(
    name = "longlink-bench",
    about = "XMPP load tool: idle, chat, login, migrate, scale (and `longlink-bench chaos --help`, `longlink-bench switch --help`)"
)]
struct Cli {
    /// Server address (a CM's or balancer's, or ejabberd's/Prosody's port).
    #[arg(long)]
    server: SocketAddr,
    /// XMPP domain (also the certificate's name).
    #[arg(long)]
    domain: String,
    /// plain, starttls, tls or quic.
    #[arg(long, default_value = "starttls")]
    transport: Transport,
    /// CA certificate to trust (PEM); needed by every transport but plain.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Accounts are PREFIX0 … PREFIX{N-1}.
    #[arg(long, default_value = "load")]
    prefix: String,
    /// Their password.
    #[arg(long, default_value = "load")]
    password: String,
    /// SASL mechanism: SCRAM-SHA-256, SCRAM-SHA-1 or PLAIN.
    #[arg(long, default_value = "SCRAM-SHA-1")]
    mechanism: String,
    /// Local addresses TCP connections leave from, in turn (comma-separated;
    /// e.g. 127.0.0.1,127.0.0.2 to hold more than ~28 000 connections to one
    /// loopback server).
    #[arg(long, value_delimiter = ',')]
    tcp_sources: Vec<std::net::IpAddr>,
    /// Server processes to measure, as name=PID (repeatable).
    #[arg(long = "pid")]
    pids: Vec<Watched>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// N users log in, send presence and stay idle: memory per session.
    Idle {
        /// Users.
        #[arg(long, default_value_t = 1000)]
        users: usize,
        /// Seconds to let the servers settle before reading their memory.
        #[arg(long, default_value_t = 5)]
        settle: u64,
        /// Seconds of silence over which idle CPU and wakeups are measured.
        #[arg(long, default_value_t = 10)]
        measure: u64,
    },
    /// N users chat to their neighbours at rising total rates.
    Chat {
        /// Users.
        #[arg(long, default_value_t = 1000)]
        users: usize,
        /// Total messages per second, one step each (comma-separated).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "1000,2500,5000,7500,10000"
        )]
        rates: Vec<u64>,
        /// Measured seconds per step.
        #[arg(long, default_value_t = 10)]
        step_secs: u64,
        /// Seconds at a new rate before measuring.
        #[arg(long, default_value_t = 2)]
        warmup_secs: u64,
    },
    /// Logins per second (connect, SASL, bind, presence, close) at rising concurrency.
    Login {
        /// Accounts to cycle through.
        #[arg(long, default_value_t = 1000)]
        users: usize,
        /// Concurrent logins, one step each (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
        concurrency: Vec<usize>,
        /// Seconds per step.
        #[arg(long, default_value_t = 10)]
        step_secs: u64,
    },
    /// Creates the accounts by in-band registration (XEP-0077), 16 at a time.
    Register {
        /// Accounts.
        #[arg(long, default_value_t = 1000)]
        users: usize,
    },
    /// Many phones on one server: N log in (timed), idle (measured), then A
    /// of them chat at R msg/s and, in a second step, move (QUIC) while chatting.
    Scale {
        /// Users.
        #[arg(long, default_value_t = 100_000)]
        users: usize,
        /// Users that chat (and move); the rest idle.
        #[arg(long, default_value_t = 1000)]
        active: usize,
        /// Total messages per second among the active users.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Measured seconds per step.
        #[arg(long, default_value_t = 20)]
        secs: u64,
        /// Seconds to let the servers settle before reading their memory.
        #[arg(long, default_value_t = 10)]
        settle: u64,
    },
    /// QUIC only: login and resume times of a phone behind a relay that
    /// adds a delay each way, with SASL1 and with SASL2 (accounts PREFIX0
    /// and PREFIX1).
    Reconnect {
        /// Delay added each way, in milliseconds.
        #[arg(long, default_value_t = 50)]
        delay_ms: u64,
        /// Attempts per mode (the median is reported).
        #[arg(long, default_value_t = 5)]
        attempts: usize,
        /// A CM's direct TLS address: measure TCP + TLS too.
        #[arg(long)]
        tls_server: Option<SocketAddr>,
    },
    /// QUIC only: clients chat while each moves to a new UDP port every T seconds.
    Migrate {
        /// Clients.
        #[arg(long, default_value_t = 200)]
        users: usize,
        /// Total messages per second.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Seconds between moves of one client.
        #[arg(long, default_value_t = 5)]
        every: u64,
        /// Measured seconds.
        #[arg(long, default_value_t = 20)]
        secs: u64,
    },
}

/// `longlink-bench chaos`: its own command line (it starts the servers
/// itself, so it takes none of the others' server options).
#[derive(Parser)]
#[command(
    name = "longlink-bench chaos",
    about = "Kill and restart longlink processes under chat traffic; check that nothing acknowledged is lost"
)]
struct ChaosCli {
    /// The `longlink` binary to run the deployment with.
    #[arg(long)]
    longlink: PathBuf,
    /// The one-minute CI variant (60 users) instead of the five-minute one (300).
    #[arg(long)]
    short: bool,
    /// Seed of the kill schedule and the clients' choices (random if absent; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Users (overrides the variant's).
    #[arg(long)]
    users: Option<usize>,
    /// Seconds of chaos (overrides the variant's).
    #[arg(long)]
    secs: Option<u64>,
    /// Directory for PKI, data and logs (default: a new one in the temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the directory even if the run passed.
    #[arg(long)]
    keep: bool,
}

/// `longlink-bench switch`: the trivial server the tool's floor is read
/// against (see `switch.rs`).
#[derive(Parser)]
#[command(
    name = "longlink-bench switch",
    about = "A trivial plain-TCP XMPP message switch: the load tool's floor"
)]
struct SwitchCli {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:5299")]
    listen: SocketAddr,
    /// XMPP domain.
    #[arg(long, default_value = "floor.test")]
    domain: String,
}

async fn chaos_main() -> Result<()> {
    use longlink_bench::chaos;
    let cli = ChaosCli::parse_from(std::env::args().skip(1));
    let seed = cli.seed.unwrap_or_else(rand::random);
    let mut config = if cli.short {
        chaos::Config::short(&cli.longlink, seed)
    } else {
        chaos::Config::long(&cli.longlink, seed)
    };
    if let Some(users) = cli.users {
        config.users = users;
    }
    if let Some(secs) = cli.secs {
        config.duration = Duration::from_secs(secs);
        config.deadline = config.duration + config.settle + Duration::from_secs(180);
    }
    config.dir = cli.dir;
    config.keep = cli.keep;
    let report = tokio::select! {
        report = chaos::run(config) => report?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted (seed {seed}); every process it started is killed"),
    };
    println!("{report}");
    if !report.passed() {
        std::process::exit(1);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let chaos = std::env::args().nth(1).as_deref() == Some("chaos");
    tracing_subscriber::fmt()
        .with_env_filter(
            // the chaos run's clients warn at every kill; its report says what matters
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| if chaos { "error" } else { "warn" }.into()),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal, and never with NO_COLOR set.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    if chaos {
        return chaos_main().await;
    }
    if std::env::args().nth(1).as_deref() == Some("switch") {
        let cli = SwitchCli::parse_from(std::env::args().skip(1));
        return switch::serve(cli.listen, cli.domain).await;
    }
    let cli = Cli::parse();
    let ca_path = cli.ca.clone();
    let roots = match &cli.ca {
        Some(ca) => {
            client_sdk::load_roots(ca).with_context(|| format!("reading {}", ca.display()))?
        }
        None if cli.transport == Transport::Plain => rustls::RootCertStore::empty(),
        None => anyhow::bail!("--ca is needed for {:?}", cli.transport),
    };
    let mechanism = Mechanism::from_name(&cli.mechanism)
        .with_context(|| format!("unknown mechanism {}", cli.mechanism))?;
    let setup = Setup {
        dialer: Dialer::new(cli.server, &cli.domain, cli.transport, roots)?
            .with_tcp_sources(cli.tcp_sources),
        prefix: cli.prefix,
        password: cli.password,
        mechanism,
        cache: Arc::default(),
        resource: "load".into(),
    };
    match cli.scenario {
        Scenario::Idle {
            users,
            settle,
            measure,
        } => {
            let setup = Setup {
                resource: "idle".into(),
                ..setup
            };
            idle::run(setup, cli.pids, users, settle, measure).await
        }
        Scenario::Register { users } => register_all(&setup, users).await,
        Scenario::Chat {
            users,
            rates,
            step_secs,
            warmup_secs,
        } => {
            let plan = chat::Plan {
                users,
                rates,
                step_secs,
                warmup_secs,
                grace_secs: 2,
                move_every: None,
                move_from_step: 0,
            };
            chat::run(setup, cli.pids, plan).await
        }
        Scenario::Login {
            users,
            concurrency,
            step_secs,
        } => login::run(setup, cli.pids, users, concurrency, step_secs).await,
        Scenario::Scale {
            users,
            active,
            rate,
            secs,
            settle,
        } => {
            let setup = Setup {
                resource: "scale".into(),
                ..setup
            };
            let plan = scale::Plan {
                users,
                active,
                rate,
                secs,
                settle,
            };
            scale::run(setup, cli.pids, plan).await
        }
        Scenario::Reconnect {
            delay_ms,
            attempts,
            tls_server,
        } => {
            anyhow::ensure!(
                cli.transport == Transport::Quic,
                "reconnect needs --transport quic"
            );
            let plan = reconnect::Plan {
                server: cli.server,
                ca: ca_path.context("reconnect needs --ca")?,
                prefix: setup.prefix,
                password: setup.password,
                domain: cli.domain,
                mechanism: setup.mechanism,
                one_way: Duration::from_millis(delay_ms),
                attempts,
                tls: tls_server,
            };
            reconnect::run(plan).await
        }
        Scenario::Migrate {
            users,
            rate,
            every,
            secs,
        } => {
            anyhow::ensure!(
                cli.transport == Transport::Quic,
                "migrate needs --transport quic"
            );
            let plan = chat::Plan {
                users,
                rates: vec![rate],
                step_secs: secs,
                warmup_secs: 2,
                grace_secs: 3,
                move_every: Some(Duration::from_secs(every)),
                move_from_step: 0,
            };
            chat::run(setup, cli.pids, plan).await
        }
    }
}

async fn register_all(setup: &Setup, n: usize) -> Result<()> {
    let ep = match setup.dialer.transport() {
        Transport::Quic => Some(setup.dialer.endpoint()?),
        _ => None,
    };
    for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
        let handles: Vec<_> = chunk
            .iter()
            .map(|&i| {
                let (setup, ep) = (setup.clone(), ep.clone());
                tokio::spawn(async move { user::register(&setup, i, ep.as_ref()).await })
            })
            .collect();
        for (h, &i) in handles.into_iter().zip(chunk) {
            h.await?
                .with_context(|| format!("registering {}", setup.jid(i)))?;
        }
    }
    eprintln!("{n} accounts registered");
    Ok(())
}

/// QUIC endpoints for `n` users: one each when they must move on their own,
/// else one per 256 users. Empty for TCP transports.
pub fn endpoints(setup: &Setup, n: usize, own: bool) -> Result<Vec<quinn::Endpoint>> {
    let count = match (n, own) {
        (0, _) => 0,
        (n, true) => n,
        (n, false) => n.div_ceil(256),
    };
    (0..count)
        .map(|_| setup.dialer.endpoint().map_err(Into::into))
        .collect()
}

/// The endpoint user `i` uses.
pub fn endpoint_of(endpoints: &[quinn::Endpoint], i: usize, n: usize) -> Option<&quinn::Endpoint> {
    match endpoints.len() {
        0 => None,
        len if len == n => endpoints.get(i),
        len => endpoints.get(i % len),
    }
}

/// Logs users 0..n in, 64 at a time; returns each with its number. A few
/// failures are reported and tolerated (the users that logged in carry
/// on); more than 1 % fail the scenario.
pub async fn login_all(
    setup: &Setup,
    n: usize,
    endpoints: &[quinn::Endpoint],
) -> Result<Vec<(usize, Online)>> {
    login_range(setup, 0..n, endpoints).await
}

/// [`login_all`] for users `range`; the `k`-th of them uses the endpoint
/// [`endpoint_of`] gives `k` among `range.len()`.
pub async fn login_range(
    setup: &Setup,
    range: std::ops::Range<usize>,
    endpoints: &[quinn::Endpoint],
) -> Result<Vec<(usize, Online)>> {
    let (first, n) = (range.start, range.len());
    let mut online = Vec::with_capacity(n);
    let mut failed = Vec::new();
    // 64 logins in flight at any time
    let mut running = tokio::task::JoinSet::new();
    let mut next_user = range.into_iter();
    loop {
        while running.len() < 64 {
            let Some(i) = next_user.next() else { break };
            let (setup, ep) = (setup.clone(), endpoint_of(endpoints, i - first, n).cloned());
            running.spawn(async move { (i, login(&setup, i, ep.as_ref()).await) });
        }
        let Some(done) = running.join_next().await else {
            break;
        };
        match done? {
            (i, Ok(user)) => online.push((i, user)),
            (i, Err(_)) => failed.push(i),
        }
        let done_so_far = online.len() + failed.len();
        if n >= 10_000 && done_so_far.is_multiple_of(10_000) {
            eprintln!(
                "{} of {n} logins done ({} failed)",
                done_so_far,
                failed.len()
            );
        }
    }
    online.sort_unstable_by_key(|(i, _)| *i);
    // One more try each, one at a time: a burst of TLS handshakes can
    // overflow a server's accept queue, which is not what is measured here.
    let mut errors = Vec::new();
    for i in failed {
        let ep = endpoint_of(endpoints, i - first, n).cloned();
        match login(setup, i, ep.as_ref()).await {
            Ok(user) => online.push((i, user)),
            Err(e) => errors.push(format!("{}: {e:?}", setup.jid(i))),
        }
    }
    let failed = errors;
    if !failed.is_empty() {
        eprintln!("{} of {n} logins failed, e.g. {}", failed.len(), failed[0]);
        anyhow::ensure!(failed.len() * 100 <= n, "too many logins failed");
    }
    Ok(online)
}
