//! Push notifications (XEP-0357) in the router: a message stored for a
//! user whose only session is detached wakes the phone once its store
//! committed, a chat state does not, an online user is not woken, and an
//! app server that is not a component of this server is refused.

use cm_protocol::{Frame, Kind};

use super::test_support::*;
use super::{Action, Input, Router};
use crate::push::{COALESCE, PushService};
use crate::storage::PushRegistration;

const APP: &str = "push.x";

fn push_router() -> Router {
    let mut r = router()
        .with_components([APP.to_owned()])
        .with_push(PushService::new("x", 5));
    r.run(Input::ComponentUp { name: APP.into() });
    r
}

/// Answers the push actions of `acts` as storage would (bob's
/// registration is `registered`).
fn answer(r: &mut Router, acts: Vec<Action>, registered: &[PushRegistration]) -> Vec<Action> {
    let mut out = Vec::new();
    for a in acts {
        let next = match a {
            Action::WritePush { change } => r.step(Input::PushWritten { change, ok: true }),
            Action::LoadPush { user } => r.step(Input::PushLoaded {
                user,
                registrations: Some(registered.to_vec()),
            }),
            // a store that wakes: committed at once
            Action::StoreOffline {
                user,
                payload,
                wake: true,
                ..
            } => r.step(Input::OfflineStored { user, payload }),
            a => {
                out.push(a);
                continue;
            }
        };
        out.extend(answer(r, next, registered));
    }
    out
}

fn publishes(acts: &[Action]) -> Vec<String> {
    acts.iter()
        .filter_map(|a| match a {
            Action::ToComponent { name, payload } if name == APP => {
                Some(String::from_utf8_lossy(payload).into_owned())
            }
            _ => None,
        })
        .collect()
}

fn registration() -> PushRegistration {
    PushRegistration {
        jid: APP.into(),
        node: "n".into(),
        options: None,
        created: 1,
    }
}

/// alice (1, 10; SM) enables push on `push.x` (its IQ result is
/// returned), becomes available, and her connection drops (detached).
fn alice_away(r: &mut Router) -> Vec<Action> {
    sm_pair(r);
    let acts = stanza(
        r,
        1,
        10,
        header(Kind::Iq, "alice@x/phone", None, Some("set")),
        "<iq type='set' id='e'><enable xmlns='urn:xmpp:push:0' jid='push.x' node='n'/></iq>",
    );
    let enabled = answer(r, acts, &[registration()]);
    stanza(
        r,
        1,
        10,
        header(Kind::Presence, "alice@x/phone", None, None),
        "<presence/>",
    );
    frame(
        r,
        1,
        Frame::SessionEnd {
            sid: 10,
            jid: Some("alice@x/phone".into()),
            clean: false,
        },
    );
    enabled
}

#[test]
fn a_message_for_a_user_whose_phone_is_detached_wakes_it_once_stored_and_a_chat_state_does_not() {
    let mut r = push_router();
    let acts = alice_away(&mut r);
    assert!(
        payloads(&acts)
            .iter()
            .any(|p| p.contains("type=\"result\"") || p.contains("type='result'")),
        "{acts:?}"
    );
    // bob types, then writes
    let acts = stanza(
        &mut r,
        3,
        30,
        header(Kind::Message, "bob@x/pc", Some("alice@x"), Some("chat")),
        "<message type='chat' to='alice@x'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
    );
    let mut all = answer(&mut r, acts, &[registration()]);
    let acts = stanza(
        &mut r,
        3,
        30,
        header(Kind::Message, "bob@x/pc", Some("alice@x"), Some("chat")),
        "<message type='chat' to='alice@x'><body>are you there?</body></message>",
    );
    all.extend(answer(&mut r, acts, &[registration()]));
    assert!(publishes(&all).is_empty(), "nothing before the window ends");
    let later = t0() + COALESCE + std::time::Duration::from_millis(10);
    let acts = r.timeout(later);
    let sent = publishes(&answer(&mut r, acts, &[registration()]));
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(
        sent[0].contains("<value>1</value>"),
        "one message counted: {}",
        sent[0]
    );
}

#[test]
fn an_online_user_is_not_woken_and_a_foreign_app_server_is_refused() {
    let mut r = push_router();
    sm_pair(&mut r);
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Iq, "alice@x/phone", None, Some("set")),
        "<iq type='set' id='e'><enable xmlns='urn:xmpp:push:0' jid='p2.siacs.eu' node='n'/></iq>",
    );
    assert!(
        payloads(&acts)[0].contains("remote-server-not-found"),
        "{acts:?}"
    );
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Iq, "alice@x/phone", None, Some("set")),
        "<iq type='set' id='e2'><enable xmlns='urn:xmpp:push:0' jid='push.x' node='n'/></iq>",
    );
    answer(&mut r, acts, &[registration()]);
    stanza(
        &mut r,
        1,
        10,
        header(Kind::Presence, "alice@x/phone", None, None),
        "<presence/>",
    );
    let acts = stanza(
        &mut r,
        3,
        30,
        header(Kind::Message, "bob@x/pc", Some("alice@x"), Some("chat")),
        "<message type='chat' to='alice@x'><body>hi</body></message>",
    );
    let mut all = answer(&mut r, acts, &[registration()]);
    all.extend(r.timeout(t0() + COALESCE * 3));
    assert!(publishes(&all).is_empty(), "{all:?}");
}

#[test]
fn every_message_to_a_detached_sessions_full_jid_counts_once() {
    let mut r = push_router();
    alice_away(&mut r);
    // two messages to the detached session itself, each its own input
    for body in ["one", "two"] {
        let acts = stanza(
            &mut r,
            3,
            30,
            header(
                Kind::Message,
                "bob@x/pc",
                Some("alice@x/phone"),
                Some("chat"),
            ),
            &format!("<message type='chat' to='alice@x/phone'><body>{body}</body></message>"),
        );
        answer(&mut r, acts, &[registration()]);
    }
    let acts = r.timeout(t0() + COALESCE + std::time::Duration::from_millis(10));
    let sent = publishes(&answer(&mut r, acts, &[registration()]));
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(
        sent[0].contains("message-count") && sent[0].contains("<value>2</value>"),
        "both counted: {}",
        sent[0]
    );
}
