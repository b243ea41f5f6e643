//! QUIC 0-RTT across CMs with the cluster's stateless tickets (the vendored
//! rustls' `early_data_with_stateless_tickets`, set by
//! `cm_node::allow_zero_rtt`): real quinn endpoints on 127.0.0.1, two
//! servers A and B with the same ticketer (as two CMs with one cluster
//! key), and one client that keeps its rustls config, and so its tickets,
//! across connections. A ticket from A opens 0-RTT on B, and B reads the
//! early data before the handshake completes; without the flag the same
//! setup never offers 0-RTT.
//!
//! Then a real CM (`zero_rtt` on) in front of a test core speaking the CM
//! protocol: a client reconnecting with the CM's ticket writes its stream
//! header and a FAST `<authenticate/>` as 0-RTT data, and the core gets it
//! marked `early` while the client's Finished is still held back; a stanza
//! pipelined behind it reaches the core only after the handshake completes
//! (docs/design/sasl2-fast.md §6.2).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cm_protocol::Frame;
use futures_util::FutureExt;
use rustls::NamedGroup;
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Resumption, Tls12ClientSessionValue,
    Tls13ClientSessionValue,
};
use rustls::pki_types::ServerName;
use rustls::server::ProducesTickets;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

mod support;

use support::TestCore;

const DOMAIN: &str = "x";
const WAIT: Duration = Duration::from_secs(20);

/// What a test server saw on one connection.
#[derive(Debug)]
enum Seen {
    /// The client's stream, read to its end; `complete`: whether the
    /// handshake had completed when it was read.
    Read { data: Vec<u8>, complete: bool },
    /// The handshake completed. (The bool of quinn's `ZeroRttAccepted` is
    /// meaningless on a server: always false.)
    Complete,
}

/// A server endpoint with `node`'s certificate and the shared `ticketer`.
/// Every connection is accepted with `into_0rtt` (as a CM taking early
/// data would), its first stream is read to the end and answered `pong`.
fn server(
    pki: &Path,
    node: &str,
    ticketer: Arc<dyn ProducesTickets>,
    flag: bool,
    seen: mpsc::UnboundedSender<Seen>,
) -> SocketAddr {
    let paths = certs::PkiPaths::new(pki);
    let mut tls = certs::client_facing_server_config(
        &paths.cm_cert(node),
        &paths.cm_key(node),
        &[cm_node::CLIENT_ALPN],
    )
    .expect("server tls");
    tls.ticketer = ticketer;
    if flag {
        cm_node::allow_zero_rtt(&mut tls);
        assert!(tls.early_data_with_stateless_tickets);
    } else {
        // early data configured as for QUIC, the flag left at its default
        tls.max_early_data_size = u32::MAX;
        assert!(!tls.early_data_with_stateless_tickets);
    }
    let tls = quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("quic tls");
    let endpoint = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(tls)),
        ([127, 0, 0, 1], 0).into(),
    )
    .expect("server endpoint");
    let addr = endpoint.local_addr().expect("server address");
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(connecting) = incoming.accept() else {
                    return;
                };
                let Ok((conn, mut accepted)) = connecting.into_0rtt() else {
                    return;
                };
                let Ok((mut send, mut recv)) = conn.accept_bi().await else {
                    return;
                };
                let Ok(data) = recv.read_to_end(1024).await else {
                    return;
                };
                let complete = (&mut accepted).now_or_never();
                let _ = seen.send(Seen::Read {
                    data,
                    complete: complete.is_some(),
                });
                let _ = send.write_all(b"pong").await;
                let _ = send.finish();
                if complete.is_none() {
                    accepted.await;
                }
                let _ = seen.send(Seen::Complete);
                conn.closed().await;
            });
        }
    });
    addr
}

/// The client's session store: rustls' in-memory cache, counting the
/// TLS 1.3 tickets received (with the early data each allows) and taken.
#[derive(Debug)]
struct CountingStore {
    inner: ClientSessionMemoryCache,
    received: Mutex<Vec<u32>>,
    taken: Mutex<usize>,
}

