//! A simulated CM: the real CM↔core protocol (mutual-TLS QUIC, its ALPN,
//! the frame codec) with a node certificate of the
//! cluster, holding sessions that are only numbers. CMs are trusted to
//! bind authenticated users, so the simulation announces its sessions as a
//! CM does after a core restart (`Announce` with stream-management
//! counters) instead of logging each one in.
//!
//! Session `i` (user `u{i}`) lives on node `i % nodes`; its session id is
//! `i` plus its generation (how often it reconnected) in the high 32 bits,
//! since a CM never reuses a session id.
//! The reader counts what the core delivers, acknowledges it as a phone's
//! SDK would (`Acked` with the session's count, every 50 ms for the
//! sessions that received something), and times the simulation's own
//! messages, which carry their send time.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use bytes::{Bytes, BytesMut};
use cm_protocol::{Frame, FrameDecoder, Kind, RouteHeader, SessionId, SmSnapshot};
use tokio::sync::mpsc;

/// Frames waiting for a node's writer, in encoded batches.
const WRITE_QUEUE: usize = 256;
/// How often received stanzas are acknowledged.
const ACK_EVERY: Duration = Duration::from_millis(50);

/// What a node has seen from the core.
#[derive(Debug, Default)]
pub struct NodeCounts {
    /// Stanzas delivered: a Deliver frame's, and each copy a DeliverMany
    /// asks for.
    pub delivered: u64,
    /// Frames carrying deliveries (Deliver and DeliverMany).
    pub delivery_frames: u64,
    /// Encoded bytes of those frames (length prefix included).
    pub delivery_bytes: u64,
    /// Of those, the simulation's timed messages.
    pub timed: u64,
    /// Delivery times of timed messages, µs.
    pub latencies_us: Vec<u64>,
    /// Kick frames (sessions the core ended).
    pub kicks: u64,
    /// Any other frame.
    pub other: u64,
}

/// Per-session acknowledgement state of one node.
struct Acks {
    /// Stanzas delivered to each of the node's sessions (by `i / nodes`).
    h: Vec<u32>,
    /// Each session's generation.
    generation: Vec<u32>,
    /// Sessions with something to acknowledge.
    dirty: HashSet<u32>,
}

/// One simulated CM node with one link to the core.
pub struct SimNode {
    /// Node index (its certificate is `cm-{index+1}`).
    pub index: u32,
    nodes: u32,
    writes: mpsc::Sender<Bytes>,
    counts: Arc<Mutex<NodeCounts>>,
    acks: Arc<Mutex<Acks>>,
    conn: quinn::Connection,
}

/// The session id of session `i` in its `generation`.
fn sid_of(i: u32, generation: u32) -> SessionId {
    (u64::from(generation) << 32) | u64::from(i)
}

