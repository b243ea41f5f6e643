//! `core-sim rooms`: what one group chat message costs the core, for
//! rooms of each size, with the per-CM fan-out frame (`DeliverMany`, one
//! frame per CM link) and with a frame per occupant (the core's
//! `muc_fanout_per_session`), side by side in one run on the same machine.
//!
//! For each mode a core host starts on the fixture store; simulated CMs
//! announce the sessions (stream management on, as phones have it) spread
//! over `nodes` nodes. For each size a room is made: session 0 joins
//! (owner), configures it (an instant room; only moderators' presence is
//! broadcast, so a join costs the room O(1), and room for every
//! occupant), the others join; once the core is quiet, `messages`
//! messages from an occupant are sent and all their copies awaited. The
//! core's CPU over that span (from /proc) and the delivery frames and
//! their bytes the CMs received, per message, are reported.
//!
//! The floor: right after the messages, the core's CPU over the same
//! span with nothing sent (the simulated CMs' acknowledgements and the
//! core's timers go on) is measured too and reported beside it, and the
//! net figure subtracts it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::BytesMut;
use cm_protocol::Kind;
use serde_json::json;

use super::fixture::Population;
use super::sim_cm::{self, NodeCounts, SimNode};
use super::{DOMAIN, Host, announce, connect_nodes, until_quiet, until_sessions};
use crate::procstat::cpu;

/// What to run.
#[derive(Clone, Debug)]
pub struct RoomOptions {
    /// Occupants of each room measured.
    pub sizes: Vec<u32>,
    /// Simulated CM nodes.
    pub nodes: u32,
    /// Copies to deliver in each room's measurement: a room of `size`
    /// gets `copies / size` messages (at least 20), so every size runs
    /// long enough for the core's CPU time (counted in 10 ms ticks) to
    /// mean something.
    pub copies: u64,
    /// Where the PKI and the core's data go.
    pub dir: PathBuf,
}

/// Sums and resets the nodes' counts.
fn take(nodes: &[SimNode]) -> NodeCounts {
    let mut sum = NodeCounts::default();
    for node in nodes {
        let c = node.take_counts();
        sum.delivered += c.delivered;
        sum.delivery_frames += c.delivery_frames;
        sum.delivery_bytes += c.delivery_bytes;
        sum.kicks += c.kicks;
        sum.other += c.other;
    }
    sum
}