impl CountingStore {
    fn received(&self) -> Vec<u32> {
        self.received.lock().expect("lock").clone()
    }

    fn taken(&self) -> usize {
        *self.taken.lock().expect("lock")
    }
}

impl ClientSessionStore for CountingStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.inner.set_kx_hint(server_name, group)
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.inner.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.inner.set_tls12_session(server_name, value)
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name)
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.received
            .lock()
            .expect("lock")
            .push(value.max_early_data_size());
        self.inner.insert_tls13_ticket(server_name, value)
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        let ticket = self.inner.take_tls13_ticket(server_name);
        if ticket.is_some() {
            *self.taken.lock().expect("lock") += 1;
        }
        ticket
    }
}

/// A client endpoint whose one rustls config (early data enabled) keeps
/// its tickets in `store` across connections.
fn client(pki: &Path, store: Arc<CountingStore>) -> quinn::Endpoint {
    let roots = certs::load_roots(&certs::PkiPaths::new(pki).ca_cert()).expect("roots");
    let mut tls = certs::client_config(roots, &[cm_node::CLIENT_ALPN]).expect("client tls");
    tls.enable_early_data = true;
    tls.resumption = Resumption::store(store);
    let tls = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let mut endpoint =
        quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).expect("client endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(tls)));
    endpoint
}

/// A full handshake with `server` (no ticket yet, so no 0-RTT), one
/// `ping`/`pong` exchange, and a wait until the server's tickets are in
/// `store`; then the connection is closed.
async fn first_connection(
    endpoint: &quinn::Endpoint,
    server: SocketAddr,
    store: &CountingStore,
    seen: &mut mpsc::UnboundedReceiver<Seen>,
) {
    let connecting = endpoint.connect(server, DOMAIN).expect("connect");
    let Err(connecting) = connecting.into_0rtt() else {
        panic!("0-RTT offered without a ticket");
    };
    let conn = connecting.await.expect("handshake");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    send.write_all(b"ping").await.expect("write");
    send.finish().expect("finish");
    assert_eq!(recv.read_to_end(1024).await.expect("reply"), b"pong");
    match seen.recv().await {
        Some(Seen::Read { data, complete }) => {
            assert_eq!(data, b"ping");
            assert!(complete, "1-RTT data read before the handshake completed");
        }
        other => panic!("expected the first stream, got {other:?}"),
    }
    assert!(matches!(seen.recv().await, Some(Seen::Complete)));
    while store.received().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    conn.close(quinn::VarInt::from_u32(0), b"done");
}

fn pki() -> tempfile::TempDir {
    let pki = tempfile::tempdir().expect("tempdir");
    certs::init(pki.path(), DOMAIN, 2, false).expect("pki");
    pki
}

fn ticketer() -> Arc<dyn ProducesTickets> {
    certs::cluster_key::ClusterKey::new([7; 32]).ticketer()
}

/// Holds `server` behind a UDP relay on 127.0.0.1 that forwards everything
/// except the client's datagrams carrying a Handshake packet (its
/// Finished): those wait until `open` fires, so the server cannot complete
/// the handshake before then.
async fn hold_handshake(server: SocketAddr, mut open: oneshot::Receiver<()>) -> SocketAddr {
    let front = UdpSocket::bind(("127.0.0.1", 0)).await.expect("relay");
    let back = UdpSocket::bind(("127.0.0.1", 0)).await.expect("relay");
    back.connect(server).await.expect("relay connect");
    let addr = front.local_addr().expect("relay address");
    tokio::spawn(async move {
        let mut client = None;
        let mut held = Vec::new();
        let mut opened = false;
        let mut from_client = vec![0; 65536];
        let mut from_server = vec![0; 65536];
        loop {
            tokio::select! {
                r = front.recv_from(&mut from_client) => {
                    let Ok((n, from)) = r else { return };
                    client = Some(from);
                    let datagram = &from_client[..n];
                    if !opened && carries_handshake_packet(datagram) {
                        held.push(datagram.to_vec());
                    } else {
                        let _ = back.send(datagram).await;
                    }
                }
                r = back.recv(&mut from_server) => {
                    let Ok(n) = r else { return };
                    if let Some(client) = client {
                        let _ = front.send_to(&from_server[..n], client).await;
                    }
                }
                _ = &mut open, if !opened => {
                    opened = true;
                    for datagram in held.drain(..) {
                        let _ = back.send(&datagram).await;
                    }
                }
            }
        }
    });
    addr
}

