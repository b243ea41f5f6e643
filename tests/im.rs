//! The IM features end to end, through real CMs and the core, on both
//! storage backends: two users who never met subscribe to each other (one
//! approving after coming online), see each other's presence, a third
//! device gets carbons, and a fresh device pages through the whole
//! conversation from the archive. Blocking (XEP-0191) and private XML
//! storage (XEP-0049) and personal eventing (XEP-0163) are checked the
//! same way, and the TURN credentials
//! of external service discovery (XEP-0215) against coturn.

use std::time::Duration;

use client_sdk::im::{HistoryQuery, Subscription, SubscriptionRequest};
use client_sdk::transport::{Dialer, Transport};
use client_sdk::{Carbon, Client, Event};
use xmpp_stream::element::Element;
use xmpp_stream::ns;
mod support;
use support::{Cluster, DOMAIN, WAIT, bounded, jid};

/// Waits for the first event `pick` accepts, skipping others.
async fn wait_for<T>(c: &mut Client, what: &str, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, c.next_event()).await {
            Ok(Some(ev)) => {
                if let Some(t) = pick(&ev) {
                    return t;
                }
            }
            Ok(None) => panic!("{}: session ended waiting for {what}", c.jid()),
            Err(_) => panic!("{}: timed out waiting for {what}", c.jid()),
        }
    }
}

async fn subscription_from(c: &mut Client, from: &str, kind: SubscriptionRequest) {
    let from = jid(from);
    wait_for(c, &format!("{kind:?} from {from}"), |ev| match ev {
        Event::Subscription { from: f, kind: k } if *f == from && *k == kind => Some(()),
        _ => None,
    })
    .await
}

async fn presence_from(c: &mut Client, full: &str) {
    wait_for(c, &format!("presence of {full}"), |ev| match ev {
        Event::Presence(p) if p.from == full && p.available => Some(()),
        _ => None,
    })
    .await
}

