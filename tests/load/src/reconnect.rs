//! `longlink-bench reconnect` (QUIC): how long a phone on a slow link takes
//! to log in, and to come back after losing its connection and have what
//! it missed, with SASL1, with SASL2 (Bind2, inline resumption) and
//! SCRAM, and with SASL2 and a FAST token (XEP-0484) after the first login.
//!
//! The phone (account `PREFIX0`) reaches the server through a relay that
//! delays every datagram by `--delay-ms` each way ([`crate::relay`]); a
//! second account (`PREFIX1`), connected directly, sends it a message
//! while it is gone. Each attempt, per mode:
//!
//! - *login*: `Client::connect` from nothing until it returns (QUIC
//!   handshake, stream, SASL, bind, stream management on);
//!   (login ends when stream management is on: with SASL1 that is after
//!   `connect` returns);
//! - *resume*: the connection dropped without a goodbye
//!   (`Client::abort`), one message sent to the phone meanwhile, then a
//!   new client's `Client::connect` with the saved SM id and `h` until
//!   that message has arrived (an app the OS killed, started again);
//! - *reconnect*: the relay cuts the network, one message is sent to the
//!   phone, the phone notices the loss (its `<r/>` unanswered for
//!   [`ACK_TIMEOUT`]) and reconnects by itself; timed from its
//!   `ConnectionLost` event until that message has arrived. This client
//!   knows the server's SASL2 offer from its last connection and writes
//!   its `<authenticate/>` in the stream header's flight.
//!
//! In mode `fast` the login (with the password) gets a token, the resume's
//! new client is given it (as an app that saved it would) and the
//! reconnection uses it: the tool checks that each of them authenticated
//! with the token.
//!
//! With `--tls-server` (a CM's direct TLS port) the login and the resume
//! are also timed over TCP + TLS 1.3, through a TCP relay that delays every
//! chunk the same way ([`crate::relay::TcpDelay`]; it accepts TCP itself,
//! so the TCP handshake is not in those figures), driving the stream by
//! hand (`client_sdk::transport`), as the SDK speaks QUIC only.
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

use client_sdk::transport::{Dialer, Transport};
use xmpp_stream::{ns, sasl2};

use crate::relay::{self, TcpDelay, UdpDelay};
use crate::report;

/// The phone's acknowledgement timeout: how soon it notices the cut.
const ACK_TIMEOUT: Duration = Duration::from_secs(1);

/// How the phone authenticates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Login {
    /// RFC 6120 SASL, a restart, bind or resume.
    Sasl1,
    /// SASL2 with the password (SCRAM) every time.
    Sasl2,
    /// SASL2, the password at login, a FAST token afterwards, QUIC 0-RTT
    /// where the server allows it.
    Fast,
    /// As `Fast`, without 0-RTT.
    Fast1Rtt,
}

impl Login {
    fn fast(self) -> bool {
        matches!(self, Login::Fast | Login::Fast1Rtt)
    }
}

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
    /// A CM's direct TLS address (XEP-0368): the same login and resume
    /// over TCP + TLS 1.3 too (the client side by hand, as the SDK speaks
    /// QUIC only).
    pub tls: Option<SocketAddr>,
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
    for (mode, login) in [
        ("sasl1", Login::Sasl1),
        ("sasl2", Login::Sasl2),
        ("fast-1rtt", Login::Fast1Rtt),
        ("fast", Login::Fast),
    ] {
        let mut logins = Vec::new();
        let mut resumes = Vec::new();
        let mut reconnects = Vec::new();
        for attempt in 0..plan.attempts {
            let times = attempt_once(&plan, &relay, &sender, login, attempt)
                .await
                .with_context(|| format!("{mode} attempt {attempt}"))?;
            logins.push(times.login);
            resumes.push(times.resume);
            reconnects.push(times.reconnect);
        }
        for (step, times) in [
            ("login", &mut logins),
            ("resume", &mut resumes),
            ("reconnect", &mut reconnects),
        ] {
            emit(&plan, floor, mode, step, times);
        }
    }
    if let Some(tls) = plan.tls {
        let relay = TcpDelay::start(tls, plan.one_way).await?;
        let roots = client_sdk::load_roots(&plan.ca)?;
        let dialer = Dialer::new(relay.addr, &plan.domain, Transport::Tls, roots)?;
        for (mode, how) in [
            ("tls-sasl1", Login::Sasl1),
            ("tls-sasl2", Login::Sasl2),
            ("tls-fast", Login::Fast),
        ] {
            let mut logins = Vec::new();
            let mut resumes = Vec::new();
            for attempt in 0..plan.attempts {
                let (login, resume) = tls_attempt(&plan, &dialer, &sender, how, attempt)
                    .await
                    .with_context(|| format!("{mode} attempt {attempt}"))?;
                logins.push(login);
                resumes.push(resume);
            }
            emit(&plan, floor, mode, "login", &mut logins);
            emit(&plan, floor, mode, "resume", &mut resumes);
        }
    }
    sender.disconnect().await;
    Ok(())
}