/// Waits until the nodes have delivered `n` stanzas since the last
/// [`take`] (summing into `seen`).
async fn until_delivered(
    nodes: &[SimNode],
    seen: &mut NodeCounts,
    n: u64,
    limit: Duration,
) -> Result<()> {
    let started = Instant::now();
    loop {
        let c = take(nodes);
        seen.delivered += c.delivered;
        seen.delivery_frames += c.delivery_frames;
        seen.delivery_bytes += c.delivery_bytes;
        seen.kicks += c.kicks;
        if seen.kicks > 0 {
            bail!("the core ended {} sessions", seen.kicks);
        }
        if seen.delivered >= n {
            return Ok(());
        }
        if started.elapsed() > limit {
            bail!("{} of {n} deliveries within {limit:?}", seen.delivered);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends, from the nodes that hold them, a stanza built for each session.
async fn each(
    nodes: &[SimNode],
    sessions: impl Iterator<Item = u32>,
    mut build: impl FnMut(&mut BytesMut, &SimNode, u32),
) -> Result<()> {
    let mut batches: Vec<BytesMut> = nodes.iter().map(|_| BytesMut::new()).collect();
    for i in sessions {
        let n = (i % nodes.len() as u32) as usize;
        build(&mut batches[n], &nodes[n], i);
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

fn join(out: &mut BytesMut, node: &SimNode, i: u32, room: &str) {
    sim_cm::stanza(
        out,
        node.sid(i),
        sim_cm::header(i, DOMAIN, Kind::Presence, None, &format!("{room}/u{i}")),
        format!(
            "<presence from='u{i}@{DOMAIN}/sim' to='{room}/u{i}'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='0'/></x></presence>"
        ),
    );
}

/// Messages sent before waiting for their copies (see [`measure`]).
const CHUNK: u32 = 1000;

/// One room of `size`: made, joined, then `messages` sent to it.
async fn measure(
    nodes: &[SimNode],
    host: &Host,
    size: u32,
    messages: u32,
    mode: &str,
) -> Result<()> {
    let room = format!("r{size}@conference.{DOMAIN}");
    take(nodes);
    let mut seen = NodeCounts::default();
    // the owner joins (its own presence and the subject) …
    each(nodes, 0..1, |b, n, i| join(b, n, i, &room)).await?;
    until_delivered(nodes, &mut seen, 2, Duration::from_secs(30)).await?;
    // … and configures an instant room (the result)
    each(nodes, 0..1, |b, n, i| {
        sim_cm::stanza(
            b,
            n.sid(i),
            sim_cm::header(i, DOMAIN, Kind::Iq, Some("set"), &room),
            format!(
                "<iq from='u{i}@{DOMAIN}/sim' to='{room}' type='set' id='cfg'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_maxusers'><value>none</value></field><field var='muc#roomconfig_presencebroadcast'><value>moderator</value></field></x></query></iq>"
            ),
        )
    })
    .await?;
    until_delivered(nodes, &mut seen, 3, Duration::from_secs(30)).await?;
    // everyone else joins: each gets the owner's presence, its own and the subject
    let seen_before = seen.delivered;
    each(nodes, 1..size, |b, n, i| join(b, n, i, &room)).await?;
    let joins = u64::from(size - 1) * 3;
    until_delivered(
        nodes,
        &mut seen,
        seen_before + joins,
        Duration::from_secs(600),
    )
    .await?;
    until_quiet(host.pid).await;
    take(nodes);
    // the messages, from occupant 1 (or the owner in a room of one)
    let speaker = u32::from(size > 1);
    let cpu_before = cpu(host.pid).unwrap_or_default();
    let started = Instant::now();
    let mut seen = NodeCounts::default();
    let n = (speaker % nodes.len() as u32) as usize;
    let mut batch = BytesMut::new();
    for m in 0..messages {
        // in chunks of CHUNK messages, each delivered before the next is
        // sent: an SM session's ledger keeps 2048 unacknowledged stanzas
        // (a room's copies beyond are dropped, as for any stanza but a
        // chat message), and the simulated CMs acknowledge every 50 ms
        if m > 0 && m % CHUNK == 0 {
            if !batch.is_empty() {
                nodes[n].send(std::mem::take(&mut batch)).await?;
            }
            let due = u64::from(m) * u64::from(size);
            until_delivered(nodes, &mut seen, due, Duration::from_secs(600)).await?;
        }
        sim_cm::stanza(
            &mut batch,
            nodes[n].sid(speaker),
            sim_cm::header(speaker, DOMAIN, Kind::Message, Some("groupchat"), &room),
            format!(
                "<message from='u{speaker}@{DOMAIN}/sim' to='{room}' type='groupchat' id='m{m}'><body>message {m} to the room, of an ordinary length for a chat line</body></message>"
            ),
        );
        if batch.len() > 32 * 1024 {
            nodes[n].send(std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        nodes[n].send(batch).await?;
    }
    let copies = u64::from(messages) * u64::from(size);
    until_delivered(nodes, &mut seen, copies, Duration::from_secs(1200)).await?;
    let span = started.elapsed();
    let secs = span.as_secs_f64();
    let core_cpu = cpu(host.pid).unwrap_or_default().saturating_sub(cpu_before);
    // the floor: as long again with nothing sent
    let idle_before = cpu(host.pid).unwrap_or_default();
    tokio::time::sleep(span).await;
    let idle = cpu(host.pid)
        .unwrap_or_default()
        .saturating_sub(idle_before);
    let per = f64::from(messages);
    let cpu_us = core_cpu.as_secs_f64() * 1e6 / per;
    let idle_us = idle.as_secs_f64() * 1e6 / per;
    let net_us = (cpu_us - idle_us).max(0.0);
    let frames = seen.delivery_frames as f64 / per;
    let bytes = seen.delivery_bytes as f64 / per;
    println!(
        "{}",
        json!({
            "step": "room", "mode": mode, "occupants": size, "nodes": nodes.len(),
            "messages": messages, "copies": seen.delivered, "secs": secs,
            "core_cpu_us_per_message": cpu_us,
            "idle_cpu_us_per_message": idle_us,
            "net_core_cpu_us_per_message": net_us,
            "link_frames_per_message": frames,
            "link_bytes_per_message": bytes,
        })
    );
    eprintln!(
        "{mode}: room of {size} on {} CMs: {cpu_us:.0} µs core CPU ({idle_us:.0} idle, {net_us:.0} net), {frames:.1} frames, {bytes:.0} B on the CM links per message ({} copies in {secs:.1} s)",
        nodes.len(),
        seen.delivered
    );
    Ok(())
}

/// Runs both modes (module docs).
pub async fn run(opts: RoomOptions) -> Result<()> {
    let users = opts.sizes.iter().copied().max().unwrap_or(0).max(2);
    let population = Population { users, contacts: 0 };
    std::fs::create_dir_all(&opts.dir)?;
    certs::issue::init(&opts.dir.join("pki"), DOMAIN, opts.nodes, true)?;
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    for (mode, extra) in [
        ("fan-out frame", &[][..]),
        ("frame per occupant", &["--muc-per-session"][..]),
    ] {
        let host = Host::start_with(&opts.dir, population, extra).await?;
        let nodes = connect_nodes(&endpoint, &opts.dir, host.quic, opts.nodes, users).await?;
        announce(&nodes, 0, users).await?;
        until_sessions(host.admin, &nodes, users, Duration::from_secs(600)).await?;
        until_quiet(host.pid).await;
        for &size in &opts.sizes {
            let size = size.max(1);
            let messages = (opts.copies / u64::from(size)).clamp(20, u64::from(u32::MAX)) as u32;
            measure(&nodes, &host, size, messages, mode).await?;
        }
        for node in &nodes {
            node.close();
        }
        host.stop().await?;
    }
    Ok(())
}