/// Whether a client datagram holds a QUIC Handshake packet (RFC 9000
/// §17.2: long headers, coalesced; a short-header packet ends the walk).
fn carries_handshake_packet(mut datagram: &[u8]) -> bool {
    while let Some(&first) = datagram.first() {
        if first & 0x80 == 0 {
            return false;
        }
        let kind = (first >> 4) & 0x03;
        if kind == 2 {
            return true;
        }
        let Some(len) = long_packet_len(datagram, kind) else {
            return false;
        };
        datagram = datagram.get(len..).unwrap_or_default();
    }
    false
}

/// The length of the long-header packet at the start of `d`.
fn long_packet_len(d: &[u8], kind: u8) -> Option<usize> {
    let mut at = 5; // first byte, version
    at += 1 + usize::from(*d.get(at)?); // destination connection id
    at += 1 + usize::from(*d.get(at)?); // source connection id
    if kind == 0 {
        let (token, n) = varint(d.get(at..)?)?;
        at += n + usize::try_from(token).ok()?;
    }
    let (len, n) = varint(d.get(at..)?)?;
    Some(at + n + usize::try_from(len).ok()?)
}

fn varint(d: &[u8]) -> Option<(u64, usize)> {
    let first = *d.first()?;
    let n = 1usize << (first >> 6);
    let mut value = u64::from(first & 0x3f);
    for byte in d.get(1..n)? {
        value = (value << 8) | u64::from(*byte);
    }
    Some((value, n))
}

#[tokio::test]
async fn ticket_from_one_cm_opens_0rtt_on_another_and_early_data_is_read_before_handshake_completes()
 {
    tokio::time::timeout(WAIT, async {
        let pki = pki();
        let ticketer = ticketer();
        let (seen_a, mut from_a) = mpsc::unbounded_channel();
        let (seen_b, mut from_b) = mpsc::unbounded_channel();
        let a = server(pki.path(), "cm-1", ticketer.clone(), true, seen_a);
        let b = server(pki.path(), "cm-2", ticketer, true, seen_b);
        let (open, gate) = oneshot::channel();
        let b_held = hold_handshake(b, gate).await;
        let store = Arc::new(CountingStore {
            inner: ClientSessionMemoryCache::new(8),
            received: Mutex::default(),
            taken: Mutex::default(),
        });
        let endpoint = client(pki.path(), store.clone());

        first_connection(&endpoint, a, &store, &mut from_a).await;
        assert!(
            store.received().iter().all(|&size| size == u32::MAX),
            "tickets allow early data: {:?}",
            store.received()
        );

        // B, with A's ticket: 0-RTT, and the stream written before any
        // await that could let the handshake progress
        let (conn, accepted) = endpoint
            .connect(b_held, DOMAIN)
            .expect("connect")
            .into_0rtt()
            .unwrap_or_else(|_| panic!("0-RTT refused with a ticket from A"));
        let (mut send, mut recv) = conn.open_bi().await.expect("0-RTT stream");
        send.write_all(b"early").await.expect("0-RTT write");
        send.finish().expect("finish");
        assert_eq!(store.taken(), 1);

        match from_b.recv().await {
            Some(Seen::Read { data, complete }) => {
                assert_eq!(data, b"early");
                assert!(!complete, "B completed the handshake before reading");
            }
            other => panic!("expected the early stream, got {other:?}"),
        }
        let _ = open.send(());
        assert!(accepted.await, "client: 0-RTT rejected");
        assert!(matches!(from_b.recv().await, Some(Seen::Complete)));
        assert_eq!(recv.read_to_end(1024).await.expect("reply"), b"pong");
        conn.close(quinn::VarInt::from_u32(0), b"done");
        endpoint.wait_idle().await;
    })
    .await
    .expect("timed out");
}