/// The simulation's epoch: timed messages carry µs since it.
pub fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl SimNode {
    /// Connects node `index` of `nodes` to the core at `core` with the
    /// certificates in `pki`, and waits for the core's `Welcome`.
    pub async fn connect(
        endpoint: &quinn::Endpoint,
        pki: &Path,
        core: SocketAddr,
        index: u32,
        nodes: u32,
        sessions: u32,
    ) -> Result<Self> {
        let paths = certs::PkiPaths::new(pki);
        let name = format!("cm-{}", index + 1);
        let tls = certs::cluster_client_config(
            &paths.ca_cert(),
            &paths.cm_cert(&name),
            &paths.cm_key(&name),
            cm_protocol::ALPN,
        )?;
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let mut transport = quinn::TransportConfig::default();
        transport
            .stream_receive_window((16u32 * 1024 * 1024).into())
            .receive_window((32u32 * 1024 * 1024).into())
            .send_window(32 * 1024 * 1024)
            .keep_alive_interval(Some(Duration::from_secs(2)));
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(Arc::new(transport));
        let conn = endpoint
            .connect_with(config, core, certs::CORE_SERVER_NAME)?
            .await
            .with_context(|| format!("{name}: connecting to the core"))?;
        let (mut send, mut recv) = conn.open_bi().await?;
        let mut hello = BytesMut::new();
        Frame::Hello {
            node: name.clone(),
            client_addr: "127.0.0.1:1".into(),
            conn_index: 0,
            pool_size: 1,
            instance: rand::random(),
        }
        .encode(&mut hello);
        send.write_all(&hello).await?;
        let mut decoder = FrameDecoder::new();
        match tokio::time::timeout(
            Duration::from_secs(30),
            cm_protocol::read_frame(&mut recv, &mut decoder),
        )
        .await
        {
            Ok(Ok(Some(Frame::Welcome { .. }))) => {}
            Ok(Ok(other)) => return Err(anyhow!("{name}: expected Welcome, got {other:?}")),
            Ok(Err(e)) => return Err(anyhow!("{name}: reading Welcome: {e}")),
            Err(_) => return Err(anyhow!("{name}: no Welcome within 30 s")),
        }
        let (writes, mut queue) = mpsc::channel::<Bytes>(WRITE_QUEUE);
        tokio::spawn(async move {
            while let Some(batch) = queue.recv().await {
                if send.write_all(&batch).await.is_err() {
                    return;
                }
            }
        });
        let counts = Arc::new(Mutex::new(NodeCounts::default()));
        let own = sessions.div_ceil(nodes) as usize;
        let acks = Arc::new(Mutex::new(Acks {
            h: vec![0; own],
            generation: vec![0; own],
            dirty: HashSet::new(),
        }));
        tokio::spawn(read_loop(
            recv,
            decoder,
            counts.clone(),
            acks.clone(),
            nodes,
        ));
        tokio::spawn(ack_loop(acks.clone(), writes.clone(), index, nodes));
        Ok(Self {
            index,
            nodes,
            writes,
            counts,
            acks,
            conn,
        })
    }

    /// Session `i`'s current session id (`i` must live on this node).
    pub fn sid(&self, i: u32) -> SessionId {
        let slot = (i / self.nodes) as usize;
        let generation = self
            .acks
            .lock()
            .ok()
            .and_then(|a| a.generation.get(slot).copied())
            .unwrap_or(0);
        sid_of(i, generation)
    }

    /// Starts session `i`'s next generation (a reconnect): a new session
    /// id, nothing received yet.
    pub fn renew(&self, i: u32) -> SessionId {
        let slot = (i / self.nodes) as usize;
        let Ok(mut a) = self.acks.lock() else {
            return sid_of(i, 0);
        };
        let generation = match a.generation.get_mut(slot) {
            Some(g) => {
                *g += 1;
                *g
            }
            None => 0,
        };
        if let Some(h) = a.h.get_mut(slot) {
            *h = 0;
        }
        a.dirty.remove(&(slot as u32));
        sid_of(i, generation)
    }

    /// Sends encoded frames (waits while the writer is behind).
    pub async fn send(&self, batch: BytesMut) -> Result<()> {
        self.writes
            .send(batch.freeze())
            .await
            .map_err(|_| anyhow!("cm-{}: the link is gone", self.index + 1))
    }

    /// What the node has seen so far (the latencies are taken).
    pub fn take_counts(&self) -> NodeCounts {
        match self.counts.lock() {
            Ok(mut c) => std::mem::take(&mut *c),
            Err(_) => NodeCounts::default(),
        }
    }

    /// Sessions the core has ended so far (without taking the counts).
    pub fn kicks(&self) -> u64 {
        self.counts.lock().map_or(0, |c| c.kicks)
    }

    /// Closes the link.
    pub fn close(&self) {
        self.conn.close(0u32.into(), b"core-sim done");
    }
}

/// The full JID of session `i`.
pub fn jid(i: u32, domain: &str) -> String {
    format!("u{i}@{domain}/sim")
}

/// Appends session `i`'s announcement (available, stream management on,
/// counters from zero): a session a CM re-announces after a core restart.
pub fn announce(out: &mut BytesMut, sid: SessionId, i: u32, domain: &str) {
    announce_as(out, sid, i, domain, true);
}

/// Appends session `i`'s announcement as a freshly bound session: stream
/// management on, no presence yet (its initial presence follows).
pub fn bound(out: &mut BytesMut, sid: SessionId, i: u32, domain: &str) {
    announce_as(out, sid, i, domain, false);
}

fn announce_as(out: &mut BytesMut, sid: SessionId, i: u32, domain: &str, available: bool) {
    Frame::Announce {
        sid,
        jid: jid(i, domain),
        available,
        priority: 0,
        sm: Some(SmSnapshot {
            id: String::new(),
            handled: 0,
            sent: 0,
            client_acked: 0,
            next_seq: 0,
            max: 300,
            detached: false,
        }),
    }
    .encode(out);
}

/// Appends a timed chat message from session `from` to user `to`.
pub fn message(out: &mut BytesMut, sid: SessionId, from: u32, to: u32, domain: &str) {
    let sent = epoch().elapsed().as_micros();
    let from_jid = jid(from, domain);
    let to_jid = format!("u{to}@{domain}");
    let payload = format!(
        "<message from='{from_jid}' to='{to_jid}' type='chat' id='s{sent}'><body>t{sent}</body></message>"
    );
    Frame::Stanza {
        sid,
        header: RouteHeader {
            kind: Kind::Message,
            stanza_type: Some("chat".into()),
            to: Some(to_jid),
            id: Some(format!("s{sent}")),
            from: from_jid,
        },
        payload: Bytes::from(payload),
    }
    .encode(out);
}

