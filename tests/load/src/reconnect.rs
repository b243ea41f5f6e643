//! `longlink-bench reconnect` (QUIC): how long a phone on a slow link takes
//! to log in, and to come back after losing its connection and have what
//! it missed, with SASL1 and with SASL2 (Bind2, inline resumption).
//!
//! The phone (account `PREFIX0`) reaches the server through a relay that
//! delays every datagram by `--delay-ms` each way ([`crate::relay`]); a
//! second account (`PREFIX1`), connected directly, sends it a message
//! while it is gone. Each attempt, per mode:
//!
//! - *login*: `Client::connect` from nothing until it returns (QUIC
//!   handshake, stream, SASL, bind, stream management on);
//! - *resume*: the connection dropped without a goodbye
//!   (`Client::abort`), one message sent to the phone meanwhile, then
//!   `Client::connect` with the saved SM id and `h` until that message has
//!   arrived.
//!
//! The relay's floor (a trivial UDP echo through it) is measured first;
//! times are also given in floor round trips. Everything a client does
//! locally (SCRAM's key derivation above all) is in the times, so a round
//! trip figure is an upper bound on the round trips the protocol needs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use client_sdk::{Client, ConnectOptions, Event, Mechanism};
use serde::Serialize;

use crate::relay::{self, UdpDelay};
use crate::report;

/// What to measure.
pub struct Plan {
    /// The CM's (or balancer's) QUIC address.
    pub server: SocketAddr,
    /// The cluster CA.
    pub ca: PathBuf,
    /// Accounts `{prefix}0` (the phone) and `{prefix}1` (the sender).
    pub prefix: String,
    /// Their password.
    pub password: String,
    /// The XMPP domain.
    pub domain: String,
    /// SASL mechanism.
    pub mechanism: Mechanism,
    /// Delay added each way.
    pub one_way: Duration,
    /// Attempts per mode (the median is reported).
    pub attempts: usize,
}

/// One line of the result.
#[derive(Serialize)]
struct Row {
    mode: &'static str,
    step: &'static str,
    one_way_ms: u64,
    floor_rtt_ms: f64,
    attempts: usize,
    median_ms: f64,
    max_ms: f64,
    round_trips: f64,
}

/// Runs the plan and reports one row per mode and step.
pub async fn run(plan: Plan) -> Result<()> {
    let floor = relay::floor(plan.one_way, 20).await?;
    eprintln!(
        "relay floor: {:.1} ms for a UDP echo through {} ms each way",
        ms(floor),
        plan.one_way.as_millis()
    );
    let relay = UdpDelay::start(plan.server, plan.one_way).await?;
    let sender = Client::connect(options(&plan, plan.server, 1))
        .await
        .context("the sender logs in")?;
    for (mode, sasl2) in [("sasl1", false), ("sasl2", true)] {
        let mut logins = Vec::new();
        let mut resumes = Vec::new();
        for attempt in 0..plan.attempts {
            let (login, resume) = attempt_once(&plan, &relay, &sender, sasl2, attempt)
                .await
                .with_context(|| format!("{mode} attempt {attempt}"))?;
            logins.push(login);
            resumes.push(resume);
        }
        for (step, times) in [("login", &mut logins), ("resume", &mut resumes)] {
            emit(&plan, floor, mode, step, times);
        }
    }
    sender.disconnect().await;
    Ok(())
}

/// One login and one resume; their durations.
async fn attempt_once(
    plan: &Plan,
    relay: &UdpDelay,
    sender: &Client,
    sasl2: bool,
    attempt: usize,
) -> Result<(Duration, Duration)> {
    let opts = |o: ConnectOptions| if sasl2 { o } else { o.with_sasl1_only() };
    let start = Instant::now();
    let mut phone = Client::connect(opts(options(plan, relay.addr, 0)))
        .await
        .context("the phone logs in")?;
    let login = start.elapsed();
    anyhow::ensure!(
        phone.used_sasl2() == sasl2,
        "SASL2 used: {}",
        phone.used_sasl2()
    );
    // settle: the server's acks of the login arrive, nothing is pending
    let settle = (plan.one_way * 4).max(Duration::from_millis(200));
    while tokio::time::timeout(settle, phone.next_event())
        .await
        .is_ok_and(|e| e.is_some())
    {}
    let saved = phone.resumption().context("a resumable session")?;
    let full = phone.jid().to_owned();
    phone.abort();
    let body = format!("missed {attempt} sasl2={sasl2}");
    sender.send_message(&full, &body).await?;
    // (it reaches the phone's detached session at the server)
    tokio::time::sleep(Duration::from_millis(300)).await;

    let start = Instant::now();
    let mut phone = Client::connect(
        opts(options(plan, relay.addr, 0)).with_previous_session(&saved.0, saved.1),
    )
    .await
    .context("the phone resumes")?;
    anyhow::ensure!(phone.was_resumed(), "the session was resumed");
    loop {
        match tokio::time::timeout(Duration::from_secs(10), phone.next_event()).await {
            Ok(Some(Event::Message(m))) if m.body.as_deref() == Some(body.as_str()) => break,
            Ok(Some(_)) => {}
            other => anyhow::bail!("the missed message did not arrive: {other:?}"),
        }
    }
    let resume = start.elapsed();
    phone.disconnect().await;
    Ok((login, resume))
}

fn options(plan: &Plan, server: SocketAddr, i: usize) -> ConnectOptions {
    let jid = format!("{}{i}@{}", plan.prefix, plan.domain);
    ConnectOptions::new(server, &jid, &plan.password)
        .with_ca_file(&plan.ca)
        .with_mechanism(plan.mechanism)
        .with_receipts(false)
}

fn emit(
    plan: &Plan,
    floor: Duration,
    mode: &'static str,
    step: &'static str,
    times: &mut [Duration],
) {
    times.sort();
    let median = times.get(times.len() / 2).copied().unwrap_or_default();
    let max = times.last().copied().unwrap_or_default();
    let row = Row {
        mode,
        step,
        one_way_ms: plan.one_way.as_millis() as u64,
        floor_rtt_ms: ms(floor),
        attempts: times.len(),
        median_ms: ms(median),
        max_ms: ms(max),
        round_trips: median.as_secs_f64() / floor.as_secs_f64().max(f64::EPSILON),
    };
    let human = format!(
        "{mode:6} {step:7} median {:7.1} ms  max {:7.1} ms  = {:.1} round trips",
        row.median_ms, row.max_ms, row.round_trips
    );
    report::emit(&row, human);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