/// Over direct TLS: a login (until stream management is enabled) and,
/// after the TCP connection was dropped and a message sent meanwhile, a
/// resumption until that message has arrived. With `Login::Fast` the
/// login asks for a FAST token (`HT-SHA-256-NONE`) and the resumption's
/// `<authenticate/>` uses it, written in the stream header's flight.
async fn tls_attempt(
    plan: &Plan,
    dialer: &Dialer,
    sender: &Client,
    how: Login,
    attempt: usize,
) -> Result<(Duration, Duration)> {
    const HT: &str = "HT-SHA-256-NONE";
    let sasl2 = how != Login::Sasl1;
    let user = format!("{}0", plan.prefix);
    let user_agent = Some(sasl2::UserAgent {
        id: Some(format!("bench-tls-{attempt}")),
        ..sasl2::UserAgent::default()
    });
    let start = Instant::now();
    let mut io = dialer.connect(None).await?.io;
    let features = io.element().await?;
    let mut token = None;
    let (full, sm_id) = if sasl2 {
        let request = sasl2::Authenticate {
            user_agent: user_agent.clone(),
            request_token: (how == Login::Fast).then(|| HT.to_owned()),
            bind: Some(sasl2::BindRequest {
                tag: Some("bench".into()),
                sm: Some(sasl2::SmEnable {
                    resume: true,
                    max: 0,
                }),
                ..sasl2::BindRequest::default()
            }),
            ..sasl2::Authenticate::default()
        };
        let outcome = io
            .sasl2(request, &user, &plan.password, plan.mechanism)
            .await?;
        let enabled = outcome
            .success
            .inline("bound", ns::BIND2)
            .and_then(|b| b.child("enabled", ns::SM).and_then(|e| e.attr("id")))
            .context("SM enabled in the Bind2 answer")?
            .to_owned();
        token = outcome
            .success
            .inline("token", ns::FAST)
            .and_then(sasl2::Token::parse);
        anyhow::ensure!(
            token.is_some() == (how == Login::Fast),
            "a FAST token only in mode fast"
        );
        (outcome.success.authorization_identifier.clone(), enabled)
    } else {
        io.sasl1(&features, &user, &plan.password, plan.mechanism, None)
            .await?;
        io.open(&plan.domain).await?;
        let features = io.element().await?;
        let full = io.bind(&features, None).await?;
        io.write(&xmpp_stream::stream::sm_element(
            "enable",
            &[("resume", "true")],
        ))
        .await?;
        let enabled = io.element().await?;
        let id = enabled.attr("id").context("<enabled id/>")?.to_owned();
        (full, id)
    };
    let login = start.elapsed();
    // gone without a goodbye; a message comes meanwhile
    drop(io);
    let body = format!("missed over TLS {attempt} {how:?}");
    sender.send_message(&full, &body).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let start = Instant::now();
    if let Some(token) = token {
        // the header and the token's <authenticate/> in one flight
        let ht = xmpp_sasl::HtClient::new(
            xmpp_sasl::HtMechanism::Sha256None,
            &user,
            &token.token,
            &xmpp_sasl::ChannelBindings::none(),
        )?;
        let request = sasl2::Authenticate {
            mechanism: HT.to_owned(),
            initial_response: Some(ht.initial_response()),
            user_agent,
            fast: Some(sasl2::FastUse {
                count: Some(1),
                invalidate: false,
            }),
            resume: Some(sasl2::Resume {
                previd: sm_id.clone(),
                h: 0,
            }),
            ..sasl2::Authenticate::default()
        };
        let flight = request.to_element().to_bytes(ns::CLIENT);
        let mut io = dialer.connect_with(None, &flight).await?.io;
        let _features = io.element().await?;
        let success = io.element().await?;
        anyhow::ensure!(
            success.name == "success" && success.ns == ns::SASL2,
            "a SASL2 success: <{}/>",
            success.name
        );
        let success = sasl2::Success::parse(&success)?;
        ht.verify_responder(&success.additional_data)?;
        anyhow::ensure!(
            success.inline("resumed", ns::SM).is_some(),
            "resumed inline"
        );
        wait_for_raw(&mut io, &body).await?;
        let resume = start.elapsed();
        let _ = io.write(b"</stream:stream>").await;
        return Ok((login, resume));
    }
    let mut io = dialer.connect(None).await?.io;
    let features = io.element().await?;
    if sasl2 {
        let request = sasl2::Authenticate {
            resume: Some(sasl2::Resume {
                previd: sm_id,
                h: 0,
            }),
            ..sasl2::Authenticate::default()
        };
        let outcome = io
            .sasl2(request, &user, &plan.password, plan.mechanism)
            .await?;
        anyhow::ensure!(
            outcome.success.inline("resumed", ns::SM).is_some(),
            "resumed inline"
        );
    } else {
        io.sasl1(&features, &user, &plan.password, plan.mechanism, None)
            .await?;
        io.open(&plan.domain).await?;
        io.element().await?;
        anyhow::ensure!(io.resume(&sm_id, 0).await?.is_some(), "resumed");
    }
    wait_for_raw(&mut io, &body).await?;
    let resume = start.elapsed();
    let _ = io.write(b"</stream:stream>").await;
    Ok((login, resume))
}

