//! A real CM in front of a test core that dies and comes back as a new
//! instance (over real QUIC): a login step the client sent while the core
//! was away is failed with `temporary-auth-failure`, and the new core never
//! sees it — its answer would be taken for the client's next attempt — while
//! the attempt the client makes after the failure reaches it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cm_protocol::Frame;

mod support;

use support::TestCore;

const DOMAIN: &str = "x";
const WAIT: Duration = Duration::from_secs(40);
const HEADER: &str = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='x' version='1.0'>";

fn welcome(instance: u64) -> Frame {
    Frame::Welcome {
        domain: DOMAIN.into(),
        instance,
        mechanisms: vec!["PLAIN".into()],
        registration: false,
        caps: String::new(),
        sasl2: false,
        fast: false,
    }
}

fn client(pki: &Path) -> quinn::Endpoint {
    let roots = certs::load_roots(&certs::PkiPaths::new(pki).ca_cert()).expect("roots");
    let tls = certs::client_config(roots, &[cm_node::CLIENT_ALPN]).expect("client tls");
    let tls = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let mut endpoint =
        quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).expect("client endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(tls)));
    endpoint
}

/// Reads until `seen` holds `needle`.
async fn read_until(recv: &mut quinn::RecvStream, seen: &mut String, needle: &str) {
    while !seen.contains(needle) {
        let chunk = recv
            .read_chunk(64 * 1024, true)
            .await
            .expect("read")
            .unwrap_or_else(|| panic!("the CM closed the stream before {needle:?}: {seen:?}"));
        seen.push_str(&String::from_utf8_lossy(&chunk.bytes));
    }
}

/// A PLAIN `<auth/>` for user `a` with `password`.
fn auth(password: &str) -> String {
    use base64::Engine;
    let response = base64::engine::general_purpose::STANDARD.encode(format!("\0a\0{password}"));
    format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{response}</auth>")
}

#[tokio::test]
async fn an_auth_sent_while_the_core_was_away_is_failed_and_never_reaches_the_restarted_core() {
    tokio::time::timeout(WAIT, async {
        let pki = tempfile::tempdir().expect("tempdir");
        certs::init(pki.path(), DOMAIN, 1, false).expect("pki");
        let old = TestCore::start(pki.path(), "core", welcome(1));
        let addr = old.addr;
        let config = serde_json::json!({
            "node": "cm-1",
            "domain": DOMAIN,
            "listen": "127.0.0.1:0",
            "core": addr.to_string(),
            "pki_dir": pki.path(),
            "pool_size": 1,
            "zero_rtt": false,
        });
        let config: cm_node::CmConfig = serde_json::from_value(config).expect("config");
        let cm = cm_node::start(config).await.expect("cm");
        let endpoint = client(pki.path());
        let conn = endpoint
            .connect(cm.client_addr, DOMAIN)
            .expect("connect")
            .await
            .expect("handshake");
        let (mut send, mut recv) = conn.open_bi().await.expect("stream");
        send.write_all(HEADER.as_bytes()).await.expect("write");
        let mut seen = String::new();
        read_until(&mut recv, &mut seen, "</stream:features>").await;

        // The core dies; the client's login goes into the CM's queue.
        old.close().await;
        send.write_all(auth("first").as_bytes())
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut new = TestCore::start_at(pki.path(), "core", welcome(2), addr);

        // The CM reaches the new core and fails the attempt in progress.
        let mut seen = String::new();
        read_until(&mut recv, &mut seen, "<temporary-auth-failure/>").await;
        send.write_all(auth("second").as_bytes())
            .await
            .expect("write");
        let Some(Frame::AuthStart { data, .. }) = new.recv().await else {
            panic!("the new core got no AuthStart");
        };
        assert_eq!(
            &data[..],
            b"\0a\0second",
            "the first attempt reached the core that never answered for it"
        );
        conn.close(0u32.into(), b"done");
    })
    .await
    .expect("the test finished in time");
}
