//! The core is SIGKILLed right after it acknowledged a burst of messages:
//! every acknowledged message is in the archive after the restart, and
//! every one stored for an offline user reaches them. Real processes.

mod support;

use std::time::Duration;

use client_sdk::im::HistoryQuery;
use client_sdk::{Client, Event, MessageState};
use support::process::Deployment;

const DOMAIN: &str = "example.org";
const EACH: usize = 50;

async fn history(c: &Client, with: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    let mut q = HistoryQuery {
        with: Some(format!("{with}@{DOMAIN}")),
        max: Some(250),
        ..Default::default()
    };
    loop {
        let page = c.history(&q).await.expect("history");
        bodies.extend(page.messages.iter().filter_map(|m| m.message.body.clone()));
        if page.complete {
            return bodies;
        }
        q.after = page.last;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_when_the_core_is_killed() {
    let users: Vec<String> = ["alice", "bob", "carol"].map(String::from).to_vec();
    let mut dep = Deployment::start(DOMAIN, 1, &users, "pw");
    dep.spawn_cm(1);
    dep.wait_backends(&["cm-1"]);
    let run = async {
        let mut alice = Client::connect(dep.client_options("alice", "phone").with_message_states())
            .await
            .expect("alice");
        let bob = dep.login("bob", "phone").await;
        alice.send_presence(0).await.unwrap();
        bob.send_presence(0).await.unwrap();
        // Bob is online (archived and delivered), Carol offline (archived and stored).
        let mut ids = std::collections::HashSet::new();
        for i in 0..EACH {
            ids.insert(
                alice
                    .send_message(&format!("bob@{DOMAIN}"), &format!("b{i}"))
                    .await
                    .unwrap(),
            );
            ids.insert(
                alice
                    .send_message(&format!("carol@{DOMAIN}"), &format!("c{i}"))
                    .await
                    .unwrap(),
            );
        }
        while !ids.is_empty() {
            match tokio::time::timeout(Duration::from_secs(20), alice.next_event()).await {
                Ok(Some(Event::MessageState {
                    id,
                    state: MessageState::Acknowledged,
                })) => {
                    ids.remove(&id);
                }
                Ok(Some(_)) => {}
                other => panic!(
                    "acknowledgements stopped with {} missing: {other:?}",
                    ids.len()
                ),
            }
        }
        // All acknowledged: kill the core at once, then start it again.
        dep.kill(0);
        alice.abort();
        bob.abort();
        dep.restart_core();

        let mut carol = dep.login("carol", "phone").await;
        carol.send_presence(0).await.unwrap();
        let mut offline = Vec::new();
        while offline.len() < EACH {
            let m = carol
                .next_message(Duration::from_secs(20))
                .await
                .expect("offline message");
            offline.push(m.body.unwrap_or_default());
        }
        let want_c: Vec<String> = (0..EACH).map(|i| format!("c{i}")).collect();
        assert_eq!(offline, want_c, "every stored message, in order");

        let want_b: Vec<String> = (0..EACH).map(|i| format!("b{i}")).collect();
        let alice = dep.login("alice", "tablet").await;
        assert_eq!(history(&alice, "bob").await, want_b);
        assert_eq!(history(&alice, "carol").await, want_c);
        let bob = dep.login("bob", "tablet").await;
        assert_eq!(history(&bob, "alice").await, want_b);
        assert_eq!(history(&carol, "alice").await, want_c);
    };
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the test finished in time");
}

/// A raw client over QUIC that logs in, enables stream management and
/// then never answers `<r/>`: nothing it receives is ever acknowledged.
struct SilentClient {
    io: client_sdk::transport::Io,
    _quic: (quinn::Endpoint, quinn::Connection),
}

impl SilentClient {
    async fn login(dep: &Deployment, user: &str, resource: &str) -> Self {
        use client_sdk::transport::{Dialer, Transport};
        let roots = client_sdk::load_roots(&dep.ca()).expect("CA");
        let dialer = Dialer::new(dep.lb(), DOMAIN, Transport::Quic, roots).expect("dialer");
        let endpoint = dialer.endpoint().expect("endpoint");
        let connected = dialer.connect(Some(&endpoint)).await.expect("connect");
        let mut io = connected.io;
        let quic = connected.quic.expect("a QUIC connection");
        io.authenticate(user, "pw", client_sdk::Mechanism::ScramSha256)
            .await
            .expect("authenticate");
        io.open(DOMAIN).await.expect("restart the stream");
        let features = io.element().await.expect("features");
        io.bind(&features, Some(resource)).await.expect("bind");
        let mut c = Self {
            io,
            _quic: (endpoint, quic),
        };
        c.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
            .await;
        let enabled = c
            .until(|el| el.name == "enabled" || el.name == "failed")
            .await;
        assert_eq!(enabled.name, "enabled", "SM enabled");
        c.send("<presence/>").await;
        c
    }

    async fn send(&mut self, xml: &str) {
        self.io.write(xml.as_bytes()).await.expect("write");
    }

    /// The next element `want` accepts (skipping `<r/>` unanswered and
    /// everything else), within 20 s.
    async fn until(
        &mut self,
        want: impl Fn(&xmpp_stream::element::Element) -> bool,
    ) -> xmpp_stream::element::Element {
        let io = &mut self.io;
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let el = io.element().await.expect("read");
                if want(&el) {
                    return el;
                }
            }
        })
        .await
        .expect("the element came in time")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_messages_delivered_but_never_acknowledged_survive_a_core_kill() {
    const WAITING: usize = 5;
    let users: Vec<String> = ["alice", "carol"].map(String::from).to_vec();
    let mut dep = Deployment::start(DOMAIN, 1, &users, "pw");
    dep.spawn_cm(1);
    dep.wait_backends(&["cm-1"]);
    let run = async {
        // Carol is offline: Alice's messages are stored for her.
        let mut alice = Client::connect(dep.client_options("alice", "phone").with_message_states())
            .await
            .expect("alice");
        let mut ids = std::collections::HashSet::new();
        for i in 0..WAITING {
            ids.insert(
                alice
                    .send_message(&format!("carol@{DOMAIN}"), &format!("w{i}"))
                    .await
                    .unwrap(),
            );
        }
        while !ids.is_empty() {
            match tokio::time::timeout(Duration::from_secs(20), alice.next_event()).await {
                Ok(Some(Event::MessageState {
                    id,
                    state: MessageState::Acknowledged,
                })) => {
                    ids.remove(&id);
                }
                Ok(Some(_)) => {}
                other => panic!("acknowledgements stopped: {other:?}"),
            }
        }
        alice.abort();

        // Carol logs in with SM and receives all of them, never acknowledging.
        let mut carol = SilentClient::login(&dep, "carol", "phone").await;
        let mut received = Vec::new();
        while received.len() < WAITING {
            let m = carol
                .until(|el| el.name == "message" && el.child("body", "jabber:client").is_some())
                .await;
            received.push(
                m.child("body", "jabber:client")
                    .map(|b| b.text())
                    .unwrap_or_default(),
            );
        }
        let want: Vec<String> = (0..WAITING).map(|i| format!("w{i}")).collect();
        assert_eq!(
            received, want,
            "the stored messages reached the silent client"
        );

        // The core dies before any acknowledgement; it starts again.
        dep.kill(0);
        drop(carol);
        dep.restart_core();

        let mut fresh = dep.login("carol", "tablet").await;
        fresh.send_presence(0).await.unwrap();
        let mut again = Vec::new();
        while again.len() < WAITING {
            let m = fresh
                .next_message(Duration::from_secs(20))
                .await
                .expect("a stored message after the restart");
            again.push(m.body.unwrap_or_default());
        }
        assert_eq!(again, want, "nothing unacknowledged was removed");
    };
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_delivered_live_but_never_acknowledged_survive_a_core_kill() {
    live_messages_survive_a_core_kill(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_delivered_live_but_never_acknowledged_survive_a_core_kill_on_postgresql() {
    let Some(url) = im_core::storage::postgres_for_tests("ll_crash") else {
        println!("skipped: LONGLINK_TEST_POSTGRES is unset");
        return;
    };
    live_messages_survive_a_core_kill(Some(&url)).await;
}

/// Carol, online with SM, never acknowledges; Alice's chats and body-less
/// receipts to her are acknowledged to Alice; the core is killed: after
/// the restart a fresh login of Carol's gets every one once, in order.
async fn live_messages_survive_a_core_kill(database: Option<&str>) {
    const SENT: usize = 20;
    let users: Vec<String> = ["alice", "carol"].map(String::from).to_vec();
    let mut dep = Deployment::start_with_database(DOMAIN, 1, &users, "pw", database);
    dep.spawn_cm(1);
    dep.wait_backends(&["cm-1"]);
    let run = async {
        // Carol is online with SM and never acknowledges anything.
        let mut carol = SilentClient::login(&dep, "carol", "phone").await;
        let mut alice = Client::connect(dep.client_options("alice", "phone").with_message_states())
            .await
            .expect("alice");
        // Chats and body-less receipts (no archive write: only the live row
        // keeps them), the last one a chat: its acknowledgement covers all.
        let mut ids = Vec::new();
        let mut waiting = std::collections::HashSet::new();
        for i in 0..SENT {
            if i % 3 == 2 {
                let id = format!("rcpt-{i}");
                let receipt = format!(
                    "<message to='carol@{DOMAIN}' type='chat' id='{id}'><received xmlns='urn:xmpp:receipts' id='x{i}'/></message>"
                );
                alice.send_raw(receipt.as_bytes()).await.unwrap();
                ids.push(id);
            } else {
                let id = alice
                    .send_message(&format!("carol@{DOMAIN}"), &format!("m{i}"))
                    .await
                    .unwrap();
                waiting.insert(id.clone());
                ids.push(id);
            }
        }
        assert!(!ids[SENT - 1].starts_with("rcpt"), "the last one is a chat");
        while !waiting.is_empty() {
            match tokio::time::timeout(Duration::from_secs(20), alice.next_event()).await {
                Ok(Some(Event::MessageState {
                    id,
                    state: MessageState::Acknowledged,
                })) => {
                    waiting.remove(&id);
                }
                Ok(Some(_)) => {}
                other => panic!("acknowledgements stopped: {other:?}"),
            }
        }
        // Carol had every one of them live (unacknowledged).
        let mut live = Vec::new();
        while live.len() < SENT {
            let m = carol.until(|el| el.name == "message").await;
            live.push(m.attr("id").unwrap_or_default().to_owned());
        }
        assert_eq!(live, ids, "delivered live, in order");

        // The core dies before any acknowledgement from Carol; it starts again.
        dep.kill(0);
        alice.abort();
        drop(carol);
        dep.restart_core();

        // Carol logs in afresh (a raw client, which shows receipts too);
        // Alice sends a last chat: it comes after every stored one.
        let alice = dep.login("alice", "tablet").await;
        let mut fresh = SilentClient::login(&dep, "carol", "tablet").await;
        let end = alice
            .send_message(&format!("carol@{DOMAIN}"), "end")
            .await
            .unwrap();
        let mut again = Vec::new();
        loop {
            let m = fresh.until(|el| el.name == "message").await;
            let id = m.attr("id").unwrap_or_default().to_owned();
            if id == end {
                break;
            }
            again.push(id);
        }
        let raw = again.len();
        let mut seen = std::collections::HashSet::new();
        again.retain(|id| seen.insert(id.clone()));
        assert_eq!(
            again,
            ids,
            "every message acknowledged to Alice reached Carol once, in order (after dropping {} duplicates by id)",
            raw - again.len()
        );
    };
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the test finished in time");
}
