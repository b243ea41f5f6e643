//! External components (XEP-0114) end to end: an in-process cluster whose
//! core accepts `push.longlink.test`, and a test component speaking the
//! real protocol over TCP (tokio and xmpp-stream's framer, no mock).
//! A wrong secret is refused; the component connects; a user's message to
//! it arrives from the user's full JID; its message reaches the user's SDK
//! client; its IQ to the user is answered back to it; the server lists it
//! in its disco#items; a second connection for its name is refused; once
//! it is gone, the user's IQs to it are answered `service-unavailable`.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use xmpp_stream::element::Element;
use xmpp_stream::framer::{FrameEvent, Framer, Limits, StreamKind};
use xmpp_stream::ns;

mod support;
use support::{Cluster, DOMAIN, WAIT, bounded, jid};

const SECRET: &str = "a-secret-of-at-least-16-bytes";

fn push_name() -> String {
    format!("push.{DOMAIN}")
}

/// A component as an app server would write one: a TCP stream and a framer.
struct TestComponent {
    stream: TcpStream,
    framer: Framer,
}

impl TestComponent {
    /// Opens a stream to `addr` as `name`; the stream id the server gave
    /// (none: it ended the stream at once, with the error returned).
    async fn open(addr: SocketAddr, name: &str) -> (Self, Result<String, String>) {
        let stream = TcpStream::connect(addr).await.expect("connects");
        let mut c = TestComponent {
            stream,
            framer: Framer::for_stream(StreamKind::ComponentAccept, Limits::default()),
        };
        let header = format!(
            "<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='{name}'>"
        );
        c.send(&header).await;
        let opened = match c.event().await {
            Some(FrameEvent::Open(h)) => h,
            other => panic!("a stream header, not {other:?}"),
        };
        assert!(opened.from.is_none() || opened.from.as_deref() == Some(name));
        let id = opened.id.expect("a stream id");
        if opened.from.is_none() {
            // an unknown name: the error follows at once
            let error = c.element().await.expect("a stream error");
            return (c, Err(String::from_utf8_lossy(&error).into_owned()));
        }
        (c, Ok(id))
    }