async fn conversation(cluster: Cluster) {
    cluster.add_user("alice", "secret");
    cluster.add_user("bob", "secret");
    let (alice_jid, bob_jid) = (jid("alice"), jid("bob"));

    // Alice adds Bob and asks for his presence while he is offline.
    let mut alice = cluster.login(0, "alice", "phone").await;
    assert!(alice.roster().await.unwrap().is_empty());
    alice
        .set_contact(&bob_jid, Some("Bob"), &["Friends"])
        .await
        .unwrap();
    alice.subscribe(&bob_jid).await.unwrap();
    let pushed = wait_for(&mut alice, "the pending roster push", |ev| match ev {
        Event::RosterPush(item) if item.pending => Some(item.clone()),
        _ => None,
    })
    .await;
    assert_eq!(pushed.jid, bob_jid);
    assert_eq!(pushed.name.as_deref(), Some("Bob"));
    assert_eq!(pushed.groups, vec!["Friends".to_owned()]);

    // Bob comes online on the other CM: the request waited for him.
    let mut bob = cluster.login(1, "bob", "pc").await;
    subscription_from(&mut bob, "alice", SubscriptionRequest::Subscribe).await;
    bob.approve(&alice_jid).await.unwrap();
    subscription_from(&mut alice, "bob", SubscriptionRequest::Subscribed).await;
    presence_from(&mut alice, &format!("{bob_jid}/pc")).await;
    // … and asks back; Alice approves.
    bob.subscribe(&alice_jid).await.unwrap();
    subscription_from(&mut alice, "bob", SubscriptionRequest::Subscribe).await;
    alice.approve(&bob_jid).await.unwrap();
    subscription_from(&mut bob, "alice", SubscriptionRequest::Subscribed).await;
    presence_from(&mut bob, &format!("{alice_jid}/phone")).await;

    let roster = alice.roster().await.unwrap();
    assert_eq!(roster.len(), 1, "{roster:?}");
    assert_eq!(roster[0].subscription, Subscription::Both);
    assert!(!roster[0].pending);
    let roster = bob.roster().await.unwrap();
    assert_eq!(
        (roster[0].jid.as_str(), roster[0].subscription),
        (alice_jid.as_str(), Subscription::Both)
    );

    // A third device of Alice's: it sees both contacts' presence at login
    // (probes), and carbon copies of the conversation both ways.
    let mut desk = cluster.login(1, "alice", "desk").await;
    presence_from(&mut desk, &format!("{bob_jid}/pc")).await;
    let mut sent = Vec::new();
    for i in 0..10 {
        let (from, to, to_jid) = if i % 2 == 0 {
            (&alice, &mut bob, format!("{bob_jid}/pc"))
        } else {
            (&bob, &mut alice, format!("{alice_jid}/phone"))
        };
        let body = format!("message {i}");
        from.send_message(&to_jid, &body).await.unwrap();
        let got = to.next_message(WAIT).await.unwrap();
        assert_eq!(got.body.as_deref(), Some(body.as_str()));
        assert!(got.stanza_id.is_some(), "{got:?}");
        // (copies of delivery receipts come too: they have no body)
        let copy = wait_for(&mut desk, "a carbon copy", |ev| match ev {
            Event::Message(m) if m.body.is_some() => Some(m.clone()),
            _ => None,
        })
        .await;
        let side = if i % 2 == 0 {
            Carbon::Sent
        } else {
            Carbon::Received
        };
        assert_eq!(
            (copy.carbon, copy.body.as_deref()),
            (Some(side), Some(body.as_str()))
        );
        sent.push((body, got.stanza_id.unwrap()));
    }

    // A fresh device pages through the history, oldest first, four at a time.
    let tablet = cluster.login(0, "alice", "tablet").await;
    let mut history = Vec::new();
    let mut query = HistoryQuery {
        with: Some(bob_jid.clone()),
        max: Some(4),
        ..Default::default()
    };
    loop {
        let page = tablet.history(&query).await.unwrap();
        history.extend(page.messages.iter().cloned());
        if page.complete {
            break;
        }
        query.after = page.last.clone();
        assert!(history.len() <= 10, "paging does not end");
    }
    let got: Vec<(String, String)> = history
        .iter()
        .map(|a| (a.message.body.clone().unwrap_or_default(), a.id.clone()))
        .collect();
    assert_eq!(
        got, sent,
        "the whole conversation, in order, with the ids delivered"
    );
    // Newest first: the last page, then the one before it.
    let latest = tablet
        .history(&HistoryQuery {
            latest: true,
            max: Some(3),
            ..Default::default()
        })
        .await
        .unwrap();
    let ids: Vec<&str> = latest.messages.iter().map(|a| a.id.as_str()).collect();
    let want: Vec<&str> = sent[7..].iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!((ids, latest.complete), (want, false));
    let earlier = tablet
        .history(&HistoryQuery {
            before: latest.first.clone(),
            max: Some(3),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(earlier.messages[2].id, sent[6].1);
    // Bob's archive holds the same ids.
    let bobs = bob
        .history(&HistoryQuery {
            with: Some(alice_jid.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let ids: Vec<String> = bobs.messages.into_iter().map(|a| a.id).collect();
    let want: Vec<String> = sent.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(ids, want);

    // Removing the contact ends both subscriptions.
    alice.remove_contact(&bob_jid).await.unwrap();
    subscription_from(&mut bob, "alice", SubscriptionRequest::Unsubscribe).await;
    let roster = bob.roster().await.unwrap();
    assert_eq!(roster[0].subscription, Subscription::None, "{roster:?}");
    assert!(alice.roster().await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(50)).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_band_registration_creates_accounts_only_where_enabled() {
    bounded(60, async {
        let open = Cluster::start_with_registration(1).await;
        let dave = open.options(0, "dave", "dave's secret");
        client_sdk::im::register(&dave).await.expect("registered");
        let again = client_sdk::im::register(&open.options(0, "dave", "other")).await;
        assert!(
            matches!(&again, Err(client_sdk::ClientError::StanzaError(c)) if c == "conflict"),
            "{again:?}"
        );
        let client = Client::connect(dave)
            .await
            .expect("the new account logs in");
        client.disconnect().await;
        let bad = client_sdk::im::register(&open.options(0, "Dave", "")).await;
        assert!(
            matches!(&bad, Err(client_sdk::ClientError::StanzaError(c)) if c == "not-acceptable"),
            "{bad:?}"
        );
        let metrics = open.metrics().await;
        assert!(
            metrics.contains("longlink_core_registrations_total{result=\"created\"} 1"),
            "{metrics}"
        );
        open.shutdown().await;

        // Off by default: not even offered.
        let closed = Cluster::start(1).await;
        let refused = client_sdk::im::register(&closed.options(0, "eve", "pw")).await;
        assert!(
            matches!(&refused, Err(client_sdk::ClientError::StanzaError(c)) if c == "not-allowed"),
            "{refused:?}"
        );
        closed.shutdown().await;
    })
    .await;
}

/// A CM holds a client's stream features until it has heard the core's
/// Welcome, so a client that connects early is offered what the core offers
/// (here in-band registration), not a guess.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_connects_before_the_core_answered_is_offered_registration() {
    bounded(60, async {
        let mut cluster = Cluster::start_with_registration(1).await;
        cluster.stop_core().await;
        // a CM process that has never heard the core
        cluster.restart_cm(0).await;
        let mut early = cluster.options(0, "frank", "frank's secret");
        early.timeout = Duration::from_secs(30);
        let registering = tokio::spawn(async move { client_sdk::im::register(&early).await });
        // A stream of our own: its header answered means the CM holds it
        // before it heard the core; the features it then sends must be the
        // core's (a guess would lack registration).
        let roots = client_sdk::load_roots(&cluster.ca()).unwrap();
        let dialer = Dialer::new(cluster.cm_addr(0), DOMAIN, Transport::Quic, roots).unwrap();
        let endpoint = dialer.endpoint().unwrap();
        let mut raw = dialer
            .connect(Some(&endpoint))
            .await
            .expect("the CM answers the stream header without the core");
        cluster.start_core().await;
        let features = raw.io.element().await.expect("features");
        assert!(
            features.child("register", ns::REGISTER_FEATURE).is_some(),
            "{features:?}"
        );
        registering
            .await
            .expect("join")
            .expect("registered once the core answered");
        let frank = Client::connect(cluster.options(0, "frank", "frank's secret"))
            .await
            .expect("the new account logs in");
        frank.disconnect().await;
        cluster.shutdown().await;
    })
    .await;
}

/// The next message error `c` gets: its id and condition.
async fn message_error(c: &mut Client) -> (Option<String>, Option<String>) {
    wait_for(c, "a message error", |ev| match ev {
        Event::Message(m) if m.kind == "error" => Some((m.id.clone(), m.error.clone())),
        _ => None,
    })
    .await
}

/// Alice blocks Bob (XEP-0191): his messages are refused, live and while
/// she is offline, hers to him too; the list outlives her session; an
/// unblock lets him through again.
async fn blocking(cluster: Cluster) {
    for user in ["alice", "bob", "carol"] {
        cluster.add_user(user, "secret");
    }
    let (alice_jid, bob_jid) = (jid("alice"), jid("bob"));
    let alice = cluster.login(0, "alice", "phone").await;
    assert!(alice.blocklist().await.unwrap().is_empty());
    alice.block(&[&bob_jid]).await.unwrap();
    assert_eq!(alice.blocklist().await.unwrap(), vec![bob_jid.clone()]);
    let mut alice = alice;

    let mut bob = cluster.login(1, "bob", "pc").await;
    let id = bob.send_message(&alice_jid, "let me in").await.unwrap();
    assert_eq!(
        message_error(&mut bob).await,
        (Some(id), Some("service-unavailable".into()))
    );
    let id = alice.send_message(&bob_jid, "go away").await.unwrap();
    assert_eq!(
        message_error(&mut alice).await,
        (Some(id), Some("not-acceptable".into()))
    );

    // Alice goes offline: Bob's message is refused by the store, Carol's kept.
    alice.disconnect().await;
    let id = bob
        .send_message(&alice_jid, "while you were out")
        .await
        .unwrap();
    assert_eq!(
        message_error(&mut bob).await,
        (Some(id), Some("service-unavailable".into()))
    );
    let carol = cluster.login(0, "carol", "pc").await;
    carol.send_message(&alice_jid, "from carol").await.unwrap();
    let mut alice = cluster.login(1, "alice", "desk").await;
    assert_eq!(alice.blocklist().await.unwrap(), vec![bob_jid.clone()]);
    let got = alice.next_message(WAIT).await.unwrap();
    assert_eq!(got.body.as_deref(), Some("from carol"), "{got:?}");

    // Unblocked, Bob gets through (and nothing of his came before).
    alice.unblock(&[]).await.unwrap();
    assert!(alice.blocklist().await.unwrap().is_empty());
    bob.send_message(&alice_jid, "hello again").await.unwrap();
    let got = alice.next_message(WAIT).await.unwrap();
    assert_eq!(got.body.as_deref(), Some("hello again"), "{got:?}");
    cluster.shutdown().await;
}

/// Private XML storage (XEP-0049): what one device stores, another reads
/// after the first logged out; nothing stored reads as an empty element.
/// Bookmarks stored there are in the bookmarks PEP node too, and back.
async fn private_storage(cluster: Cluster) {
    cluster.add_user("alice", "secret");
    let phone = cluster.login(0, "alice", "phone").await;
    let empty = phone
        .private_data("storage", "storage:bookmarks")
        .await
        .unwrap();
    assert_eq!(
        (empty.name.as_str(), empty.elements().count()),
        ("storage", 0)
    );
    let bookmarks = Element::new("storage", "storage:bookmarks").with_child(
        Element::new("conference", "storage:bookmarks")
            .with_attr("jid", "room@conference.example")
            .with_attr("autojoin", "true"),
    );
    phone.set_private_data(bookmarks.clone()).await.unwrap();
    let refused = phone
        .set_private_data(Element::new("query", "jabber:iq:roster"))
        .await;
    assert!(
        matches!(&refused, Err(client_sdk::ClientError::StanzaError(c)) if c == "not-acceptable"),
        "{refused:?}"
    );
    phone.disconnect().await;
    let desk = cluster.login(1, "alice", "desk").await;
    let got = desk
        .private_data("storage", "storage:bookmarks")
        .await
        .unwrap();
    assert_eq!(got, bookmarks);
    // bookmarks are in the PEP node too (XEP-0402 #compat), and a room
    // added there shows in private XML
    let rooms = desk
        .pep_items(None, "urn:xmpp:bookmarks:1", None)
        .await
        .unwrap();
    assert_eq!(rooms.len(), 1, "{rooms:?}");
    assert_eq!(rooms[0].id, "room@conference.example");
    assert_eq!(
        rooms[0].payload.as_ref().and_then(|c| c.attr("autojoin")),
        Some("true")
    );
    let second = Element::new("conference", "urn:xmpp:bookmarks:1").with_attr("name", "Second");
    desk.publish(
        "urn:xmpp:bookmarks:1",
        Some("second@conference.example"),
        second,
        &Default::default(),
    )
    .await
    .unwrap();
    let got = desk
        .private_data("storage", "storage:bookmarks")
        .await
        .unwrap();
    let jids: Vec<&str> = got.elements().filter_map(|c| c.attr("jid")).collect();
    assert_eq!(
        jids,
        ["room@conference.example", "second@conference.example"],
        "{got:?}"
    );
    cluster.shutdown().await;
}

const NICK: &str = "http://jabber.org/protocol/nick";
const DEVICES: &str = "eu.siacs.conversations.axolotl.devicelist";
const AVATAR: &str = "urn:xmpp:avatar:metadata";
/// The id (SHA-1) of the avatar bytes 4, 5, 6 (base64 `BAUG`).
const AVATAR_ID: &str = "e809c5d1cea47b45e34701d23f608a9a58034dc9";

/// Logs `user` in at CM `cm` wanting notifications of `nodes`, and sends
/// initial presence (which shows them, XEP-0115).
async fn login_notified(
    cluster: &Cluster,
    cm: usize,
    user: &str,
    res: &str,
    nodes: &[&str],
) -> Client {
    let opts = cluster
        .options(cm, user, "secret")
        .with_resource(res)
        .with_notify(nodes);
    // (a CM answers for a core it is still reconnecting to with a
    // temporary failure)
    let mut attempt = 0;
    let client = loop {
        match Client::connect(opts.clone()).await {
            Ok(c) => break c,
            Err(e) if attempt < 50 && e.to_string().contains("temporary-auth-failure") => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{user} logs in: {e}"),
        }
    };
    client.send_presence(0).await.expect("presence");
    client
}

/// Waits for a notification of `owner`'s `node` and returns its items'
/// texts.
async fn notified(c: &mut Client, owner: &str, node: &str) -> Vec<String> {
    let owner = jid(owner);
    wait_for(c, &format!("{owner}'s {node}"), |ev| match ev {
        Event::Pep(p) if p.from == owner && p.node == node => Some(
            p.items
                .iter()
                .map(|i| i.payload.as_ref().map(Element::text).unwrap_or_default())
                .collect(),
        ),
        _ => None,
    })
    .await
}

fn nick(text: &str) -> Element {
    Element::new("nick", NICK).with_text(text)
}

/// Subscribes `a` and `b` to each other's presence, both online.
async fn befriend(a: &mut Client, b: &mut Client) {
    let (a_jid, b_jid) = (a.jid().to_owned(), b.jid().to_owned());
    let (a_bare, b_bare) = (bare(&a_jid), bare(&b_jid));
    a.subscribe(&b_bare).await.unwrap();
    subscription_from(b, address_local(&a_bare), SubscriptionRequest::Subscribe).await;
    b.approve(&a_bare).await.unwrap();
    subscription_from(a, address_local(&b_bare), SubscriptionRequest::Subscribed).await;
    b.subscribe(&a_bare).await.unwrap();
    subscription_from(a, address_local(&b_bare), SubscriptionRequest::Subscribe).await;
    a.approve(&b_bare).await.unwrap();
    subscription_from(b, address_local(&a_bare), SubscriptionRequest::Subscribed).await;
}

fn bare(full: &str) -> String {
    full.split('/').next().unwrap_or_default().to_owned()
}

fn address_local(bare: &str) -> &str {
    bare.split('@').next().unwrap_or_default()
}

/// Personal eventing (XEP-0163): a publish reaches the owner's and its
/// contacts' sessions that want the node, and no one else; reads follow
/// the access model; a vCard photo and the PEP avatar follow each other
/// (XEP-0398); a session that logs in gets the newest items it wants;
/// nodes and items outlive a core restart.
async fn personal_eventing(mut cluster: Cluster) {
    for user in ["alice", "bob", "carol"] {
        cluster.add_user(user, "secret");
    }
    let alice_jid = jid("alice");
    let mut alice = login_notified(&cluster, 0, "alice", "phone", &[NICK]).await;
    let mut bob = login_notified(&cluster, 1, "bob", "pc", &[NICK, DEVICES, AVATAR]).await;
    befriend(&mut alice, &mut bob).await;
    // carol wants the node but is no contact; bob's desk wants nothing
    let mut carol = login_notified(&cluster, 0, "carol", "phone", &[NICK]).await;
    let mut desk = cluster.login(1, "bob", "desk").await;

    let id = alice
        .publish(NICK, None, nick("Alice"), &Default::default())
        .await
        .unwrap();
    assert!(!id.is_empty());
    assert_eq!(notified(&mut bob, "alice", NICK).await, ["Alice"]);
    assert_eq!(notified(&mut alice, "alice", NICK).await, ["Alice"]);
    // an open node (as OMEMO device lists are) is read by anyone
    let devices = Element::new("list", "eu.siacs.conversations.axolotl")
        .with_child(Element::new("device", "eu.siacs.conversations.axolotl").with_attr("id", "7"));
    let open = client_sdk::pep::NodeOptions {
        access: Some(client_sdk::pep::Access::Open),
        max_items: None,
    };
    alice
        .publish(DEVICES, Some("current"), devices.clone(), &open)
        .await
        .unwrap();
    notified(&mut bob, "alice", DEVICES).await;
    let read = carol
        .pep_items(Some(&alice_jid), DEVICES, None)
        .await
        .unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].payload.as_ref(), Some(&devices));
    // the presence-only nick is not carol's to read
    let refused = carol.pep_items(Some(&alice_jid), NICK, None).await;
    assert!(
        matches!(&refused, Err(client_sdk::ClientError::StanzaError(c)) if c == "not-authorized"),
        "{refused:?}"
    );
    // publishing with other options than the node's is refused
    let refused = alice.publish(NICK, None, nick("x"), &open).await;
    assert!(
        matches!(&refused, Err(client_sdk::ClientError::StanzaError(c)) if c == "conflict"),
        "{refused:?}"
    );
    let read = bob.pep_items(Some(&alice_jid), NICK, None).await.unwrap();
    assert_eq!(read.len(), 1, "{read:?}");

    // avatars (XEP-0398): a vCard photo becomes the PEP avatar …
    let photo = |binval: &str| {
        Element::new("PHOTO", ns::VCARD)
            .with_child(Element::new("TYPE", ns::VCARD).with_text("image/png"))
            .with_child(Element::new("BINVAL", ns::VCARD).with_text(binval))
    };
    let set = Element::new("iq", ns::CLIENT)
        .with_attr("type", "set")
        .with_child(Element::new("vCard", ns::VCARD).with_child(photo("AQID")));
    assert_eq!(alice.iq(set).await.unwrap().error, None);
    let meta = wait_for(&mut bob, "alice's avatar metadata", |ev| match ev {
        Event::Pep(p) if p.node == AVATAR && !p.items.is_empty() => p.items[0].payload.clone(),
        _ => None,
    })
    .await;
    let info = meta.elements().next().expect("an info element");
    assert_eq!(
        (info.attr("bytes"), info.attr("type")),
        (Some("3"), Some("image/png"))
    );
    // … and an avatar published to PEP becomes the vCard's photo
    let data = Element::new("data", "urn:xmpp:avatar:data").with_text("BAUG");
    alice
        .publish(
            "urn:xmpp:avatar:data",
            Some(AVATAR_ID),
            data,
            &Default::default(),
        )
        .await
        .unwrap();
    let info = Element::new("info", AVATAR)
        .with_attr("id", AVATAR_ID)
        .with_attr("bytes", "3")
        .with_attr("type", "image/png");
    alice
        .publish(
            AVATAR,
            Some(AVATAR_ID),
            Element::new("metadata", AVATAR).with_child(info),
            &Default::default(),
        )
        .await
        .unwrap();
    let get = Element::new("iq", ns::CLIENT)
        .with_attr("type", "get")
        .with_attr("to", alice_jid.as_str())
        .with_child(Element::new("vCard", ns::VCARD));
    let vcard = bob.iq(get).await.unwrap().element;
    let binval = vcard
        .child("vCard", ns::VCARD)
        .and_then(|v| v.child("PHOTO", ns::VCARD))
        .and_then(|p| p.child("BINVAL", ns::VCARD))
        .map(Element::text);
    assert_eq!(binval.as_deref(), Some("BAUG"), "{vcard:?}");

    // bob is offline while alice changes her nick; back, he gets it
    bob.disconnect().await;
    alice
        .publish(NICK, None, nick("Alice II"), &Default::default())
        .await
        .unwrap();
    notified(&mut alice, "alice", NICK).await;
    let mut bob = login_notified(&cluster, 0, "bob", "tablet", &[NICK]).await;
    assert_eq!(notified(&mut bob, "alice", NICK).await, ["Alice II"]);

    // after a core restart, nodes and items are still there
    alice.disconnect().await;
    bob.disconnect().await;
    cluster.stop_core().await;
    cluster.start_core().await;
    let alice = login_notified(&cluster, 1, "alice", "phone", &[NICK]).await;
    let read = alice.pep_items(None, NICK, None).await.unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(
        read[0].payload.as_ref().map(Element::text).as_deref(),
        Some("Alice II")
    );
    alice.delete_node(DEVICES).await.unwrap();
    let gone = alice.pep_items(None, DEVICES, None).await;
    assert!(
        matches!(&gone, Err(client_sdk::ClientError::StanzaError(c)) if c == "item-not-found"),
        "{gone:?}"
    );
    // nobody outside got a notification of what they did not want
    for (c, who) in [(&mut carol, "carol"), (&mut desk, "bob's desk")] {
        while let Ok(Some(ev)) =
            tokio::time::timeout(Duration::from_millis(200), c.next_event()).await
        {
            assert!(!matches!(ev, Event::Pep(_)), "{who} got {ev:?}");
        }
    }
    cluster.shutdown().await;
}

const ROOM: &str = "team@conference.longlink.test";

/// Waits for `body` in `room` (live, not history).
async fn room_message(c: &mut Client, body: &str) -> client_sdk::muc::RoomMessage {
    wait_for(c, &format!("room message {body}"), |ev| match ev {
        Event::RoomMessage(m) if m.body.as_deref() == Some(body) && !m.is_history => {
            Some(m.clone())
        }
        _ => None,
    })
    .await
}

/// Group chat (XEP-0045) through the SDK: a persistent room made and
/// configured by its owner, joined with history, messages with the
/// room's stanza ids and occupant ids, a wrong password and a ban
/// refused, a kick, and after a core restart the owner still owns it and
/// its archive (XEP-0313 on the room) holds what was said.
async fn group_chat(mut cluster: Cluster) {
    use client_sdk::muc::{Affiliation, JoinOptions, Removal, RoomConfig};
    assert_eq!(ROOM, format!("team@conference.{DOMAIN}"));
    for user in ["alice", "bob", "carol"] {
        cluster.add_user(user, "secret");
    }
    let mut alice = cluster.login(0, "alice", "phone").await;
    let mut bob = cluster.login(1, "bob", "pc").await;
    let carol = cluster.login(0, "carol", "phone").await;

    let joined = alice
        .join_room(ROOM, "alice", JoinOptions::default())
        .await
        .unwrap();
    assert!(joined.created(), "{joined:?}");
    assert_eq!(joined.me.affiliation, Affiliation::Owner);
    assert!(joined.me.occupant_id.is_some());
    // locked until configured: bob cannot enter yet
    let early = bob.join_room(ROOM, "bob", JoinOptions::default()).await;
    assert!(
        matches!(&early, Err(client_sdk::ClientError::StanzaError(c)) if c == "item-not-found"),
        "{early:?}"
    );
    let config = RoomConfig {
        persistent: Some(true),
        password_protected: Some(true),
        password: Some("door".into()),
        name: Some("The team".into()),
        ..RoomConfig::default()
    };
    alice.configure_room(ROOM, &config).await.unwrap();
    let read = alice.room_config(ROOM).await.unwrap();
    assert_eq!(read.persistent, Some(true));
    assert_eq!(read.name.as_deref(), Some("The team"));

    alice.send_groupchat(ROOM, "before bob came").await.unwrap();
    room_message(&mut alice, "before bob came").await;
    let wrong = bob
        .join_room(
            ROOM,
            "bob",
            JoinOptions {
                password: Some("window".into()),
                ..JoinOptions::default()
            },
        )
        .await;
    assert!(
        matches!(&wrong, Err(client_sdk::ClientError::StanzaError(c)) if c == "not-authorized"),
        "{wrong:?}"
    );
    let with_password = JoinOptions {
        password: Some("door".into()),
        ..JoinOptions::default()
    };
    let joined = bob
        .join_room(ROOM, "bob", with_password.clone())
        .await
        .unwrap();
    assert_eq!(
        joined
            .occupants
            .iter()
            .map(|o| o.nick.as_str())
            .collect::<Vec<_>>(),
        ["alice"]
    );
    // bob got the history, delayed and stamped by the room
    let old = wait_for(&mut bob, "history", |ev| match ev {
        Event::RoomMessage(m) if m.is_history => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!(old.body.as_deref(), Some("before bob came"));
    assert!(old.stanza_id.is_some());

    // a live message reaches both, with one stanza id and the sender's occupant id
    let id = bob.send_groupchat(ROOM, "hi all").await.unwrap();
    let at_alice = room_message(&mut alice, "hi all").await;
    let at_bob = room_message(&mut bob, "hi all").await;
    assert_eq!(at_bob.id.as_deref(), Some(id.as_str()));
    assert_eq!(at_alice.stanza_id, at_bob.stanza_id);
    assert_eq!(at_alice.nick.as_deref(), Some("bob"));
    assert_eq!(at_alice.occupant_id, joined.me.occupant_id);

    // a ban keeps carol out; a kick removes bob, who may come back
    alice
        .set_affiliation(ROOM, &jid("carol"), Affiliation::Outcast, Some("no"))
        .await
        .unwrap();
    let banned = carol.join_room(ROOM, "carol", with_password.clone()).await;
    assert!(
        matches!(&banned, Err(client_sdk::ClientError::StanzaError(c)) if c == "forbidden"),
        "{banned:?}"
    );
    alice.kick(ROOM, "bob", Some("cool off")).await.unwrap();
    let kicked = wait_for(&mut bob, "kicked", |ev| match ev {
        Event::Occupant(p) if p.is_self && !p.available => Some(p.clone()),
        _ => None,
    })
    .await;
    assert_eq!(kicked.removal, Some(Removal::Kicked));
    let self_ping = bob.self_ping(ROOM, "bob").await.unwrap();
    assert_eq!(self_ping, client_sdk::muc::SelfPing::NotJoined);
    bob.join_room(ROOM, "bob", with_password.clone())
        .await
        .unwrap();

    // after a core restart the room is still there, still alice's, and
    // its archive holds what was said
    alice.disconnect().await;
    bob.disconnect().await;
    carol.disconnect().await;
    cluster.stop_core().await;
    cluster.start_core().await;
    let alice = login_notified(&cluster, 1, "alice", "phone", &[]).await;
    let again = alice
        .join_room(ROOM, "alice", JoinOptions::default())
        .await
        .unwrap();
    assert!(!again.created());
    assert_eq!(again.me.affiliation, Affiliation::Owner);
    let page = alice
        .room_history(ROOM, &HistoryQuery::default())
        .await
        .unwrap();
    let bodies: Vec<&str> = page
        .messages
        .iter()
        .filter_map(|m| m.body.as_deref())
        .collect();
    assert_eq!(bodies, ["before bob came", "hi all"], "{page:?}");
    assert_eq!(page.messages[1].stanza_id, at_bob.stanza_id);
    cluster.shutdown().await;
}

/// A TURN server (coturn's `turnserver`) on loopback checking REST
/// credentials made with `secret`; killed when dropped.
struct Coturn {
    child: std::process::Child,
    port: u16,
    /// Its log (printed when a check fails).
    log: tempfile::NamedTempFile,
}

impl Coturn {
    /// Starts one, or says why it cannot (not installed): an error when
    /// `LONGLINK_REQUIRE_COTURN` is set.
    fn start(secret: &str) -> Result<Coturn, String> {
        let installed = std::process::Command::new("turnserver")
            .arg("--version")
            .output()
            .is_ok();
        if !installed {
            assert!(
                std::env::var_os("LONGLINK_REQUIRE_COTURN").is_none(),
                "LONGLINK_REQUIRE_COTURN is set but coturn's turnserver is not installed"
            );
            return Err("coturn (turnserver, turnutils_uclient) is not installed".into());
        }
        // a port free for both UDP and TCP (coturn listens on both)
        let port = (0..50)
            .find_map(|_| {
                let udp = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
                let port = udp.local_addr().ok()?.port();
                std::net::TcpListener::bind(("127.0.0.1", port)).ok()?;
                Some(port)
            })
            .ok_or("no port free for both UDP and TCP")?;
        let log = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
        let out = log.reopen().map_err(|e| e.to_string())?;
        let child = std::process::Command::new("turnserver")
            .args(["--use-auth-secret", "--static-auth-secret", secret])
            .args(["--realm", DOMAIN, "--listening-ip", "127.0.0.1"])
            .args(["--relay-ip", "127.0.0.1", "--listening-port"])
            .arg(port.to_string())
            .args([
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                "--allow-loopback-peers",
            ])
            .args(["--log-file", "stdout", "--simple-log"])
            .stdout(out)
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        Ok(Coturn { child, port, log })
    }

    /// Panics, with its log, if it has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = std::fs::read_to_string(self.log.path()).unwrap_or_default();
            panic!("turnserver exited ({status}):\n{log}");
        }
    }

    /// Its log so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Whether an allocation with these credentials relays a message
    /// (`turnutils_uclient`, client to client through the relay).
    async fn relays(&self, username: &str, password: &str) -> bool {
        let run = tokio::process::Command::new("turnutils_uclient")
            .args(["-u", username, "-w", password, "-p"])
            .arg(self.port.to_string())
            .args(["-y", "-n", "1", "-m", "1", "-l", "100", "127.0.0.1"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .status();
        matches!(
            tokio::time::timeout(Duration::from_secs(8), run).await,
            Ok(Ok(status)) if status.success()
        )
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_credentials_the_core_hands_out_are_accepted_by_coturn_and_a_forged_one_is_not() {
    const SECRET: &str = "shared with coturn";
    let mut coturn = match Coturn::start(SECRET) {
        Ok(c) => c,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    let port = coturn.port;
    bounded(120, async move {
        let configure: support::cluster::Configure = std::sync::Arc::new(move |c| {
            c.external_services = vec![im_core::external_services::ExternalService {
                kind: "turn".into(),
                host: "127.0.0.1".into(),
                port: Some(port),
                transport: Some("udp".into()),
                name: None,
                secret: Some(SECRET.into()),
                credentials_ttl_secs: 600,
            }];
        });
        let cluster = Cluster::start_configured(1, configure).await;
        cluster.add_user("alice", "secret");
        let alice = cluster.login(0, "alice", "phone").await;
        let services = alice.external_services().await.unwrap();
        let [turn] = &services[..] else {
            panic!("{services:?}")
        };
        assert_eq!((turn.kind.as_str(), turn.port), ("turn", Some(port)));
        let (Some(user), Some(pass)) = (&turn.username, &turn.password) else {
            panic!("no credentials: {turn:?}")
        };
        // (coturn may still be starting: a few tries)
        let mut relayed = false;
        for _ in 0..6 {
            coturn.assert_running();
            if coturn.relays(user, pass).await {
                relayed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert!(
            relayed,
            "coturn refused the core's credentials {user}:\n{}",
            coturn.log()
        );
        let forged = format!("{}A", &pass[..pass.len() - 1]);
        assert!(
            !coturn.relays(user, &forged).await,
            "coturn took a forged password"
        );
        // (refused as forged, not because coturn went away)
        coturn.assert_running();
        assert!(coturn.relays(user, pass).await, "{}", coturn.log());
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_room_with_password_ban_kick_history_and_archive_outlives_a_restart_on_the_embedded_store()
 {
    bounded(180, async { group_chat(Cluster::start(2).await).await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_room_with_password_ban_kick_history_and_archive_outlives_a_restart_on_postgresql()
 {
    let Some(url) = im_core::storage::postgres_for_tests("ll_rooms") else {
        return;
    };
    bounded(180, async {
        group_chat(Cluster::start_on_postgres(2, url).await).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_xml_is_stored_across_sessions_on_the_embedded_store() {
    bounded(120, async {
        private_storage(Cluster::start(2).await).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_xml_is_stored_across_sessions_on_postgresql() {
    let Some(url) = im_core::storage::postgres_for_tests("ll_private") else {
        return;
    };
    bounded(120, async {
        private_storage(Cluster::start_on_postgres(2, url).await).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pep_notifies_exactly_the_sessions_that_want_a_node_and_outlives_a_restart_on_the_embedded_store()
 {
    bounded(180, async {
        personal_eventing(Cluster::start(2).await).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pep_notifies_exactly_the_sessions_that_want_a_node_and_outlives_a_restart_on_postgresql() {
    let Some(url) = im_core::storage::postgres_for_tests("ll_pep") else {
        return;
    };
    bounded(180, async {
        personal_eventing(Cluster::start_on_postgres(2, url).await).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_user_is_refused_live_and_offline_until_unblocked_on_the_embedded_store() {
    bounded(120, async { blocking(Cluster::start(2).await).await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_user_is_refused_live_and_offline_until_unblocked_on_postgresql() {
    let Some(url) = im_core::storage::postgres_for_tests("ll_block") else {
        return;
    };
    bounded(120, async {
        blocking(Cluster::start_on_postgres(2, url).await).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_presence_carbons_and_history_on_the_embedded_store() {
    bounded(120, async { conversation(Cluster::start(2).await).await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_presence_carbons_and_history_on_postgresql() {
    let Some(url) = im_core::storage::postgres_for_tests("ll_im") else {
        return;
    };
    bounded(120, async {
        conversation(Cluster::start_on_postgres(2, url).await).await
    })
    .await;
}