/// Reads a hand-driven stream until a message with `body`.
async fn wait_for_raw(io: &mut client_sdk::transport::Io, body: &str) -> Result<()> {
    loop {
        let el = tokio::time::timeout(Duration::from_secs(10), io.element())
            .await
            .context("the missed message")??;
        if el.name == "message"
            && el.child("body", ns::CLIENT).map(|b| b.text()).as_deref() == Some(body)
        {
            return Ok(());
        }
    }
}

/// The durations of one attempt's steps.
struct Times {
    login: Duration,
    resume: Duration,
    reconnect: Duration,
}

/// One login, one resume by a new client (an app started again), one
/// reconnection of a client that lost its network.
async fn attempt_once(
    plan: &Plan,
    relay: &UdpDelay,
    sender: &Client,
    how: Login,
    attempt: usize,
) -> Result<Times> {
    let sasl2 = how != Login::Sasl1;
    let ua = format!("bench-phone-{attempt}");
    let opts = |o: ConnectOptions| match how {
        Login::Sasl1 => o.with_sasl1_only(),
        Login::Sasl2 => o.with_fast(false).with_zero_rtt(false),
        Login::Fast => o.with_user_agent_id(&ua),
        Login::Fast1Rtt => o.with_user_agent_id(&ua).with_zero_rtt(false),
    };
    let start = Instant::now();
    let mut phone = Client::connect(opts(options(plan, relay.addr, 0)))
        .await
        .context("the phone logs in")?;
    // (SASL1 enables stream management after `connect` returns)
    while phone.resumption().is_none() {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(10), "SM enabled");
        let _ = tokio::time::timeout(Duration::from_millis(1), phone.next_event()).await;
    }
    let login = start.elapsed();
    anyhow::ensure!(
        phone.used_sasl2() == sasl2,
        "SASL2 used: {}",
        phone.used_sasl2()
    );
    settle(plan, &mut phone).await;
    let saved = phone.resumption().context("a resumable session")?;
    let token = phone.fast_token();
    anyhow::ensure!(
        token.is_some() == how.fast(),
        "a FAST token only in the fast modes"
    );
    let full = phone.jid().to_owned();
    phone.abort();
    let body = format!("missed {attempt} {how:?}");
    sender.send_message(&full, &body).await?;
    // (it reaches the phone's detached session at the server)
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut again = opts(options(plan, relay.addr, 0)).with_previous_session(&saved.0, saved.1);
    if let Some(token) = token {
        again = again.with_fast_token(token);
    }
    let start = Instant::now();
    let mut phone = Client::connect(again).await.context("the phone resumes")?;
    anyhow::ensure!(phone.was_resumed(), "the session was resumed");
    anyhow::ensure!(
        phone.fast_logins() == u64::from(how.fast()),
        "the resume authenticated with the token only in the fast modes"
    );
    wait_for(&mut phone, &body).await?;
    let resume = start.elapsed();

    // The network goes; the phone notices when its `<r/>` goes unanswered
    // (the acknowledgement timeout, short here) and comes back by itself.
    settle(plan, &mut phone).await;
    relay.cut().await;
    let body = format!("missed while cut {attempt} {how:?}");
    sender.send_message(&full, &body).await?;
    phone.send_message(sender.jid(), "anyone there?").await?;
    let lost = loop {
        match tokio::time::timeout(Duration::from_secs(10), phone.next_event()).await {
            Ok(Some(Event::ConnectionLost(_))) => break Instant::now(),
            Ok(Some(_)) => {}
            other => anyhow::bail!("the loss was not noticed: {other:?}"),
        }
    };
    let mut resumed = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), phone.next_event()).await {
            Ok(Some(Event::Reconnected { resumed: r })) => resumed = r,
            Ok(Some(Event::Message(m))) if m.body.as_deref() == Some(body.as_str()) => break,
            Ok(Some(_)) => {}
            other => anyhow::bail!("the missed message did not arrive: {other:?}"),
        }
    }
    let reconnect = lost.elapsed();
    anyhow::ensure!(resumed, "the reconnection resumed the session");
    anyhow::ensure!(
        phone.fast_logins() == 2 * u64::from(how.fast()),
        "the reconnection authenticated with the token only in the fast modes"
    );
    anyhow::ensure!(
        phone.zero_rtt_logins() == u64::from(how == Login::Fast),
        "the reconnection went as 0-RTT data in mode fast only: {}",
        phone.zero_rtt_logins()
    );
    phone.disconnect().await;
    Ok(Times {
        login,
        resume,
        reconnect,
    })
}

