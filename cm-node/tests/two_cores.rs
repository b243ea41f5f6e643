//! A CM in front of two cores over real QUIC: two test cores speak the
//! frame codec with the cluster certificates, claim shard slots with
//! `SlotOwners`, and a real client binds over QUIC. The session goes to
//! the core that owns its user's slot; when the other core claims the slot
//! at a later epoch, the session is re-announced there before its next
//! stanza.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use cm_protocol::slots::slot_of;
use cm_protocol::{CoreAddress, Frame, SlotEpoch};

mod support;

use support::TestCore;

const DOMAIN: &str = "x";
const USER: &str = "u@x";
const SLOTS: u16 = cm_protocol::slots::DEFAULT_SLOTS;
const WAIT: Duration = Duration::from_secs(20);

/// A test core of this cluster (a SASL1 offer).
fn start_core(pki: &Path, member: &str) -> TestCore {
    TestCore::start(
        pki,
        member,
        Frame::Welcome {
            domain: DOMAIN.into(),
            instance: 1,
            mechanisms: vec!["PLAIN".into()],
            registration: false,
            caps: String::new(),
            sasl2: false,
            fast: false,
        },
    )
}

/// What the tests ask of their cores beyond the shared test core.
trait CoreExt {
    /// Says it owns `owned` (slot, epoch) among the live `cores`.
    fn claim(&self, owned: &[(u16, u64)], cores: &[&TestCore]);
    /// The next frame from the CM.
    async fn next(&mut self, what: &str) -> Frame;
}

impl CoreExt for TestCore {
    fn claim(&self, owned: &[(u16, u64)], cores: &[&TestCore]) {
        static VERSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let frame = Frame::SlotOwners {
            core: self.member.clone(),
            slot_count: SLOTS,
            version: VERSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            owned: owned
                .iter()
                .map(|&(slot, epoch)| SlotEpoch { slot, epoch })
                .collect(),
            cores: cores
                .iter()
                .map(|c| CoreAddress {
                    core: c.member.clone(),
                    address: c.addr.to_string(),
                })
                .collect(),
        };
        self.send(frame);
    }

    async fn next(&mut self, what: &str) -> Frame {
        tokio::time::timeout(WAIT, self.recv())
            .await
            .unwrap_or_else(|_| panic!("{} got no {what} in time", self.member))
            .unwrap_or_else(|| panic!("{}'s link closed before {what}", self.member))
    }
}

/// A client's QUIC stream to the CM.
struct TestClient {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    seen: String,
    _endpoint: quinn::Endpoint,
}

impl TestClient {
    async fn connect(pki: &Path, cm: SocketAddr) -> TestClient {
        let roots = certs::load_roots(&certs::PkiPaths::new(pki).ca_cert()).expect("roots");
        let tls = certs::client_config(roots, &[cm_node::CLIENT_ALPN]).expect("client tls");
        let tls = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
        let mut endpoint =
            quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).expect("client endpoint");
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(tls)));
        let conn = endpoint
            .connect(cm, DOMAIN)
            .expect("connect")
            .await
            .expect("handshake");
        let (send, recv) = conn.open_bi().await.expect("stream");
        TestClient {
            send,
            recv,
            seen: String::new(),
            _endpoint: endpoint,
        }
    }

    async fn write(&mut self, xml: &str) {
        self.send.write_all(xml.as_bytes()).await.expect("write");
    }

    /// Reads until the CM has written `needle`; what came before it is
    /// consumed.
    async fn read_until(&mut self, needle: &str) {
        let reading = async {
            loop {
                if let Some(at) = self.seen.find(needle) {
                    self.seen.drain(..at + needle.len());
                    return;
                }
                let chunk = self
                    .recv
                    .read_chunk(64 * 1024, true)
                    .await
                    .expect("read")
                    .expect("the CM closed the stream");
                self.seen.push_str(&String::from_utf8_lossy(&chunk.bytes));
            }
        };
        tokio::time::timeout(WAIT, reading)
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} from the CM; got {:?}", self.seen));
    }

    async fn open(&mut self) {
        self.write(&format!(
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='{DOMAIN}' version='1.0'>"
        ))
        .await;
        self.read_until("</stream:features>").await;
    }

    async fn message(&mut self, id: &str) {
        self.write(&format!(
            "<message to='b@x' id='{id}' type='chat'><body>{id}</body></message>"
        ))
        .await;
    }
}

fn stanza_id(frame: &Frame) -> Option<&str> {
    match frame {
        Frame::Stanza { header, .. } => header.id.as_deref(),
        _ => None,
    }
}

/// Two test cores (a, the seed, owning the user's slot at epoch 1; b owning
/// nothing), a CM with one connection to each, and a client bound as
/// `u@x/r` through a, which got its first stanza `m1`.
struct Bound {
    a: TestCore,
    b: TestCore,
    client: TestClient,
    cm: cm_node::CmHandle,
    sid: cm_protocol::SessionId,
    slot: u16,
    _pki: tempfile::TempDir,
}