#[tokio::test]
async fn without_the_flag_stateless_tickets_allow_no_0rtt_on_another_cm() {
    tokio::time::timeout(WAIT, async {
        let pki = pki();
        let ticketer = ticketer();
        let (seen_a, mut from_a) = mpsc::unbounded_channel();
        let (seen_b, mut from_b) = mpsc::unbounded_channel();
        let a = server(pki.path(), "cm-1", ticketer.clone(), false, seen_a);
        let b = server(pki.path(), "cm-2", ticketer, false, seen_b);
        let store = Arc::new(CountingStore {
            inner: ClientSessionMemoryCache::new(8),
            received: Mutex::default(),
            taken: Mutex::default(),
        });
        let endpoint = client(pki.path(), store.clone());

        first_connection(&endpoint, a, &store, &mut from_a).await;
        assert!(
            store.received().iter().all(|&size| size == 0),
            "tickets allow no early data: {:?}",
            store.received()
        );

        // B, with A's ticket (offered: taken from the store): no 0-RTT, a
        // resumed 1-RTT handshake instead
        let connecting = endpoint.connect(b, DOMAIN).expect("connect");
        let Err(connecting) = connecting.into_0rtt() else {
            panic!("0-RTT offered without the flag");
        };
        assert_eq!(store.taken(), 1, "the client offered A's ticket");
        let conn = connecting.await.expect("handshake");
        let (mut send, mut recv) = conn.open_bi().await.expect("stream");
        send.write_all(b"late").await.expect("write");
        send.finish().expect("finish");
        assert_eq!(recv.read_to_end(1024).await.expect("reply"), b"pong");
        assert!(matches!(
            from_b.recv().await,
            Some(Seen::Read { complete: true, .. })
        ));
        assert!(matches!(from_b.recv().await, Some(Seen::Complete)));
        conn.close(quinn::VarInt::from_u32(0), b"done");
        endpoint.wait_idle().await;
    })
    .await
    .expect("timed out");
}

/// A test core offering SASL2 and FAST.
fn start_core(pki: &Path) -> TestCore {
    TestCore::start(
        pki,
        "core",
        Frame::Welcome {
            domain: DOMAIN.into(),
            instance: 1,
            mechanisms: vec!["PLAIN".into()],
            registration: false,
            caps: String::new(),
            sasl2: true,
            fast: true,
        },
    )
}

/// The next frame from the CM.
async fn next(core: &mut TestCore) -> Frame {
    core.recv().await.expect("the CM's link closed")
}

const HEADER: &str = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='x' version='1.0'>";

/// A FAST token use as an SDK sends it in 0-RTT (`rest`: inline requests).
fn authenticate_none(rest: &str) -> String {
    format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='HT-SHA-256-NONE'>\
         <initial-response>dUB4AGg=</initial-response>\
         <user-agent id='ua-1'><software>t</software></user-agent>\
         <fast xmlns='urn:xmpp:fast:0' count='1'/>{rest}</authenticate>"
    )
}

/// Reads `recv` until `needle` has come; what came up to its end is
/// taken from `seen` and returned.
async fn read_until(recv: &mut quinn::RecvStream, seen: &mut String, needle: &str) -> String {
    loop {
        if let Some(at) = seen.find(needle) {
            return seen.drain(..at + needle.len()).collect();
        }
        let chunk = recv
            .read_chunk(64 * 1024, true)
            .await
            .expect("read")
            .unwrap_or_else(|| panic!("the CM closed the stream before {needle:?}: {seen:?}"));
        seen.push_str(&String::from_utf8_lossy(&chunk.bytes));
    }
}