/// Waits until the phone has heard nothing for a while (the server's acks
/// of what came before have arrived).
async fn settle(plan: &Plan, phone: &mut Client) {
    let quiet = (plan.one_way * 4).max(Duration::from_millis(200));
    while tokio::time::timeout(quiet, phone.next_event())
        .await
        .is_ok_and(|e| e.is_some())
    {}
}

/// Reads events until a message with `body`.
async fn wait_for(phone: &mut Client, body: &str) -> Result<()> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), phone.next_event()).await {
            Ok(Some(Event::Message(m))) if m.body.as_deref() == Some(body) => return Ok(()),
            Ok(Some(_)) => {}
            other => anyhow::bail!("the missed message did not arrive: {other:?}"),
        }
    }
}

fn options(plan: &Plan, server: SocketAddr, i: usize) -> ConnectOptions {
    let jid = format!("{}{i}@{}", plan.prefix, plan.domain);
    let mut options = ConnectOptions::new(server, &jid, &plan.password)
        .with_ca_file(&plan.ca)
        .with_mechanism(plan.mechanism)
        .with_receipts(false);
    options.ack_timeout = ACK_TIMEOUT;
    options
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
        "{mode:6} {step:9} median {:7.1} ms  max {:7.1} ms  = {:.1} round trips",
        row.median_ms, row.max_ms, row.round_trips
    );
    report::emit(&row, human);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
