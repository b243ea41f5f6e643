//! The core is SIGKILLed and restarted while a client with stream
//! management sends a steady stream of messages to an offline user: every
//! message the SDK reported Acknowledged reaches the recipient (from
//! offline storage), in the order sent, once. Real processes.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use client_sdk::{Client, Event, MessageState};
use support::process::Deployment;

const DOMAIN: &str = "example.org";
/// Messages sent; the core is killed after a third of them.
const TOTAL: usize = 150;

/// Notes a message-state event: ids Acknowledged, and ids Failed.
fn note(ev: Event, acked: &mut HashSet<String>, failed: &mut HashSet<String>) {
    match ev {
        Event::MessageState {
            id,
            state: MessageState::Acknowledged,
        } => {
            acked.insert(id);
        }
        Event::MessageState {
            id,
            state: MessageState::Failed(_),
        } => {
            failed.insert(id);
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_arrives_in_order_once_across_a_core_restart() {
    support::cluster::init_logging();
    let users: Vec<String> = ["alice", "bob"].map(String::from).to_vec();
    let mut dep = Deployment::start(DOMAIN, 1, &users, "pw");
    dep.spawn_cm(1);
    dep.wait_backends(&["cm-1"]);
    let run = async {
        let mut alice = Client::connect(dep.client_options("alice", "phone").with_message_states())
            .await
            .expect("alice");
        alice.send_presence(0).await.unwrap();
        let mut body_of = std::collections::HashMap::new();
        let mut acked = HashSet::new();
        let mut failed = HashSet::new();
        for i in 0..TOTAL {
            let id = alice
                .send_message(&format!("bob@{DOMAIN}"), &format!("m{i}"))
                .await
                .unwrap();
            body_of.insert(id, i);
            if i == TOTAL / 3 {
                dep.kill(0);
                dep.restart_core();
            }
            // pacing (a few ms between messages) while taking events
            if let Ok(Some(ev)) =
                tokio::time::timeout(Duration::from_millis(10), alice.next_event()).await
            {
                note(ev, &mut acked, &mut failed);
            }
        }
        // Wait until every message is settled (acknowledged or failed).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while acked.len() + failed.len() < TOTAL {
            match tokio::time::timeout_at(deadline, alice.next_event()).await {
                Ok(Some(ev)) => note(ev, &mut acked, &mut failed),
                other => panic!(
                    "{} acknowledged, {} failed of {TOTAL}, then {other:?}",
                    acked.len(),
                    failed.len()
                ),
            }
        }
        println!(
            "core_restart_sm: {} acknowledged, {} failed of {TOTAL}",
            acked.len(),
            failed.len()
        );
        assert!(failed.is_empty(), "failed: {failed:?}");

        // Bob comes online: offline storage hands him everything, in order.
        let mut bob = dep.login("bob", "phone").await;
        bob.send_presence(0).await.unwrap();
        let mut want: Vec<usize> = acked.iter().map(|id| body_of[id]).collect();
        want.sort();
        let mut got = Vec::new();
        let mut seen = HashSet::new();
        while !want.iter().all(|i| seen.contains(i)) {
            let m = match bob.next_message(Duration::from_secs(20)).await {
                Ok(m) => m,
                Err(e) => panic!(
                    "bob stopped receiving after {} messages ({got:?}): {e}",
                    got.len()
                ),
            };
            let body = m.body.unwrap_or_default();
            let i: usize = body[1..].parse().expect("a numbered body");
            assert!(seen.insert(i), "m{i} arrived twice");
            got.push(i);
        }
        let in_order: Vec<usize> = got.iter().copied().filter(|i| want.contains(i)).collect();
        assert_eq!(in_order, want, "every acknowledged message, in order");
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "arrival order: {got:?}"
        );
        alice.disconnect().await;
        bob.disconnect().await;
    };
    tokio::time::timeout(Duration::from_secs(150), run)
        .await
        .expect("the test finished in time");
}
