//! `Client::disconnect()` hands the app the events it had not read: the
//! SDK acknowledged those stanzas to the server, which will not send them
//! again. In-process cluster.

mod support;

use client_sdk::{Client, Event, MessageState};
use support::{Cluster, bounded, jid};

const COUNT: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_returns_the_messages_the_app_had_not_read() {
    bounded(60, async {
        let cluster = Cluster::start(1).await;
        cluster.add_user("alice", "secret");
        cluster.add_user("bob", "secret");
        let alice = Client::connect(
            cluster
                .options(0, "alice", "secret")
                .with_resource("phone")
                .with_message_states(),
        )
        .await
        .expect("alice");
        alice.send_presence(0).await.unwrap();
        let mut alice = alice;
        let bob = cluster.login(0, "bob", "phone").await;
        let mut ids = std::collections::HashSet::new();
        for i in 0..COUNT {
            ids.insert(
                alice
                    .send_message(&jid("bob"), &format!("m{i}"))
                    .await
                    .unwrap(),
            );
        }
        // Bob's SDK receipts each message as it takes it: once all are
        // Delivered they wait in Bob's event queue, unread.
        while !ids.is_empty() {
            match alice.next_event().await {
                Some(Event::MessageState {
                    id,
                    state: MessageState::Delivered,
                }) => {
                    ids.remove(&id);
                }
                Some(_) => {}
                None => panic!("alice's session ended"),
            }
        }
        let pending = bob.disconnect().await;
        let bodies: Vec<String> = pending
            .into_iter()
            .filter_map(|ev| match ev {
                Event::Message(m) => m.body,
                _ => None,
            })
            .collect();
        let want: Vec<String> = (0..COUNT).map(|i| format!("m{i}")).collect();
        assert_eq!(bodies, want);
        alice.disconnect().await;
    })
    .await;
}