    /// Connects as `name` with `secret`: the component, or the stream
    /// error that refused it.
    async fn connect(addr: SocketAddr, name: &str, secret: &str) -> Result<Self, String> {
        let (mut c, id) = Self::open(addr, name).await;
        let id = id?;
        let digest = Sha1::digest(format!("{id}{secret}").as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        c.send(&format!("<handshake>{hex}</handshake>")).await;
        let answer = c.element().await.expect("an answer to the handshake");
        match &answer[..] {
            b"<handshake/>" => Ok(c),
            other => Err(String::from_utf8_lossy(other).into_owned()),
        }
    }

    async fn send(&mut self, xml: &str) {
        self.stream.write_all(xml.as_bytes()).await.expect("writes");
    }

    /// The next framing event, or none once the server closed.
    async fn event(&mut self) -> Option<FrameEvent> {
        let mut buf = [0u8; 4096];
        loop {
            match self.framer.next_event() {
                Ok(Some(event)) => return Some(event),
                Ok(None) => {}
                Err(e) => panic!("the server wrote what the framer refuses: {e}"),
            }
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut buf))
                .await
                .expect("the server writes in time")
                .expect("reads");
            if n == 0 {
                return None;
            }
            self.framer.push(&buf[..n]);
        }
    }

    /// The next top-level element, or none once the stream ended.
    async fn element(&mut self) -> Option<Bytes> {
        match self.event().await? {
            FrameEvent::Element(raw) => Some(raw),
            FrameEvent::Close => None,
            FrameEvent::Open(h) => panic!("a second header {h:?}"),
        }
    }

    /// The next stanza, parsed in the component's namespace.
    async fn stanza(&mut self) -> Element {
        let raw = self.element().await.expect("a stanza");
        Element::parse(&raw, ns::COMPONENT_ACCEPT)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&raw)))
    }

    /// Whether the server ends the stream (after any error element).
    async fn ended(&mut self) -> bool {
        while let Some(event) = self.event().await {
            if event == FrameEvent::Close {
                return true;
            }
        }
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_exchanges_messages_and_iqs_with_a_user_through_the_core() {
    bounded(120, async {
        let configure: support::cluster::Configure = Arc::new(|c| {
            c.components = vec![im_core::components::ComponentConfig::new(
                &push_name(),
                SECRET,
            )];
            c.component_listen = Some("127.0.0.1:0".parse().unwrap());
        });
        let cluster = Cluster::start_configured(1, configure).await;
        let addr = cluster
            .core
            .as_ref()
            .and_then(|c| c.component_addr)
            .expect("a component listener");
        let push = push_name();

        // a wrong secret, and a name not configured, are refused
        let refused = TestComponent::connect(addr, &push, "not-the-secret-at-all")
            .await
            .err()
            .expect("refused");
        assert!(refused.contains("not-authorized"), "{refused}");
        let (mut stranger, id) = TestComponent::open(addr, &format!("other.{DOMAIN}")).await;
        let refused = id.expect_err("refused");
        assert!(refused.contains("host-unknown"), "{refused}");
        assert!(stranger.ended().await);

        let mut component = TestComponent::connect(addr, &push, SECRET)
            .await
            .expect("the component connects");
        // only one connection a name: a second one is refused
        let second = TestComponent::connect(addr, &push, SECRET)
            .await
            .err()
            .expect("refused");
        assert!(second.contains("conflict"), "{second}");

        cluster.add_user("alice", "secret");
        let mut alice = cluster.login(0, "alice", "phone").await;
        let alice_full = format!("{}/phone", jid("alice"));

        // the server lists the component among its services
        let items = alice
            .iq(Element::new("iq", ns::CLIENT)
                .with_attr("type", "get")
                .with_attr("to", DOMAIN)
                .with_child(Element::new("query", ns::DISCO_ITEMS)))
            .await
            .expect("disco#items");
        let listed: Vec<_> = items
            .element
            .child("query", ns::DISCO_ITEMS)
            .map(|q| q.elements().filter_map(|i| i.attr("jid")).map(str::to_owned).collect())
            .unwrap_or_default();
        assert!(listed.contains(&push), "{listed:?}");

        // the user's message reaches the component, from the user's full JID
        let to = format!("x@{push}");
        alice.send_message(&to, "wake up").await.expect("sent");
        let message = component.stanza().await;
        assert_eq!(message.name, "message");
        assert_eq!(message.ns, ns::COMPONENT_ACCEPT);
        assert_eq!(message.attr("from"), Some(alice_full.as_str()));
        assert_eq!(message.attr("to"), Some(to.as_str()));
        assert_eq!(
            message.child("body", ns::COMPONENT_ACCEPT).map(|b| b.text()).as_deref(),
            Some("wake up")
        );

        // the component's message reaches the user's client
        component
            .send(&format!(
                "<message from='{to}' to='{alice_full}' type='chat' id='c1'><body>ding</body></message>"
            ))
            .await;
        let got = alice.next_message(WAIT).await.expect("a message");
        assert_eq!((got.from.as_str(), got.body.as_deref()), (to.as_str(), Some("ding")));

        // the component asks the user's client; its answer comes back
        component
            .send(&format!(
                "<iq from='{push}' to='{alice_full}' type='get' id='q1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
            ))
            .await;
        let answer = component.stanza().await;
        assert_eq!(answer.name, "iq");
        assert_eq!(answer.attr("type"), Some("result"), "{answer:?}");
        assert_eq!(answer.attr("id"), Some("q1"));
        assert_eq!(answer.attr("from"), Some(alice_full.as_str()));
        assert!(answer.child("query", ns::DISCO_INFO).is_some());

        // a stanza from outside its domain ends its stream
        component
            .send(&format!(
                "<message from='{}' to='{alice_full}'><body>forged</body></message>",
                jid("bob")
            ))
            .await;
        let error = component.element().await.expect("a stream error");
        assert!(
            String::from_utf8_lossy(&error).contains("invalid-from"),
            "{}",
            String::from_utf8_lossy(&error)
        );
        assert!(component.ended().await);

        // gone: the user's requests to it are answered by the server
        let mut asked = None;
        for _ in 0..50 {
            let r = alice
                .iq(Element::new("iq", ns::CLIENT)
                    .with_attr("type", "get")
                    .with_attr("to", push.as_str())
                    .with_child(Element::new("query", ns::DISCO_INFO)))
                .await
                .expect("answered");
            if r.error.is_some() {
                asked = r.error;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(asked.as_deref(), Some("service-unavailable"));

        // and the name is free again
        let again = TestComponent::connect(addr, &push, SECRET).await;
        assert!(again.is_ok(), "{:?}", again.err());
        cluster.shutdown().await;
    })
    .await;
}

/// The summary form's fields of a publish the app server got.
fn summary(publish: &Element) -> std::collections::HashMap<String, String> {
    publish
        .child("pubsub", "http://jabber.org/protocol/pubsub")
        .and_then(|p| p.child("publish", "http://jabber.org/protocol/pubsub"))
        .and_then(|p| p.child("item", "http://jabber.org/protocol/pubsub"))
        .and_then(|i| i.child("notification", "urn:xmpp:push:0"))
        .and_then(|n| n.child("x", ns::DATA))
        .map(|x| {
            x.elements()
                .filter_map(|f| {
                    let value = f.child("value", ns::DATA)?.text();
                    Some((f.attr("var")?.to_owned(), value))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Connects the app server component, retrying while the core starts.
async fn app_server(cluster: &Cluster) -> TestComponent {
    for _ in 0..100 {
        let addr = cluster.core.as_ref().and_then(|c| c.component_addr);
        if let Some(addr) = addr
            && let Ok(Ok(c)) = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                TestComponent::connect(addr, &push_name(), SECRET),
            )
            .await
        {
            return c;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the app server component could not connect");
}

/// Logs in, retrying while the CM reconnects to a restarted core.
async fn login(cluster: &Cluster, user: &str, res: &str) -> client_sdk::Client {
    for _ in 0..50 {
        if let Ok(c) =
            client_sdk::Client::connect(cluster.options(0, user, "secret").with_resource(res)).await
        {
            return c;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{user} could not log in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_away_user_gets_one_coalesced_push_per_burst_none_while_online_or_after_disable_and_a_registration_outlives_a_restart()
 {
    use std::time::Duration;
    bounded(180, async {
        let configure: support::cluster::Configure = Arc::new(|c| {
            c.components = vec![im_core::components::ComponentConfig::new(
                &push_name(),
                SECRET,
            )];
            c.component_listen = Some("127.0.0.1:0".parse().unwrap());
            c.push_include_sender = true;
        });
        let mut cluster = Cluster::start_configured(1, configure).await;
        let push = push_name();
        let mut app = app_server(&cluster).await;
        cluster.add_user("alice", "secret");
        cluster.add_user("bob", "secret");
        let bob_jid = jid("bob");

        // bob's account offers push, and bob registers his phone
        let bob = login(&cluster, "bob", "phone").await;
        assert!(bob.push_supported().await.unwrap(), "push is offered");
        bob.enable_push(&push, "phone-1", &[("secret", "s3cret")])
            .await
            .expect("push enabled");
        bob.send_presence(0).await.unwrap();

        // while bob is online, nobody wakes his phone
        let alice = login(&cluster, "alice", "pc").await;
        alice.send_message(&bob_jid, "seen live").await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_secs(4), app.element())
                .await
                .is_err(),
            "a publish for an online user"
        );

        // bob goes away: a burst of three is one publish, counting three
        bob.disconnect().await;
        cluster.wait_routes(1).await;
        for i in 0..3 {
            alice
                .send_message(&bob_jid, &format!("m{i}"))
                .await
                .unwrap();
        }
        let publish = app.stanza().await;
        assert_eq!(publish.name, "iq");
        assert_eq!(publish.attr("type"), Some("set"));
        assert_eq!(publish.attr("to"), Some(push.as_str()));
        assert_eq!(publish.attr("from"), Some(bob_jid.as_str()));
        let node = publish
            .child("pubsub", "http://jabber.org/protocol/pubsub")
            .and_then(|p| p.child("publish", "http://jabber.org/protocol/pubsub"))
            .and_then(|p| p.attr("node"));
        assert_eq!(node, Some("phone-1"));
        let fields = summary(&publish);
        assert_eq!(
            fields.get("message-count").map(String::as_str),
            Some("3"),
            "{fields:?}"
        );
        assert_eq!(
            fields.get("last-message-sender").map(String::as_str),
            Some(jid("alice").as_str())
        );
        assert!(
            !fields.contains_key("last-message-body"),
            "bodies are off by default"
        );
        let raw = String::from_utf8_lossy(&publish.to_bytes(ns::COMPONENT_ACCEPT)).into_owned();
        assert!(
            raw.contains("s3cret"),
            "the publish-options go along: {raw}"
        );
        let id = publish.attr("id").unwrap().to_owned();
        app.send(&format!(
            "<iq type='result' from='{push}' to='{bob_jid}' id='{id}'/>"
        ))
        .await;
        assert!(
            tokio::time::timeout(Duration::from_secs(4), app.element())
                .await
                .is_err(),
            "one publish per burst"
        );

        // the registration is stored: after a core restart a message wakes bob again
        drop(alice);
        drop(app);
        cluster.stop_core().await;
        cluster.start_core().await;
        let mut app = app_server(&cluster).await;
        let alice = login(&cluster, "alice", "pc").await;
        alice
            .send_message(&bob_jid, "after the restart")
            .await
            .unwrap();
        let publish = app.stanza().await;
        assert_eq!(
            summary(&publish).get("message-count").map(String::as_str),
            Some("1")
        );
        let id = publish.attr("id").unwrap().to_owned();
        app.send(&format!(
            "<iq type='result' from='{push}' to='{bob_jid}' id='{id}'/>"
        ))
        .await;

        // bob disables it: nothing more
        let bob = login(&cluster, "bob", "phone").await;
        bob.disable_push(&push, None).await.expect("push disabled");
        bob.disconnect().await;
        cluster.wait_routes(1).await;
        alice
            .send_message(&bob_jid, "nobody is woken")
            .await
            .unwrap();
        assert!(
            tokio::time::timeout(Duration::from_secs(4), app.element())
                .await
                .is_err(),
            "a publish after disable"
        );
        cluster.shutdown().await;
    })
    .await;
}