/// A CM with `zero_rtt` on in front of a test core, and a client that got
/// the CM's tickets on a first (1-RTT) connection, whose stream's features
/// offered FAST with `tls-0rtt`.
struct ZeroRttCm {
    core: TestCore,
    cm: cm_node::CmHandle,
    endpoint: quinn::Endpoint,
    store: Arc<CountingStore>,
    _pki: tempfile::TempDir,
}

async fn zero_rtt_cm() -> ZeroRttCm {
    zero_rtt_cm_with(serde_json::json!({})).await
}

/// [`zero_rtt_cm`] with more CM settings.
async fn zero_rtt_cm_with(more: serde_json::Value) -> ZeroRttCm {
    let pki = pki();
    let core = start_core(pki.path());
    let mut config = serde_json::json!({
        "node": "cm-1",
        "domain": DOMAIN,
        "listen": "127.0.0.1:0",
        "core": core.addr.to_string(),
        "pki_dir": pki.path(),
        "pool_size": 1,
        "pre_auth_per_address": 8,
        "zero_rtt": true,
    });
    if let (Some(config), Some(more)) = (config.as_object_mut(), more.as_object()) {
        config.extend(more.clone());
    }
    let config: cm_node::CmConfig = serde_json::from_value(config).expect("config");
    let cm = cm_node::start(config).await.expect("cm");
    let store = Arc::new(CountingStore {
        inner: ClientSessionMemoryCache::new(8),
        received: Mutex::default(),
        taken: Mutex::default(),
    });
    let endpoint = client(pki.path(), store.clone());

    let connecting = endpoint.connect(cm.client_addr, DOMAIN).expect("connect");
    let Err(connecting) = connecting.into_0rtt() else {
        panic!("0-RTT offered without a ticket");
    };
    let conn = connecting.await.expect("handshake");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    send.write_all(HEADER.as_bytes()).await.expect("write");
    let mut seen = String::new();
    let features = read_until(&mut recv, &mut seen, "</stream:features>").await;
    assert!(
        features.contains("<fast xmlns=\"urn:xmpp:fast:0\" tls-0rtt=\"true\"><mechanism>HT-SHA-256-EXPR</mechanism><mechanism>HT-SHA-256-NONE</mechanism></fast>"),
        "{features}"
    );
    while store.received().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        store.received().iter().all(|&size| size == u32::MAX),
        "the CM's tickets allow early data: {:?}",
        store.received()
    );
    conn.close(quinn::VarInt::from_u32(0), b"done");
    assert_eq!(cm.metrics.quic_handshakes_completed.get(), 1);
    ZeroRttCm {
        core,
        cm,
        endpoint,
        store,
        _pki: pki,
    }
}

/// A 0-RTT connection to the CM through a relay that holds the client's
/// Finished until `open` fires.
struct EarlyStream {
    conn: quinn::Connection,
    accepted: quinn::ZeroRttAccepted,
    /// Kept open (dropping it would end the stream).
    _send: quinn::SendStream,
    recv: quinn::RecvStream,
    open: oneshot::Sender<()>,
}

/// An [`EarlyStream`] with `flight` written as early data.
async fn early_stream(setup: &ZeroRttCm, flight: &str) -> EarlyStream {
    let (open, gate) = oneshot::channel();
    let held = hold_handshake(setup.cm.client_addr, gate).await;
    let (conn, accepted) = setup
        .endpoint
        .connect(held, DOMAIN)
        .expect("connect")
        .into_0rtt()
        .unwrap_or_else(|_| panic!("0-RTT refused with the CM's ticket"));
    let (mut send, recv) = conn.open_bi().await.expect("0-RTT stream");
    send.write_all(flight.as_bytes())
        .await
        .expect("0-RTT write");
    assert_eq!(
        setup.store.taken(),
        1,
        "the second connection used a ticket"
    );
    EarlyStream {
        conn,
        accepted,
        _send: send,
        recv,
        open,
    }
}

