//! Hostile XML end to end, through real CMs and the core: a client's poison
//! stanza (well-formed to a lenient parser, not to a strict one) ends only
//! the sender's stream and never reaches its recipient, whose stream goes
//! on; server claims a client forged (an archive id, a server delay) never
//! reach the recipient either.

use client_sdk::{Client, Event, Message};
mod support;
use support::{Cluster, DOMAIN, WAIT, bounded, jid};

/// Bob's events up to the first message whose body is `body`; panics on any
/// sign that his stream ended.
async fn events_until_message(bob: &mut Client, body: &str) -> (Vec<Event>, Message) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let ev = match tokio::time::timeout_at(deadline, bob.next_event()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => panic!("bob's session ended waiting for {body:?}: {seen:?}"),
            Err(_) => panic!("timed out waiting for {body:?}: {seen:?}"),
        };
        if let Event::ConnectionLost(_)
        | Event::StreamError(_)
        | Event::Disconnected
        | Event::Reconnected { .. } = ev
        {
            panic!("bob's stream did not survive: {ev:?} after {seen:?}");
        }
        if let Event::Message(m) = &ev
            && m.body.as_deref() == Some(body)
        {
            return (seen, m.clone());
        }
        seen.push(ev);
    }
}

/// Waits for the stream error that ends `c`'s stream.
async fn stream_error(c: &mut Client) -> Option<String> {
    while let Ok(Some(ev)) = tokio::time::timeout(WAIT, c.next_event()).await {
        match ev {
            Event::StreamError(condition) => return Some(condition),
            Event::Disconnected => return None,
            _ => {}
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_stanza_ends_only_the_senders_stream_and_never_reaches_the_recipient() {
    bounded(90, async {
        let cluster = Cluster::start(2).await;
        cluster.add_user("alice", "secret");
        cluster.add_user("bob", "secret");
        let mut alice = cluster.login(0, "alice", "phone").await;
        let mut bob = cluster.login(1, "bob", "pc").await;
        cluster.wait_routes(2).await;
        let bob_jid = jid("bob");

        // `<` in an attribute value: quick-xml reads it, expat ends the stream
        alice
            .send_raw(
                format!(
                    "<message to='{bob_jid}' type='chat' id='p1'><body>poison</body>\
                     <x xmlns='u' a='<b'/></message>"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        assert_eq!(
            stream_error(&mut alice).await.as_deref(),
            Some("not-well-formed")
        );

        // Alice again, with claims only the server may make.
        let alice = cluster.login(0, "alice", "desk").await;
        alice
            .send_raw(
                format!(
                    "<message to='{bob_jid}' type='chat' id='f1'><body>forged claims</body>\
                     <stanza-id xmlns='urn:xmpp:sid:0' by='{bob_jid}' id='forged'/>\
                     <delay xmlns='urn:xmpp:delay' from='{DOMAIN}' stamp='1999-01-01T00:00:00Z'/>\
                     </message>"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let (before, forged) = events_until_message(&mut bob, "forged claims").await;
        assert!(
            !before
                .iter()
                .any(|ev| matches!(ev, Event::Message(m) if m.body.as_deref() == Some("poison"))),
            "the poison reached bob: {before:?}"
        );
        assert_eq!(forged.from, alice.jid());
        assert_ne!(forged.stanza_id.as_deref(), Some("forged"));
        assert_eq!(forged.delay, None);

        // Bob's stream is the one he started with and still carries messages.
        alice.send_message(&bob_jid, "after").await.unwrap();
        events_until_message(&mut bob, "after").await;
        bob.ping().await.unwrap();
        assert!(!bob.was_resumed());
        cluster.shutdown().await;
    })
    .await;
}