async fn bound_session() -> Bound {
    let pki = tempfile::tempdir().expect("tempdir");
    certs::init(pki.path(), DOMAIN, 1, false).expect("pki");
    let mut a = start_core(pki.path(), "a#1");
    let b = start_core(pki.path(), "b#1");
    let slot = slot_of(USER, SLOTS).0;

    let config: cm_node::CmConfig = serde_json::from_value(serde_json::json!({
        "node": "cm-1",
        "domain": DOMAIN,
        "listen": "127.0.0.1:0",
        "core": a.addr.to_string(),
        "pki_dir": pki.path(),
        "pool_size": 1,
        "admin_listen": "127.0.0.1:0",
    }))
    .expect("config");
    let cm = cm_node::start(config).await.expect("cm");

    // a (the seed) owns the user's slot and names b, which the CM then dials
    a.claim(&[(slot, 1)], &[&a, &b]);
    b.claim(&[], &[&a, &b]);
    wait_metric(&cm, "longlink_cm_core_pools", 2).await;
    wait_metric(&cm, "longlink_cm_owned_slots", 1).await;

    let mut client = TestClient::connect(pki.path(), cm.client_addr).await;
    client.open().await;
    let plain = base64::engine::general_purpose::STANDARD.encode(b"\0u\0secret");
    client
        .write(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain}</auth>"
        ))
        .await;
    let Frame::AuthStart { sid, .. } = a.next("AuthStart").await else {
        panic!("not an AuthStart");
    };
    a.send(Frame::AuthSuccess {
        sid,
        data: Bytes::new(),
        user: USER.into(),
        token: None,
    });
    client.read_until("<success").await;
    client.open().await;
    client
        .write("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r</resource></bind></iq>")
        .await;
    let Frame::Bind { sid: bound, .. } = a.next("Bind").await else {
        panic!("the bind did not go to the slot's owner");
    };
    assert_eq!(bound, sid);
    a.send(Frame::BindResult {
        sid,
        iq_id: "b1".into(),
        result: Ok(format!("{USER}/r")),
    });
    client.read_until("</jid>").await;
    client.message("m1").await;
    let first = a.next("the first stanza").await;
    assert_eq!(stanza_id(&first), Some("m1"), "{first:?}");
    Bound {
        a,
        b,
        client,
        cm,
        sid,
        slot,
        _pki: pki,
    }
}

/// The value of gauge `name` in the CM's `/metrics`.
async fn metric(cm: &cm_node::CmHandle, name: &str) -> Option<i64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = cm.admin_addr.expect("admin endpoint");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: cm\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    tcp.read_to_string(&mut text).await.ok()?;
    if std::env::var_os("DEBUG_METRICS").is_some() {
        eprintln!("{text}");
    }
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits until gauge `name` reads `value`.
async fn wait_metric(cm: &cm_node::CmHandle, name: &str, value: i64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = metric(cm, name).await;
        if now == Some(value) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} is {now:?}, not {value}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts `core`'s next frame is the session's Announce.
async fn announced(core: &mut TestCore, sid: cm_protocol::SessionId) {
    let announce = core.next("the re-announcement").await;
    let Frame::Announce {
        sid: announced,
        jid,
        ..
    } = &announce
    else {
        panic!(
            "{}'s first frame of the session is {announce:?}, not its Announce",
            core.member
        );
    };
    assert_eq!((*announced, jid.as_str()), (sid, "u@x/r"));
}

#[tokio::test]
async fn a_bound_session_follows_its_users_slot_to_the_core_that_claims_it_and_is_announced_there_first()
 {
    let Bound {
        mut a,
        mut b,
        mut client,
        cm,
        sid,
        slot,
        ..
    } = bound_session().await;
    // b takes the slot at a later epoch; a withdraws its claim
    b.claim(&[(slot, 2)], &[&a, &b]);
    a.claim(&[], &[&a, &b]);
    announced(&mut b, sid).await;
    client.message("m2").await;
    let second = b.next("the second stanza").await;
    assert_eq!(stanza_id(&second), Some("m2"), "{second:?}");
    // nothing more of the session went to a
    while let Some(frame) = a.try_recv() {
        assert!(
            stanza_id(&frame).is_none(),
            "a got {frame:?} after the move"
        );
    }
    cm.shutdown().await;
}

#[tokio::test]
async fn stanzas_sent_while_no_core_owns_the_slot_wait_and_follow_the_next_owners_announce_in_order()
 {
    let Bound {
        mut a,
        b,
        mut client,
        cm,
        sid,
        slot,
        ..
    } = bound_session().await;
    // a withdraws the slot and nobody claims it
    a.claim(&[], &[&a, &b]);
    wait_metric(&cm, "longlink_cm_owned_slots", 0).await;
    // the client goes on; its stanzas wait (a must not get them)
    client.message("m2").await;
    client.message("m3").await;
    client
        .write("<iq type='get' id='ping'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    // a claims it again at a later epoch: the session is announced, then m2, m3
    a.claim(&[(slot, 3)], &[&a, &b]);
    announced(&mut a, sid).await;
    for id in ["m2", "m3", "ping"] {
        let frame = a.next(id).await;
        assert_eq!(stanza_id(&frame), Some(id), "{frame:?}");
    }
    wait_metric(&cm, "longlink_cm_owned_slots", 1).await;
    wait_metric(&cm, "longlink_cm_held_for_owner_bytes", 0).await;
    cm.shutdown().await;
}
