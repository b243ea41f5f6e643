//! The core is SIGKILLed right after it acknowledged a burst of messages:
//! every acknowledged message is in the archive after the restart, and
//! every one stored for an offline user reaches them. Real processes.

mod support;

use std::time::{Duration, Instant};

use client_sdk::im::HistoryQuery;
use client_sdk::{Client, ConnectOptions, Event, MessageState};
use support::process::Deployment;

const DOMAIN: &str = "example.org";
const EACH: usize = 50;

fn options(dep: &Deployment, user: &str, resource: &str) -> ConnectOptions {
    ConnectOptions::new(dep.lb(), &format!("{user}@{DOMAIN}"), "pw")
        .with_ca_file(dep.ca())
        .with_resource(resource)
        .with_receipts(false)
}

/// Logs in, retrying while the core is (re)starting.
async fn login(dep: &Deployment, user: &str, resource: &str) -> Client {
    let start = Instant::now();
    loop {
        match Client::connect(options(dep, user, resource)).await {
            Ok(c) => return c,
            Err(e) if start.elapsed() < Duration::from_secs(30) => {
                tracing::debug!(error = %e, "login retry");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{user} cannot log in: {e}"),
        }
    }
}

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
        let mut alice = Client::connect(options(&dep, "alice", "phone").with_message_states())
            .await
            .expect("alice");
        let bob = login(&dep, "bob", "phone").await;
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

        let mut carol = login(&dep, "carol", "phone").await;
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
        let alice = login(&dep, "alice", "tablet").await;
        assert_eq!(history(&alice, "bob").await, want_b);
        assert_eq!(history(&alice, "carol").await, want_c);
        let bob = login(&dep, "bob", "tablet").await;
        assert_eq!(history(&bob, "alice").await, want_b);
        assert_eq!(history(&carol, "alice").await, want_c);
    };
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the test finished in time");
}