/// Appends an available presence broadcast from session `from` (its
/// contacts' sessions each get a copy), with `show` away or chat.
pub fn presence(out: &mut BytesMut, sid: SessionId, from: u32, away: bool, domain: &str) {
    let from_jid = jid(from, domain);
    let show = if away { "away" } else { "chat" };
    let payload = format!("<presence from='{from_jid}'><show>{show}</show></presence>");
    Frame::Stanza {
        sid,
        header: RouteHeader {
            kind: Kind::Presence,
            stanza_type: None,
            to: None,
            id: None,
            from: from_jid,
        },
        payload: Bytes::from(payload),
    }
    .encode(out);
}

/// Appends session `i`'s clean end (the client closed its stream).
pub fn end(out: &mut BytesMut, sid: SessionId, i: u32, domain: &str) {
    Frame::SessionEnd {
        sid,
        jid: Some(jid(i, domain)),
        clean: true,
    }
    .encode(out);
}

async fn read_loop(
    mut recv: quinn::RecvStream,
    mut decoder: FrameDecoder,
    counts: Arc<Mutex<NodeCounts>>,
    acks: Arc<Mutex<Acks>>,
    nodes: u32,
) {
    loop {
        let frame = match cm_protocol::read_frame(&mut recv, &mut decoder).await {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) => return,
        };
        let Ok(mut c) = counts.lock() else { return };
        if matches!(frame, Frame::Deliver { .. } | Frame::DeliverMany { .. }) {
            let mut scratch = BytesMut::new();
            frame.encode(&mut scratch);
            c.delivery_frames += 1;
            c.delivery_bytes += scratch.len() as u64;
        }
        match frame {
            Frame::DeliverMany { sids, .. } => {
                c.delivered += sids.len() as u64;
                drop(c);
                if let Ok(mut a) = acks.lock() {
                    for sid in sids {
                        count_delivery(&mut a, sid, nodes);
                    }
                }
            }
            Frame::Deliver { sid, payload } => {
                c.delivered += 1;
                if let Some(sent) = sent_at(&payload) {
                    c.timed += 1;
                    let now = epoch().elapsed().as_micros() as u64;
                    c.latencies_us.push(now.saturating_sub(sent));
                }
                drop(c);
                if let Ok(mut a) = acks.lock() {
                    count_delivery(&mut a, sid, nodes);
                }
            }
            Frame::Kick { .. } => c.kicks += 1,
            _ => c.other += 1,
        }
    }
}

/// One stanza delivered to session `sid`: its acknowledgement count rises.
fn count_delivery(a: &mut Acks, sid: SessionId, nodes: u32) {
    let (i, generation) = (sid as u32, (sid >> 32) as u32);
    let slot = (i / nodes) as usize;
    if a.generation.get(slot) == Some(&generation)
        && let Some(h) = a.h.get_mut(slot)
    {
        *h = h.wrapping_add(1);
        a.dirty.insert(slot as u32);
    }
}

/// The routing header of a stanza of `kind` from session `i` to `to`.
pub fn header(
    i: u32,
    domain: &str,
    kind: Kind,
    stanza_type: Option<&str>,
    to: &str,
) -> RouteHeader {
    RouteHeader {
        kind,
        stanza_type: stanza_type.map(str::to_owned),
        to: Some(to.to_owned()),
        id: None,
        from: jid(i, domain),
    }
}

/// Appends a stanza from session `sid` with its routing header.
pub fn stanza(out: &mut BytesMut, sid: SessionId, header: RouteHeader, payload: String) {
    Frame::Stanza {
        sid,
        header,
        payload: Bytes::from(payload),
    }
    .encode(out);
}

/// The send time a timed message carries (`<body>t{µs}</body>`).
fn sent_at(payload: &[u8]) -> Option<u64> {
    let at = payload.windows(7).position(|w| w == b"<body>t")? + 7;
    let digits = payload[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&payload[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

async fn ack_loop(acks: Arc<Mutex<Acks>>, writes: mpsc::Sender<Bytes>, index: u32, nodes: u32) {
    let mut tick = tokio::time::interval(ACK_EVERY);
    loop {
        tick.tick().await;
        let mut batch = BytesMut::new();
        {
            let Ok(mut a) = acks.lock() else { return };
            let dirty = std::mem::take(&mut a.dirty);
            for slot in dirty {
                let (h, generation) = (a.h[slot as usize], a.generation[slot as usize]);
                Frame::Acked {
                    sid: sid_of(slot * nodes + index, generation),
                    h,
                }
                .encode(&mut batch);
            }
        }
        if !batch.is_empty() && writes.send(batch.freeze()).await.is_err() {
            return;
        }
    }
}
