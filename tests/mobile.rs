//! Mobile-grade sessions end to end: connection migration under traffic,
//! stream management (XEP-0198) with resumption, expiry to offline storage,
//! and client state indication (XEP-0352). The SIGKILL-a-CM test needs real
//! processes and lives in `tests/failover.rs`.

use std::time::Duration;

use client_sdk::{Client, Event, MessageState};
mod support;
use support::{Cluster, WAIT, bounded, chat_with_moves, jid};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_each_way_while_one_side_keeps_changing_networks() {
    bounded(120, async {
        let cluster = Cluster::start_with_lb(2).await;
        cluster.add_user("alice", "secret");
        cluster.add_user("bob", "secret");
        cluster.wait_backends(2).await;
        let mut alice = cluster.login_lb("alice", "phone").await;
        let mut bob = cluster.login_lb("bob", "phone").await;
        cluster.wait_routes(2).await;
        let node = cluster.node_of(alice.jid()).await;
        // Messages that arrive while a login's (empty) offline flush runs
        // are stored behind it by design. A marker each way: once it has
        // arrived (live, or stored and flushed behind the flush), that
        // login's flush is over, and from then on nothing has a reason to
        // be stored offline.
        alice.send_message(bob.jid(), "marker").await.unwrap();
        bob.send_message(alice.jid(), "marker").await.unwrap();
        for c in [&mut alice, &mut bob] {
            let m = c.next_message(WAIT).await.expect("the marker arrives");
            assert_eq!(m.body.as_deref(), Some("marker"));
        }
        let stored_before = cluster.metric("longlink_core_offline_stored_total").await;
        // every 100 messages: a new port, and every other time a new address
        chat_with_moves(&mut alice, &mut bob, 1000, 100, |a, i| {
            if i % 200 == 0 {
                let ip = if i % 400 == 0 {
                    "127.0.0.1"
                } else {
                    "127.0.0.2"
                };
                a.rebind_to(format!("{ip}:0").parse().unwrap()).unwrap();
            } else {
                a.network_changed().unwrap();
            }
        })
        .await;
        // one session all along: no reconnection, no re-login, same CM, and
        // every message went live (none overflowed to offline storage)
        assert_eq!(cluster.node_of(alice.jid()).await, node);
        assert_eq!(
            cluster.metric("longlink_core_offline_stored_total").await,
            stored_before,
            "{}",
            cluster.metrics().await
        );
        while let Ok(Some(ev)) =
            tokio::time::timeout(Duration::from_millis(100), alice.next_event()).await
        {
            assert!(
                !matches!(ev, Event::ConnectionLost(_) | Event::Reconnected { .. }),
                "{ev:?}"
            );
        }
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_resumes_and_nothing_acknowledged_is_lost_or_repeated() {
    bounded(120, async {
        let cluster = Cluster::start(2).await;
        cluster.add_user("alice", "secret");
        cluster.add_user("bob", "secret");
        let alice = cluster.login(0, "alice", "phone").await;
        let mut bob = cluster.login(1, "bob", "desk").await;
        alice.ping().await.unwrap();
        let (id, h) = alice.resumption().expect("resumable");
        // alice's phone loses the network for good; bob keeps writing
        alice.abort();
        for i in 0..20 {
            bob.send_message(&format!("{}/phone", jid("alice")), &format!("m{i}"))
                .await
                .unwrap();
        }
        bob.ping().await.unwrap();
        // the app restarts and resumes the session from its saved id, on another CM
        let opts = cluster
            .options(1, "alice", "secret")
            .with_previous_session(&id, h);
        let mut alice = Client::connect(opts).await.unwrap();
        assert!(alice.was_resumed());
        for i in 0..20 {
            let m = alice.next_message(WAIT).await.unwrap();
            assert_eq!(m.body, Some(format!("m{i}")));
            assert!(m.delay.is_none(), "live, not from offline storage");
        }
        alice.send_message(bob.jid(), "back").await.unwrap();
        assert_eq!(
            bob.next_message(WAIT).await.unwrap().body.as_deref(),
            Some("back")
        );
        // nothing is delivered twice: a repeat would come before this marker
        bob.send_message(alice.jid(), "marker").await.unwrap();
        assert_eq!(
            alice.next_message(WAIT).await.unwrap().body.as_deref(),
            Some("marker")
        );
        assert_eq!(alice.duplicates_dropped(), 0);
        assert_eq!(
            cluster
                .node_of(&format!("{}/phone", jid("alice")))
                .await
                .as_deref(),
            Some("cm-2")
        );
        cluster.shutdown().await;
    })
    .await;
}

/// An app saves where to resume after its session ended (a phone app sent
/// to the background saves its state whenever it gets the chance).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_ended_still_reports_its_resumption_state_and_resumes_from_it() {
    bounded(120, async {
        let mut cluster = Cluster::start(2).await;
        cluster.add_user("alice", "secret");
        cluster.add_user("bob", "secret");
        let mut opts = cluster.options(0, "alice", "secret").with_resource("phone");
        opts.reconnect = false;
        let mut alice = Client::connect(opts).await.unwrap();
        alice.send_presence(0).await.unwrap();
        let bob = cluster.login(1, "bob", "desk").await;
        let alice_jid = format!("{}/phone", jid("alice"));
        bob.send_message(&alice_jid, "before").await.unwrap();
        let m = alice.next_message(WAIT).await.unwrap();
        assert_eq!(m.body.as_deref(), Some("before"));
        // alice's CM crashes: without reconnection her session ends
        cluster.crash_cm(0);
        loop {
            match tokio::time::timeout(WAIT, alice.next_event()).await {
                Ok(Some(Event::Disconnected) | None) => break,
                Ok(Some(_)) => {}
                Err(_) => panic!("alice notices the loss"),
            }
        }
        // the session is over, and still says where to resume it
        let (id, h) = alice.resumption().expect("resumable after the end");
        assert!(h >= 1, "h counts what alice got: {h}");
        assert_eq!(alice.duplicates_dropped(), 0);
        drop(alice);
        bob.send_message(&alice_jid, "while away").await.unwrap();
        bob.ping().await.unwrap();
        let opts = cluster
            .options(1, "alice", "secret")
            .with_previous_session(&id, h);
        let mut alice = Client::connect(opts).await.unwrap();
        assert!(alice.was_resumed());
        // what she got before is not delivered again: her h covered it
        let m = alice.next_message(WAIT).await.unwrap();
        assert_eq!(m.body.as_deref(), Some("while away"));
        assert!(
            alice
                .next_message(Duration::from_millis(300))
                .await
                .is_err()
        );
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_or_foreign_sm_ids_are_refused_and_expired_sessions_go_offline() {
    bounded(120, async {
        let cluster = Cluster::start(1).await;
        for u in ["alice", "mallory", "carol"] {
            cluster.add_user(u, "secret");
        }
        let alice = Client::connect(
            cluster
                .options(0, "alice", "secret")
                .with_resource("phone")
                .with_resume_max(2),
        )
        .await
        .unwrap();
        alice.send_presence(0).await.unwrap();
        alice.ping().await.unwrap();
        let (id, h) = alice.resumption().expect("resumable");
        // another user presenting alice's id gets nothing of hers
        let mallory = Client::connect(
            cluster
                .options(0, "mallory", "secret")
                .with_previous_session(&id, h),
        )
        .await
        .unwrap();
        assert!(!mallory.was_resumed());
        assert!(mallory.jid().starts_with(&jid("mallory")));
        // a forged id (one character changed) is refused too
        let mut forged = id.clone().into_bytes();
        forged[3] = if forged[3] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        let again = Client::connect(
            cluster
                .options(0, "alice", "secret")
                .with_resource("tablet")
                .with_previous_session(&forged, h),
        )
        .await
        .unwrap();
        assert!(!again.was_resumed());
        let metrics = cluster.metrics().await;
        assert!(
            metrics.contains("longlink_core_sm_resume_failed 2"),
            "{metrics}"
        );
        again.disconnect().await;

        // alice vanishes; what carol sends waits for her, then expires offline
        alice.abort();
        let carol = cluster.login(0, "carol", "pc").await;
        for i in 0..3 {
            carol
                .send_message(&jid("alice"), &format!("while away {i}"))
                .await
                .unwrap();
        }
        carol.ping().await.unwrap();
        // her session (resumable for 2 s) expires; what it held goes offline
        cluster
            .wait_metric("longlink_core_sm_expired", |n| n == 1.0)
            .await;
        let mut alice = cluster.login(0, "alice", "phone").await;
        for i in 0..3 {
            let m = alice.next_message(WAIT).await.unwrap();
            assert_eq!(m.body, Some(format!("while away {i}")));
            assert!(
                m.delay.is_some(),
                "from offline storage, with a delay stamp"
            );
        }
        drop(mallory);
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inactive_client_gets_messages_at_once_and_the_latest_presence_on_return() {
    bounded(120, async {
        let cluster = Cluster::start(2).await;
        for u in ["bob", "carol", "dave"] {
            cluster.add_user(u, "secret");
        }
        let mut bob = cluster.login(0, "bob", "phone").await;
        let carol = cluster.login(1, "carol", "pc").await;
        let dave = cluster.login(1, "dave", "pc").await;
        bob.set_active(false).await.unwrap();
        bob.ping().await.unwrap();
        let to = bob.jid().to_owned();
        let presence =
            |status: &str| format!("<presence to='{to}'><status>{status}</status></presence>");
        carol
            .send_raw(presence("carol 1").as_bytes())
            .await
            .unwrap();
        dave.send_raw(presence("dave 1").as_bytes()).await.unwrap();
        carol
            .send_raw(presence("carol 2").as_bytes())
            .await
            .unwrap();
        carol.send_message(&to, "urgent").await.unwrap();
        // the message arrives at once, and no presence before it or after it
        let mut got_message = false;
        while let Ok(Some(ev)) =
            tokio::time::timeout(Duration::from_millis(700), bob.next_event()).await
        {
            match ev {
                Event::Message(m) if m.body.is_some() => {
                    assert_eq!(m.body.as_deref(), Some("urgent"));
                    got_message = true;
                }
                Event::Presence(p) => panic!("presence while inactive: {p:?}"),
                _ => {}
            }
        }
        assert!(got_message);
        // back in the foreground: the latest presence of each contact, once
        bob.set_active(true).await.unwrap();
        let mut statuses = Vec::new();
        while let Ok(Some(ev)) =
            tokio::time::timeout(Duration::from_millis(700), bob.next_event()).await
        {
            if let Event::Presence(p) = ev {
                statuses.push(p.status.unwrap_or_default());
            }
        }
        statuses.sort();
        assert_eq!(statuses, vec!["carol 2".to_owned(), "dave 1".to_owned()]);
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_long_outage_the_sdk_logs_in_again_sends_its_outbox_and_gets_offline_messages() {
    bounded(120, async {
        let mut cluster = Cluster::start(2).await;
        cluster.add_user("alice", "secret");
        cluster.add_user("bob", "secret");
        let opts = cluster
            .options(0, "alice", "secret")
            .with_resource("phone")
            .with_resume_max(1)
            .with_message_states();
        let mut alice = Client::connect(opts).await.unwrap();
        alice.send_presence(0).await.unwrap();
        let mut bob = cluster.login(1, "bob", "desk").await;
        alice.ping().await.unwrap();
        // alice's CM crashes and stays down longer than her session may wait
        let addr = cluster.crash_cm(0);
        loop {
            let ev = tokio::time::timeout(WAIT, alice.next_event()).await;
            if let Ok(Some(Event::ConnectionLost(_))) = ev {
                break;
            }
            assert!(ev.is_ok(), "alice notices the loss");
        }
        let queued = alice
            .send_message(bob.jid(), "written offline")
            .await
            .unwrap();
        for i in 0..2 {
            bob.send_message(&jid("alice"), &format!("while down {i}"))
                .await
                .unwrap();
        }
        bob.ping().await.unwrap();
        // the CM comes back only once her session (resumable for 1 s) expired
        cluster
            .wait_metric("longlink_core_sm_expired", |n| n >= 1.0)
            .await;
        cluster.revive_cm(0, addr).await;
        // the SDK comes back by itself: a new session, the outbox sent, offline fetched
        let mut states = Vec::new();
        let mut bodies = Vec::new();
        let mut relogged = false;
        while bodies.len() < 2 || !states.contains(&MessageState::Acknowledged) {
            let ev = tokio::time::timeout(Duration::from_secs(20), alice.next_event())
                .await
                .expect("alice comes back")
                .expect("session goes on");
            match ev {
                Event::MessageState { id, state } if id == queued => states.push(state),
                Event::Reconnected { resumed } => relogged |= !resumed,
                Event::Message(m) => {
                    assert!(m.delay.is_some(), "from offline storage");
                    bodies.push(m.body.unwrap_or_default());
                }
                _ => {}
            }
        }
        assert!(relogged, "the expired session could not be resumed");
        assert_eq!(bodies, vec!["while down 0", "while down 1"]);
        assert_eq!(states.first(), Some(&MessageState::Queued), "{states:?}");
        let m = bob.next_message(WAIT).await.unwrap();
        assert_eq!(m.body.as_deref(), Some("written offline"));
        // bob's client confirms it: a delivery receipt
        while !states.contains(&MessageState::Delivered) {
            match tokio::time::timeout(WAIT, alice.next_event()).await {
                Ok(Some(Event::MessageState { id, state })) if id == queued => states.push(state),
                Ok(Some(_)) => {}
                other => panic!("no receipt: {other:?}"),
            }
        }
        cluster.shutdown().await;
    })
    .await;
}