#[tokio::test]
async fn a_fast_authenticate_in_0rtt_data_reaches_the_core_marked_early_before_the_handshake_completes()
 {
    tokio::time::timeout(WAIT, async {
        let mut setup = zero_rtt_cm().await;
        let flight = format!("{HEADER}{}", authenticate_none(""));
        let EarlyStream {
            conn,
            accepted,
            _send,
            mut recv,
            open,
        } = early_stream(&setup, &flight).await;

        let Frame::AuthStart {
            sid,
            mechanism,
            fast,
            ..
        } = next(&mut setup.core).await
        else {
            panic!("not an AuthStart");
        };
        // the client's Finished is held: only the first connection's
        // handshake has completed
        assert_eq!(setup.cm.metrics.quic_handshakes_completed.get(), 1);
        assert_eq!(mechanism, "HT-SHA-256-NONE");
        assert!(fast.early, "not marked early: {fast:?}");
        assert_eq!(fast.tls_exporter, None);
        assert_eq!(fast.count, Some(1));
        assert_eq!(fast.user_agent.as_deref(), Some("ua-1"));
        setup.core.send(Frame::AuthSuccess {
            sid,
            data: Bytes::new(),
            user: "u@x".into(),
            token: None,
        });
        let _ = open.send(());
        assert!(accepted.await, "client: 0-RTT rejected");
        let mut seen = String::new();
        read_until(&mut recv, &mut seen, "<success xmlns=\"urn:xmpp:sasl:2\">").await;
        read_until(
            &mut recv,
            &mut seen,
            "<authorization-identifier>u@x</authorization-identifier>",
        )
        .await;
        while setup.cm.metrics.quic_handshakes_completed.get() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(setup.cm.metrics.quic_handshakes_failed.get(), 0);
        conn.close(quinn::VarInt::from_u32(0), b"done");
        setup.cm.shutdown().await;
    })
    .await
    .expect("timed out");
}

#[tokio::test]
async fn a_stanza_pipelined_in_0rtt_data_behind_the_authenticate_reaches_the_core_only_after_the_handshake()
 {
    tokio::time::timeout(WAIT, async {
        let mut setup = zero_rtt_cm().await;
        let flight = format!(
            "{HEADER}{}<message to='b@x' id='m0' type='chat'><body>early</body></message>",
            authenticate_none("<bind xmlns='urn:xmpp:bind:0'><tag>app</tag></bind>")
        );
        let EarlyStream {
            conn,
            accepted,
            _send,
            mut recv,
            open,
        } = early_stream(&setup, &flight).await;

        let Frame::AuthStart { sid, fast, .. } = next(&mut setup.core).await else {
            panic!("not an AuthStart");
        };
        assert!(fast.early);
        setup.core.send(Frame::AuthSuccess {
            sid,
            data: Bytes::new(),
            user: "u@x".into(),
            token: None,
        });
        let Frame::Bind { bind2, .. } = next(&mut setup.core).await else {
            panic!("not the Bind2 bind");
        };
        assert_eq!(bind2.and_then(|b| b.tag).as_deref(), Some("app"));
        setup.core.send(Frame::BindResult {
            sid,
            iq_id: String::new(),
            result: Ok("u@x/app".into()),
        });
        // The session is bound; the message waits for the handshake. (A
        // short look for a wrong early forward; what proves the order is
        // the count below.)
        tokio::time::sleep(Duration::from_millis(200)).await;
        while let Some(frame) = setup.core.try_recv() {
            assert!(
                !matches!(frame, Frame::Stanza { .. }),
                "a stanza forwarded before the handshake completed: {frame:?}"
            );
        }
        assert_eq!(setup.cm.metrics.quic_handshakes_completed.get(), 1);
        let _ = open.send(());
        let Frame::Stanza { header, .. } = next(&mut setup.core).await else {
            panic!("not the message");
        };
        assert_eq!(header.id.as_deref(), Some("m0"));
        assert_eq!(header.from, "u@x/app");
        // forwarded only once the CM had seen the handshake complete
        assert_eq!(setup.cm.metrics.quic_handshakes_completed.get(), 2);
        assert!(accepted.await, "client: 0-RTT rejected");
        let mut seen = String::new();
        read_until(&mut recv, &mut seen, "<bound xmlns=\"urn:xmpp:bind:0\"").await;
        conn.close(quinn::VarInt::from_u32(0), b"done");
        setup.cm.shutdown().await;
    })
    .await
    .expect("timed out");
}

