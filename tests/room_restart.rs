//! A persistent room across a core restart, with real processes (core,
//! balancer, CM): the core is SIGKILLed and started again while two SDK
//! users sit in the room. Their streams survive at the CM (stream
//! management), but the new core knows no occupants; the SDK finds out by
//! XEP-0410 self-ping and joins again by itself — alice (no periodic
//! ping) through the check after her stream's resumption, bob (a short
//! ping interval) through his periodic one or his own resumption. Then
//! the room works again and its stored affiliations are intact.

mod support;

use std::time::Duration;

use client_sdk::muc::{Affiliation, JoinOptions, RoomConfig, RoomJoined, RoomMessage};
use client_sdk::{Client, Event};
use support::process::Deployment;

const DOMAIN: &str = "example.org";
const ROOM: &str = "coven@conference.example.org";
/// Bob's self-ping interval (the default is 10 minutes).
const BOB_PING_INTERVAL: Duration = Duration::from_secs(2);
/// How long after the core's restart both must be in the room again: the
/// core's start, a resumption or two ping intervals, and one unanswered
/// ping (30 s) to spare (an IQ in flight when the core died is lost).
const REJOINED_WITHIN: Duration = Duration::from_secs(60);

/// Events until `pick` finds one, within `within`.
async fn wait_for<T>(
    c: &mut Client,
    what: &str,
    within: Duration,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, c.next_event()).await {
            Ok(Some(ev)) => {
                if let Some(found) = pick(&ev) {
                    return found;
                }
            }
            other => panic!("waiting for {what}: {other:?}"),
        }
    }
}

/// A live (not history) message `body` in the room.
async fn room_message(c: &mut Client, body: &str) -> RoomMessage {
    wait_for(
        c,
        &format!("room message {body:?}"),
        Duration::from_secs(15),
        |ev| match ev {
            Event::RoomMessage(m) if m.body.as_deref() == Some(body) && !m.is_history => {
                Some(m.clone())
            }
            _ => None,
        },
    )
    .await
}

/// Waits for the SDK's rejoin of the room; whether the stream was resumed
/// before it (a `Reconnected { resumed: true }` seen on the way).
async fn rejoined(c: &mut Client, who: &str) -> (RoomJoined, bool) {
    let mut resumed = false;
    let joined = wait_for(c, &format!("{who}'s rejoin"), REJOINED_WITHIN, |ev| {
        match ev {
            Event::Reconnected { resumed: true } => resumed = true,
            Event::Reconnected { resumed: false } => {
                panic!("{who} logged in again: the test wants a surviving stream")
            }
            Event::RoomRejoinFailed { room, error } => {
                panic!("{who} could not rejoin {room}: {error}")
            }
            Event::RoomRejoined(j) if j.room == ROOM => return Some(j.clone()),
            _ => {}
        }
        None
    })
    .await;
    (joined, resumed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn occupants_of_a_persistent_room_rejoin_by_themselves_after_a_core_restart_and_keep_their_affiliations()
 {
    let users: Vec<String> = ["alice", "bob"].map(String::from).to_vec();
    let mut dep = Deployment::start(DOMAIN, 1, &users, "pw");
    dep.spawn_cm(1);
    dep.wait_backends(&["cm-1"]);
    let run = async {
        // alice checks her rooms only after a resumption; bob every 2 s
        let mut alice = Client::connect(
            dep.client_options("alice", "phone")
                .with_room_ping_interval(None),
        )
        .await
        .expect("alice");
        let mut bob = Client::connect(
            dep.client_options("bob", "pc")
                .with_room_ping_interval(Some(BOB_PING_INTERVAL)),
        )
        .await
        .expect("bob");
        alice.send_presence(0).await.unwrap();
        bob.send_presence(0).await.unwrap();

        // alice makes the room, persistent; bob becomes a member and joins
        let joined = alice
            .join_room(ROOM, "alice", JoinOptions::default())
            .await
            .unwrap();
        assert!(joined.created(), "{joined:?}");
        let config = RoomConfig {
            persistent: Some(true),
            ..RoomConfig::default()
        };
        alice.configure_room(ROOM, &config).await.unwrap();
        alice
            .set_affiliation(ROOM, &format!("bob@{DOMAIN}"), Affiliation::Member, None)
            .await
            .unwrap();
        let joined = bob
            .join_room(ROOM, "bob", JoinOptions::default())
            .await
            .unwrap();
        assert_eq!(joined.me.affiliation, Affiliation::Member);
        alice.send_groupchat(ROOM, "before").await.unwrap();
        room_message(&mut bob, "before").await;
        room_message(&mut alice, "before").await;

        // the core dies and comes back: the occupants are gone with it
        dep.kill(0);
        // alice says something meanwhile (her presence again): the core
        // never confirmed it, so the CM has her stream resumed
        alice.send_presence(0).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        dep.restart_core();
        let restarted = tokio::time::Instant::now();

        let (alice_back, alice_resumed) = rejoined(&mut alice, "alice").await;
        assert!(
            alice_resumed,
            "alice (no periodic ping) rejoins through the check after her resumption"
        );
        let (bob_back, bob_resumed) = rejoined(&mut bob, "bob").await;
        println!(
            "room_restart: both back in the room {:?} after the core's restart (bob resumed: {bob_resumed})",
            restarted.elapsed()
        );
        // the stored affiliations came back with the room
        assert_eq!(alice_back.me.affiliation, Affiliation::Owner);
        assert_eq!(bob_back.me.affiliation, Affiliation::Member);
        assert!(!alice_back.created() && !bob_back.created());
        let members = alice.affiliations(ROOM, Affiliation::Member).await.unwrap();
        assert_eq!(
            members.iter().map(|m| m.jid.as_str()).collect::<Vec<_>>(),
            [format!("bob@{DOMAIN}")]
        );
        let owners = alice.affiliations(ROOM, Affiliation::Owner).await.unwrap();
        assert_eq!(
            owners.iter().map(|m| m.jid.as_str()).collect::<Vec<_>>(),
            [format!("alice@{DOMAIN}")]
        );
        assert_eq!(
            alice.room_config(ROOM).await.unwrap().persistent,
            Some(true)
        );

        // what is said after the restart reaches the other one, both ways
        alice
            .send_groupchat(ROOM, "after, from alice")
            .await
            .unwrap();
        room_message(&mut bob, "after, from alice").await;
        bob.send_groupchat(ROOM, "after, from bob").await.unwrap();
        let at_alice = room_message(&mut alice, "after, from bob").await;
        assert_eq!(at_alice.nick.as_deref(), Some("bob"));
        alice.disconnect().await;
        bob.disconnect().await;
    };
    tokio::time::timeout(Duration::from_secs(150), run)
        .await
        .expect("the test finished in time");
}
