//! `scale`: many phones on one server. N users log in (the ramp is timed),
//! stay, and are measured idle (memory per session, CPU and wakeups); then
//! the first A of them chat at a total rate R while the rest idle, and in a
//! second step the A move to new UDP sockets (QUIC connection migration)
//! while they chat. Each active user has a UDP socket of its own; the idle
//! rest share one per 256 users (a client's socket costs the server nothing).

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::procstat::Watched;
use crate::report::emit;
use crate::user::Setup;

/// The knobs.
pub struct Plan {
    /// Users online.
    pub users: usize,
    /// Of them, the ones that chat (and move).
    pub active: usize,
    /// Total messages per second among the active ones.
    pub rate: u64,
    /// Measured seconds of each step.
    pub secs: u64,
    /// Seconds to let the servers settle before reading their memory.
    pub settle: u64,
}

/// The login ramp.
#[derive(Serialize)]
struct Ramp {
    scenario: &'static str,
    transport: String,
    users: usize,
    seconds: f64,
    logins_per_second: f64,
}

/// Runs the plan.
pub async fn run(setup: Setup, watched: Vec<Watched>, plan: Plan) -> anyhow::Result<()> {
    anyhow::ensure!(
        plan.active >= 2 && plan.active <= plan.users,
        "--active must be between 2 and --users"
    );
    let quic = setup.dialer.transport() == client_sdk::transport::Transport::Quic;
    let transport = format!("{:?}", setup.dialer.transport()).to_lowercase();
    let own = crate::endpoints(&setup, if quic { plan.active } else { 0 }, true)?;
    let idle_count = plan.users - plan.active;
    let shared = crate::endpoints(&setup, if quic { idle_count } else { 0 }, false)?;
    let before = crate::idle::rss_all(&watched);
    let started = Instant::now();
    let active = crate::login_range(&setup, 0..plan.active, &own).await?;
    let idle = crate::login_range(&setup, plan.active..plan.users, &shared).await?;
    let seconds = started.elapsed().as_secs_f64();
    let online = active.len() + idle.len();
    let ramp = Ramp {
        scenario: "scale-ramp",
        transport: transport.clone(),
        users: online,
        seconds,
        logins_per_second: online as f64 / seconds,
    };
    let human = format!(
        "scale: {online} users logged in over {transport} in {seconds:.1} s: {:.0} logins/s",
        ramp.logins_per_second
    );
    emit(&ramp, human);
    let held = crate::idle::Held::new(idle);
    crate::idle::report(&watched, &before, online, &transport, plan.settle, 10).await;
    let chat = crate::chat::Plan {
        users: plan.active,
        rates: vec![plan.rate, plan.rate],
        step_secs: plan.secs,
        warmup_secs: 2,
        grace_secs: 3,
        // each active user moves once per step, staggered over it
        move_every: quic.then(|| Duration::from_secs(plan.secs)),
        move_from_step: 1,
    };
    let result = crate::chat::run_online(&setup, &watched, &chat, active, &own).await;
    held.close().await;
    crate::close_endpoints(&own).await;
    crate::close_endpoints(&shared).await;
    result.map(|_| ())
}