#[tokio::test]
async fn a_0rtt_connection_whose_handshake_never_completes_ends_its_early_session_and_counts_as_failed()
 {
    tokio::time::timeout(WAIT, async {
        // (a short idle timeout: the connection dies with its handshake held)
        let mut setup = zero_rtt_cm_with(serde_json::json!({
            "idle_timeout_secs": 2,
            "keep_alive_secs": 1,
        }))
        .await;
        let flight = format!("{HEADER}{}", authenticate_none(""));
        // (`open` kept: dropped, it would let the relay forward the Finished)
        let EarlyStream {
            conn,
            _send,
            recv: _recv,
            open: _open,
            ..
        } = early_stream(&setup, &flight).await;
        let Frame::AuthStart { sid, fast, .. } = next(&mut setup.core).await else {
            panic!("not an AuthStart");
        };
        assert!(fast.early);
        // the client gives up; its Finished never reaches the CM (which
        // ends the connection at its idle timeout, or on the client's close)
        conn.close(quinn::VarInt::from_u32(0), b"gone");
        let ended = loop {
            match next(&mut setup.core).await {
                Frame::SessionEnd { sid: ended, .. } => break ended,
                other => eprintln!("core got {other:?}"),
            }
        };
        assert_eq!(ended, sid);
        assert!(setup.cm.sessions.is_empty());
        // (the driver counts it when it sees the connection gone, maybe
        // after the session's end)
        while setup.cm.metrics.quic_handshakes_failed.get() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(setup.cm.metrics.quic_handshakes_failed.get(), 1);
        assert_eq!(setup.cm.metrics.quic_handshakes_completed.get(), 1);
        setup.cm.shutdown().await;
    })
    .await
    .expect("timed out");
}

#[tokio::test]
async fn a_password_authenticate_held_in_0rtt_data_never_reaches_the_core_when_the_cm_closes_the_unfinished_connection()
 {
    tokio::time::timeout(WAIT, async {
        // (the CM closes an unauthenticated connection after 1 s: its own
        // close must not pass for a completed handshake)
        let mut setup = zero_rtt_cm_with(serde_json::json!({ "auth_wait_ms": 1000 })).await;
        let plain = "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'>\
                     <initial-response>AHVAeABw</initial-response></authenticate>";
        let flight = format!("{HEADER}{plain}");
        // (the client's Finished is held for good: a replayed flight)
        let EarlyStream {
            conn: _conn,
            _send,
            recv: _recv,
            open: _open,
            ..
        } = early_stream(&setup, &flight).await;
        while setup.cm.metrics.quic_handshakes_failed.get() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // whatever the core hears of the session, never the held password
        while let Ok(Some(frame)) =
            tokio::time::timeout(Duration::from_millis(500), setup.core.recv()).await
        {
            assert!(
                !matches!(frame, Frame::AuthStart { .. }),
                "a held authenticate reached the core: {frame:?}"
            );
        }
        assert_eq!(setup.cm.metrics.quic_handshakes_failed.get(), 1);
        assert_eq!(setup.cm.metrics.quic_handshakes_completed.get(), 1);
        setup.cm.shutdown().await;
    })
    .await
    .expect("timed out");
}
