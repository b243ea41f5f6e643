use std::time::{Duration, Instant};

use xmpp_stream::element::Element;
use xmpp_stream::{StanzaCondition, ns};

use super::*;

const S: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

fn reg(jid: &str, node: &str, created: i64) -> PushRegistration {
    PushRegistration {
        jid: jid.to_owned(),
        node: node.to_owned(),
        options: None,
        created,
    }
}

fn msg(from: &str, body: &str) -> Trigger {
    Trigger::Message {
        from: from.to_owned(),
        body: Some(body.to_owned()),
    }
}

fn drain(s: &mut PushService) -> Vec<PushAction> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

/// A publish taken apart: (id, user, to, the IQ parsed).
fn publishes(actions: &[PushAction]) -> Vec<(String, String, String, Element)> {
    actions
        .iter()
        .filter_map(|a| match a {
            PushAction::Publish {
                id,
                user,
                to,
                payload,
            } => Some((
                id.clone(),
                user.clone(),
                to.clone(),
                Element::parse(payload, ns::CLIENT).expect("a publish parses"),
            )),
            _ => None,
        })
        .collect()
}

/// The summary field `var` of a publish.
fn summary(iq: &Element, var: &str) -> Option<String> {
    let form = iq
        .child("pubsub", ns::PUBSUB)?
        .child("publish", ns::PUBSUB)?
        .child("item", ns::PUBSUB)?
        .child("notification", NS)?
        .child("x", ns::DATA)?;
    form.elements()
        .find(|f| f.attr("var") == Some(var))
        .and_then(|f| f.child("value", ns::DATA))
        .map(|v| v.text())
}

/// A service with `alice`'s registrations loaded (after a first trigger at
/// `now`, from bob, whose window is open).
fn loaded_at(now: Instant, regs: Vec<PushRegistration>) -> PushService {
    let mut s = PushService::new("example.org", 7).with_include_sender(true);
    s.notify(now, "alice", msg("bob@example.org", "hi"));
    assert_eq!(
        drain(&mut s),
        vec![PushAction::LoadRegistrations {
            user: "alice".into()
        }]
    );
    s.registrations_loaded("alice", regs);
    s
}

/// Runs the service's timers up to `until`, one deadline at a time, and
/// returns what it did.
fn run_until(s: &mut PushService, until: Instant) -> Vec<PushAction> {
    let mut out = Vec::new();
    while let Some(at) = s.poll_timeout().filter(|at| *at <= until) {
        s.handle_timeout(at);
        out.extend(drain(s));
    }
    out
}

#[test]
fn a_burst_of_five_messages_is_one_publish_with_count_five() {
    let t0 = Instant::now();
    let mut s = loaded_at(t0, vec![reg("push.example.net", "node-1", 1)]);
    for (i, from) in ["carol", "bob", "dave", "erin"].into_iter().enumerate() {
        let at = t0 + (i as u32 + 1) * 300 * MS;
        s.notify(at, "alice", msg(&format!("{from}@example.org"), "x"));
    }
    assert_eq!(s.poll_timeout(), Some(t0 + COALESCE), "the first opened it");
    assert!(run_until(&mut s, t0 + COALESCE - MS).is_empty());
    let out = run_until(&mut s, t0 + COALESCE);
    let sent = publishes(&out);
    assert_eq!(out.len(), 1, "{out:?}");
    let (id, user, to, iq) = &sent[0];
    assert!(id.starts_with(ID_PREFIX));
    assert_eq!((user.as_str(), to.as_str()), ("alice", "push.example.net"));
    assert_eq!(iq.attr("type"), Some("set"));
    assert_eq!(iq.attr("from"), Some("alice@example.org"));
    assert_eq!(iq.attr("to"), Some("push.example.net"));
    assert_eq!(iq.attr("id"), Some(id.as_str()));
    assert_eq!(summary(iq, "FORM_TYPE").as_deref(), Some(SUMMARY));
    assert_eq!(summary(iq, "message-count").as_deref(), Some("5"));
    assert_eq!(
        summary(iq, "last-message-sender").as_deref(),
        Some("erin@example.org")
    );
    assert_eq!(summary(iq, "last-message-body"), None, "off by default");
    assert_eq!(summary(iq, "pending-subscription-count"), None);
    assert_eq!(s.in_flight(), 1);
    assert!(s.published(t0 + 3 * S, id, "push.example.net"));
    assert_eq!(s.in_flight(), 0);
    assert_eq!(s.poll_timeout(), None, "quiet");

    // after the window: a new burst, counting on since alice was online
    let t1 = t0 + 10 * S;
    s.notify(t1, "alice", msg("bob@example.org", "again"));
    assert_eq!(s.poll_timeout(), Some(t1 + COALESCE));
    let sent = publishes(&run_until(&mut s, t1 + COALESCE));
    assert_eq!(sent.len(), 1);
    assert_ne!(sent[0].0, *id, "a new id");
    assert_eq!(summary(&sent[0].3, "message-count").as_deref(), Some("6"));
    let stats = s.stats();
    assert_eq!((stats.published, stats.accepted), (2, 1));
}

#[test]
fn the_publish_is_the_one_of_xep_0357_with_the_stored_publish_options() {
    let t0 = Instant::now();
    let enable = Element::parse(
        br#"<enable xmlns='urn:xmpp:push:0' jid='push.example.net' node='n1'>
              <x xmlns='jabber:x:data'>
                <field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>
                <field var='secret'><value>s3cr&amp;t</value></field>
              </x>
            </enable>"#,
        ns::CLIENT,
    )
    .unwrap();
    let Ok(PushRequest::Enable { jid, node, options }) = parse_request(&enable) else {
        panic!("an enable");
    };
    let mut registration = reg(&jid, &node, 1);
    registration.options = options;
    let mut s = loaded_at(t0, vec![registration]);
    s.notify(t0, "alice", msg("bob@example.org", "hi"));
    let out = run_until(&mut s, t0 + COALESCE);
    let [PushAction::Publish { id, payload, .. }] = &out[..] else {
        panic!("{out:?}");
    };
    let text = std::str::from_utf8(payload).unwrap();
    let expected = format!(
        "<iq type=\"set\" from=\"alice@example.org\" to=\"push.example.net\" id=\"{id}\">\
         <pubsub xmlns=\"http://jabber.org/protocol/pubsub\"><publish node=\"n1\"><item>\
         <notification xmlns=\"urn:xmpp:push:0\"><x xmlns=\"jabber:x:data\" type=\"submit\">\
         <field var=\"FORM_TYPE\"><value>urn:xmpp:push:summary</value></field>\
         <field var=\"message-count\"><value>2</value></field>\
         <field var=\"last-message-sender\"><value>bob@example.org</value></field>\
         </x></notification></item></publish>\
         <publish-options><x xmlns=\"jabber:x:data\" type=\"submit\">\
         <field var=\"FORM_TYPE\"><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
         <field var=\"secret\"><value>s3cr&amp;t</value></field>\
         </x></publish-options></pubsub></iq>"
    );
    // (the client's whitespace between the form's fields is kept)
    let squeezed: String = text
        .split('>')
        .map(|part| part.trim_start())
        .collect::<Vec<_>>()
        .join(">");
    assert_eq!(squeezed, expected);
}

#[test]
fn no_publish_for_a_user_without_registrations() {
    let t0 = Instant::now();
    let mut s = loaded_at(t0, Vec::new());
    assert_eq!(s.poll_timeout(), None);
    s.notify(t0 + S, "alice", msg("bob@example.org", "hi"));
    assert!(drain(&mut s).is_empty(), "cached: not loaded again");
    assert!(run_until(&mut s, t0 + 3600 * S).is_empty());
    assert_eq!(s.stats().published, 0);
}

#[test]
fn triggers_while_a_publish_is_in_flight_go_into_the_next_one() {
    let t0 = Instant::now();
    let mut s = loaded_at(t0, vec![reg("push.example.net", "n", 1)]);
    let first = publishes(&run_until(&mut s, t0 + COALESCE));
    assert_eq!(summary(&first[0].3, "message-count").as_deref(), Some("1"));
    for i in 0..3 {
        s.notify(t0 + 3 * S + i * MS, "alice", msg("carol@example.org", "x"));
    }
    assert!(drain(&mut s).is_empty(), "one publish at a time");
    assert!(s.published(t0 + 10 * S, &first[0].0, "push.example.net"));
    // the window of those opened at the first of them: it is over already
    assert_eq!(s.poll_timeout(), Some(t0 + 10 * S));
    let next = publishes(&run_until(&mut s, t0 + 10 * S));
    assert_eq!(next.len(), 1);
    assert_eq!(summary(&next[0].3, "message-count").as_deref(), Some("4"));
    assert_eq!(
        summary(&next[0].3, "last-message-sender").as_deref(),
        Some("carol@example.org")
    );
}

#[test]
fn a_wait_error_is_tried_again_with_backoff_then_given_up() {
    let t0 = Instant::now();
    let mut s = loaded_at(t0, vec![reg("push.example.net", "n", 1)]);
    let mut now = t0 + COALESCE;
    let mut sent = publishes(&run_until(&mut s, now));
    let mut pauses = Vec::new();
    for _ in 1..MAX_TRIES {
        assert_eq!(sent.len(), 1);
        now += 100 * MS;
        assert!(s.publish_failed(
            now,
            &sent[0].0,
            "push.example.net",
            ErrorType::Wait,
            StanzaCondition::ResourceConstraint
        ));
        let due = s.poll_timeout().unwrap();
        pauses.push(due - now);
        assert!(run_until(&mut s, due - MS).is_empty());
        now = due;
        sent = publishes(&run_until(&mut s, now));
        assert_eq!(summary(&sent[0].3, "message-count").as_deref(), Some("1"));
    }
    assert_eq!(
        pauses,
        [1, 2, 4, 8, 16, 32, 64].map(|n| n * S).to_vec(),
        "1 s doubling"
    );
    // the eighth try fails too: given up, the registration kept
    assert!(s.publish_failed(
        now,
        &sent[0].0,
        "push.example.net",
        ErrorType::Wait,
        StanzaCondition::ResourceConstraint
    ));
    assert_eq!(s.poll_timeout(), None);
    assert!(drain(&mut s).is_empty(), "no Disable");
    assert_eq!(s.stats().given_up, 1);
    assert_eq!(s.stats().published, u64::from(MAX_TRIES));
    // a later message starts afresh
    s.notify(now + S, "alice", msg("bob@example.org", "x"));
    let again = publishes(&run_until(&mut s, now + S + COALESCE));
    assert_eq!(again.len(), 1);
    assert_eq!(summary(&again[0].3, "message-count").as_deref(), Some("2"));
}

#[test]
fn a_permanent_error_disables_the_registration_and_the_others_go_on() {
    for (kind, condition) in [
        (ErrorType::Cancel, StanzaCondition::ItemNotFound),
        (ErrorType::Auth, StanzaCondition::NotAuthorized),
        (ErrorType::Auth, StanzaCondition::Forbidden),
        (ErrorType::Modify, StanzaCondition::BadRequest),
    ] {
        let t0 = Instant::now();
        let mut s = loaded_at(
            t0,
            vec![
                reg("push.example.net", "a", 1),
                reg("other.example.net", "b", 2),
            ],
        );
        let sent = publishes(&run_until(&mut s, t0 + COALESCE));
        assert_eq!(sent.len(), 2, "one per registration");
        let to_a = sent.iter().find(|p| p.2 == "push.example.net").unwrap();
        let to_b = sent.iter().find(|p| p.2 == "other.example.net").unwrap();
        assert!(s.publish_failed(t0 + 3 * S, &to_a.0, &to_a.2, kind, condition));
        assert_eq!(
            drain(&mut s),
            vec![PushAction::Disable {
                user: "alice".into(),
                jid: "push.example.net".into(),
                node: "a".into()
            }],
            "{kind:?} {condition}"
        );
        assert!(s.published(t0 + 3 * S, &to_b.0, &to_b.2));
        s.notify(t0 + 10 * S, "alice", msg("bob@example.org", "x"));
        let next = publishes(&run_until(&mut s, t0 + 20 * S));
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].2, "other.example.net");
        assert_eq!(s.stats().disabled, 1);
    }
}

#[test]
fn errors_are_classified_by_type_and_condition() {
    use StanzaCondition::*;
    assert!(is_permanent(ErrorType::Cancel, ItemNotFound));
    assert!(is_permanent(ErrorType::Cancel, Forbidden));
    assert!(is_permanent(ErrorType::Auth, NotAuthorized));
    assert!(is_permanent(ErrorType::Cancel, UndefinedCondition));
    assert!(!is_permanent(ErrorType::Wait, ItemNotFound));
    assert!(!is_permanent(ErrorType::Wait, ResourceConstraint));
    // an app server (a component) not connected just now
    assert!(!is_permanent(ErrorType::Cancel, ServiceUnavailable));
    assert!(!is_permanent(ErrorType::Cancel, RemoteServerNotFound));
    assert!(!is_permanent(ErrorType::Cancel, InternalServerError));

    let iq = |inner: &str| {
        Element::parse(
            format!("<iq type='error' id='push-1'>{inner}</iq>").as_bytes(),
            ns::CLIENT,
        )
        .unwrap()
    };
    assert_eq!(
        publish_error(&iq(
            "<error type='auth'><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
        )),
        (ErrorType::Auth, NotAuthorized)
    );
    assert_eq!(
        publish_error(&iq(
            "<error type='wait'><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>busy</text><resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
        )),
        (ErrorType::Wait, ResourceConstraint)
    );
    assert_eq!(
        publish_error(&iq(
            "<error type='odd'><remote-server-timeout xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
        )),
        (ErrorType::Cancel, UndefinedCondition)
    );
    assert_eq!(
        publish_error(&iq("")),
        (ErrorType::Cancel, UndefinedCondition)
    );
}

#[test]
fn an_unanswered_publish_times_out_and_is_tried_again() {
    let t0 = Instant::now();
    let mut s = loaded_at(t0, vec![reg("push.example.net", "n", 1)]);
    let first = publishes(&run_until(&mut s, t0 + COALESCE));
    let sent_at = t0 + COALESCE;
    assert_eq!(s.poll_timeout(), Some(sent_at + PUBLISH_TIMEOUT));
    assert!(run_until(&mut s, sent_at + PUBLISH_TIMEOUT - MS).is_empty());
    assert!(run_until(&mut s, sent_at + PUBLISH_TIMEOUT).is_empty());
    assert_eq!(s.in_flight(), 0);
    assert_eq!(
        s.poll_timeout(),
        Some(sent_at + PUBLISH_TIMEOUT + RETRY_FIRST)
    );
    let second = publishes(&run_until(&mut s, sent_at + PUBLISH_TIMEOUT + RETRY_FIRST));
    assert_eq!(second.len(), 1);
    assert_ne!(second[0].0, first[0].0);
    // the first one's late answer is not taken
    assert!(!s.published(sent_at + 40 * S, &first[0].0, "push.example.net"));
    assert!(s.published(sent_at + 40 * S, &second[0].0, "push.example.net"));
    assert_eq!(s.stats().failed, 1);
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn answers_from_another_jid_or_to_unknown_ids_are_not_taken() {
    let t0 = Instant::now();
    let mut s = loaded_at(t0, vec![reg("push.example.net", "n", 1)]);
    let sent = publishes(&run_until(&mut s, t0 + COALESCE));
    let id = &sent[0].0;
    assert!(!s.published(t0 + 3 * S, id, "evil.example.net"));
    assert!(!s.publish_failed(
        t0 + 3 * S,
        id,
        "alice@example.org/phone",
        ErrorType::Cancel,
        StanzaCondition::ItemNotFound
    ));
    assert!(!s.published(t0 + 3 * S, "push-0000000000000000", "push.example.net"));
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.in_flight(), 1);
    // the JID compares normalized
    assert!(s.published(t0 + 3 * S, id, "PUSH.example.net"));
}

#[test]
fn the_body_is_sent_only_when_the_service_allows_it() {
    let t0 = Instant::now();
    let mut s = PushService::new("example.org", 1)
        .with_include_sender(true)
        .with_include_body(true);
    s.notify(t0, "alice", msg("bob@example.org", "Wherefore art thou?"));
    s.registrations_loaded("alice", vec![reg("push.example.net", "n", 1)]);
    drain(&mut s);
    let sent = publishes(&run_until(&mut s, t0 + COALESCE));
    assert_eq!(
        summary(&sent[0].3, "last-message-body").as_deref(),
        Some("Wherefore art thou?")
    );
    s.published(t0 + 3 * S, &sent[0].0, "push.example.net");
    // a long body is cut at a character boundary; one without a body
    // leaves none (not the previous one)
    let long = "é".repeat(MAX_BODY_BYTES);
    s.notify(t0 + 10 * S, "alice", msg("bob@example.org", &long));
    let sent = publishes(&run_until(&mut s, t0 + 12 * S));
    let body = summary(&sent[0].3, "last-message-body").unwrap();
    assert_eq!(body.len(), MAX_BODY_BYTES);
    assert!(long.starts_with(&body));
    s.published(t0 + 13 * S, &sent[0].0, "push.example.net");
    s.notify(
        t0 + 20 * S,
        "alice",
        Trigger::Message {
            from: "carol@example.org".into(),
            body: None,
        },
    );
    let sent = publishes(&run_until(&mut s, t0 + 22 * S));
    assert_eq!(summary(&sent[0].3, "last-message-body"), None);
    assert_eq!(
        summary(&sent[0].3, "last-message-sender").as_deref(),
        Some("carol@example.org")
    );
}

#[test]
fn subscription_requests_are_counted_apart() {
    let t0 = Instant::now();
    let mut s = PushService::new("example.org", 1).with_include_sender(true);
    s.notify(
        t0,
        "alice",
        Trigger::Subscription {
            from: "bob@example.org".into(),
        },
    );
    s.registrations_loaded("alice", vec![reg("push.example.net", "n", 1)]);
    drain(&mut s);
    let sent = publishes(&run_until(&mut s, t0 + COALESCE));
    let iq = &sent[0].3;
    assert_eq!(
        summary(iq, "pending-subscription-count").as_deref(),
        Some("1")
    );
    assert_eq!(summary(iq, "message-count"), None);
    assert_eq!(summary(iq, "last-message-sender"), None);
}

#[test]
fn coming_online_resets_the_counts_and_cancels_what_waits() {
    let t0 = Instant::now();
    let mut s = loaded_at(t0, vec![reg("push.example.net", "n", 1)]);
    s.user_online("alice");
    assert_eq!(s.poll_timeout(), None, "the window is closed");
    assert!(run_until(&mut s, t0 + 60 * S).is_empty());
    s.notify(t0 + 60 * S, "alice", msg("bob@example.org", "x"));
    let sent = publishes(&run_until(&mut s, t0 + 62 * S));
    assert_eq!(summary(&sent[0].3, "message-count").as_deref(), Some("1"));
    // a publish in flight that fails after the user came online is not
    // tried again
    s.user_online("alice");
    assert!(s.publish_failed(
        t0 + 63 * S,
        &sent[0].0,
        "push.example.net",
        ErrorType::Wait,
        StanzaCondition::ResourceConstraint
    ));
    assert_eq!(s.poll_timeout(), None);
    // so is a retry that waits
    s.notify(t0 + 70 * S, "alice", msg("bob@example.org", "x"));
    let sent = publishes(&run_until(&mut s, t0 + 72 * S));
    s.publish_failed(
        t0 + 73 * S,
        &sent[0].0,
        "push.example.net",
        ErrorType::Wait,
        StanzaCondition::ResourceConstraint,
    );
    assert!(s.poll_timeout().is_some());
    s.user_online("alice");
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn enables_and_disables_reach_the_cache_also_while_it_loads() {
    let t0 = Instant::now();
    let mut s = PushService::new("example.org", 1).with_include_sender(true);
    // not cached: nothing to do (the store has it)
    s.enable("alice", reg("push.example.net", "x", 1));
    s.disable("alice", "push.example.net", None);
    assert_eq!(s.users_cached(), 0);
    assert!(drain(&mut s).is_empty());

    s.notify(t0, "alice", msg("bob@example.org", "hi"));
    drain(&mut s);
    // while the load runs: one added, one of the loaded removed
    s.enable("alice", reg("new.example.net", "n", 10));
    s.disable("alice", "old.example.net", Some("gone"));
    s.registrations_loaded(
        "alice",
        vec![
            reg("old.example.net", "gone", 1),
            reg("old.example.net", "kept", 2),
        ],
    );
    let mut to: Vec<String> = publishes(&run_until(&mut s, t0 + COALESCE))
        .into_iter()
        .map(|p| {
            format!(
                "{} {}",
                p.2,
                p.3.child("pubsub", ns::PUBSUB)
                    .unwrap()
                    .child("publish", ns::PUBSUB)
                    .unwrap()
                    .attr("node")
                    .unwrap()
            )
        })
        .collect();
    to.sort();
    assert_eq!(to, ["new.example.net n", "old.example.net kept"]);

    // disabling every node of one app server; a late answer is not taken
    s.disable("alice", "old.example.net", None);
    assert_eq!(s.in_flight(), 1);
    s.user_online("alice");
    s.notify(t0 + 10 * S, "alice", msg("bob@example.org", "x"));
    let to: Vec<String> = publishes(&run_until(&mut s, t0 + 12 * S))
        .into_iter()
        .map(|p| p.2)
        .collect();
    assert!(
        to.is_empty(),
        "new.example.net's publish is still in flight"
    );
}

#[test]
fn too_many_changes_while_loading_load_again() {
    let t0 = Instant::now();
    let mut s = PushService::new("example.org", 1).with_include_sender(true);
    s.notify(t0, "alice", msg("bob@example.org", "hi"));
    drain(&mut s);
    for i in 0..=MAX_OPS_WHILE_LOADING {
        s.enable("alice", reg("push.example.net", &format!("n{i}"), i as i64));
    }
    s.registrations_loaded("alice", Vec::new());
    assert_eq!(
        drain(&mut s),
        vec![PushAction::LoadRegistrations {
            user: "alice".into()
        }],
        "what was loaded may miss some: loaded again"
    );
    s.registrations_loaded("alice", vec![reg("push.example.net", "n0", 1)]);
    assert_eq!(publishes(&run_until(&mut s, t0 + COALESCE)).len(), 1);
}

#[test]
fn a_user_keeps_at_most_sixteen_registrations_the_oldest_out() {
    let t0 = Instant::now();
    let mut s = loaded_at(t0, Vec::new());
    s.user_online("alice");
    let max = MAX_PUSH_REGISTRATIONS as usize;
    for i in 0..max + 2 {
        s.enable("alice", reg("push.example.net", &format!("n{i}"), i as i64));
    }
    // enabled again: replaced, not added
    s.enable("alice", reg("push.example.net", "n5", 100));
    s.notify(t0 + S, "alice", msg("bob@example.org", "x"));
    let mut nodes: Vec<String> = publishes(&run_until(&mut s, t0 + 4 * S))
        .into_iter()
        .map(|p| {
            p.3.child("pubsub", ns::PUBSUB)
                .and_then(|x| x.child("publish", ns::PUBSUB))
                .and_then(|x| x.attr("node"))
                .unwrap()
                .to_owned()
        })
        .collect();
    nodes.sort_by_key(|n| n[1..].parse::<usize>().unwrap());
    let expected: Vec<String> = (2..max + 2).map(|i| format!("n{i}")).collect();
    assert_eq!(nodes, expected);
}

#[test]
fn a_damaged_stored_form_leaves_its_registration_out() {
    let t0 = Instant::now();
    let mut damaged = reg("push.example.net", "bad", 1);
    damaged.options = Some(Bytes::from_static(b"<x xmlns='jabber:x:data'><unclosed>"));
    let mut wrong = reg("push.example.net", "wrong", 2);
    wrong.options = Some(Bytes::from_static(b"<y xmlns='jabber:x:data'/>"));
    let s_regs = vec![damaged, wrong, reg("push.example.net", "good", 3)];
    let mut s = loaded_at(t0, s_regs);
    let sent = publishes(&run_until(&mut s, t0 + COALESCE));
    assert_eq!(sent.len(), 1);
    let publish = sent[0].3.child("pubsub", ns::PUBSUB).unwrap();
    assert_eq!(
        publish.child("publish", ns::PUBSUB).unwrap().attr("node"),
        Some("good")
    );
    assert!(publish.child("publish-options", ns::PUBSUB).is_none());
}

#[test]
fn a_failed_load_drops_the_triggers_and_the_next_one_loads_again() {
    let t0 = Instant::now();
    let mut s = PushService::new("example.org", 1).with_include_sender(true);
    s.notify(t0, "alice", msg("bob@example.org", "hi"));
    drain(&mut s);
    s.load_failed("alice");
    assert_eq!(s.users_cached(), 0);
    assert_eq!(s.stats().dropped, 1);
    // a late answer for it is ignored
    s.registrations_loaded("alice", vec![reg("push.example.net", "n", 1)]);
    assert!(run_until(&mut s, t0 + 10 * S).is_empty());
    s.notify(t0 + 10 * S, "alice", msg("bob@example.org", "hi"));
    assert_eq!(
        drain(&mut s),
        vec![PushAction::LoadRegistrations {
            user: "alice".into()
        }]
    );
}

#[test]
fn forgotten_users_are_loaded_again() {
    let t0 = Instant::now();
    let mut s = loaded_at(t0, vec![reg("push.example.net", "n", 1)]);
    let sent = publishes(&run_until(&mut s, t0 + COALESCE));
    s.retain(|user| user != "alice");
    assert_eq!((s.users_cached(), s.in_flight()), (0, 0));
    assert_eq!(s.poll_timeout(), None);
    assert!(!s.published(t0 + 3 * S, &sent[0].0, "push.example.net"));
    s.notify(t0 + 4 * S, "alice", msg("bob@example.org", "hi"));
    assert_eq!(drain(&mut s).len(), 1, "loaded again");
}

#[test]
fn publish_ids_come_from_the_seed() {
    let ids = |seed: u64| {
        let t0 = Instant::now();
        let mut s = PushService::new("example.org", seed).with_include_sender(true);
        let mut ids = Vec::new();
        for i in 0..50 {
            let user = format!("u{i}");
            s.notify(t0, &user, msg("bob@example.org", "x"));
            s.registrations_loaded(&user, vec![reg("push.example.net", "n", 1)]);
        }
        for p in publishes(&run_until(&mut s, t0 + COALESCE)) {
            ids.push(p.0);
        }
        ids
    };
    let a = ids(1);
    assert_eq!(a.len(), 50);
    let mut unique = a.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 50);
    assert_eq!(ids(1), a, "the same seed, the same ids");
    assert!(ids(2).iter().all(|id| !a.contains(id)));
}

// ---- bounds ----

#[test]
fn past_the_publishes_in_flight_due_ones_wait_in_order() {
    let t0 = Instant::now();
    let mut s = PushService::new("example.org", 1).with_include_sender(true);
    let users = MAX_IN_FLIGHT + 3;
    for i in 0..users {
        let user = format!("u{i}");
        // (in order: u0's window ends first)
        s.notify(
            t0 + i as u32 * Duration::from_micros(1),
            &user,
            msg("b@example.org", "x"),
        );
        s.registrations_loaded(&user, vec![reg("push.example.net", "n", 1)]);
    }
    drain(&mut s);
    let sent = publishes(&run_until(&mut s, t0 + 3 * S));
    assert_eq!(sent.len(), MAX_IN_FLIGHT);
    assert_eq!(s.in_flight(), MAX_IN_FLIGHT);
    assert_eq!(s.poll_timeout(), Some(t0 + COALESCE + PUBLISH_TIMEOUT));
    // one answered: the first that waited goes
    assert!(s.published(t0 + 4 * S, &sent[0].0, "push.example.net"));
    let next = publishes(&drain(&mut s));
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].1, format!("u{MAX_IN_FLIGHT}"));
    // one disabled by its user: a place frees, taken at the next timeout
    s.disable("u1", "push.example.net", None);
    assert_eq!(s.poll_timeout(), Some(t0 + 4 * S), "due now");
    let next = publishes(&run_until(&mut s, t0 + 4 * S));
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].1, format!("u{}", MAX_IN_FLIGHT + 1));
}

#[test]
fn past_the_loads_at_once_triggers_of_users_not_cached_are_dropped() {
    let t0 = Instant::now();
    let mut s = PushService::new("example.org", 1).with_include_sender(true);
    for i in 0..MAX_LOADING {
        s.notify(t0, &format!("u{i}"), msg("b@example.org", "x"));
    }
    assert_eq!(drain(&mut s).len(), MAX_LOADING);
    s.notify(t0, "late", msg("b@example.org", "x"));
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.stats().dropped, 1);
    // a cached (loading) user's triggers still count
    s.notify(t0, "u0", msg("b@example.org", "x"));
    assert_eq!(s.stats().dropped, 1);
    s.registrations_loaded("u0", Vec::new());
    s.notify(t0, "late", msg("b@example.org", "x"));
    assert_eq!(drain(&mut s).len(), 1, "a load ended: room for one");
}

#[test]
fn past_the_cached_users_the_least_recently_used_is_forgotten() {
    let t0 = Instant::now();
    let mut s = PushService::new("example.org", 1).with_include_sender(true);
    for i in 0..MAX_CACHED_USERS {
        let user = format!("u{i}");
        s.notify(t0, &user, msg("b@example.org", "x"));
        s.registrations_loaded(&user, Vec::new());
    }
    drain(&mut s);
    assert_eq!(s.users_cached(), MAX_CACHED_USERS);
    // u0 is used again: u1 is the least recently used
    s.notify(t0, "u0", msg("b@example.org", "x"));
    s.notify(t0, "new", msg("b@example.org", "x"));
    assert_eq!(s.users_cached(), MAX_CACHED_USERS);
    assert_eq!(s.stats().evicted, 1);
    drain(&mut s);
    s.notify(t0, "u0", msg("b@example.org", "x"));
    assert!(drain(&mut s).is_empty(), "u0 is still cached");
    s.notify(t0, "u1", msg("b@example.org", "x"));
    assert_eq!(
        drain(&mut s),
        vec![PushAction::LoadRegistrations { user: "u1".into() }],
        "u1 was forgotten"
    );
}

#[test]
fn the_cache_is_bounded_in_bytes() {
    let t0 = Instant::now();
    let mut s = PushService::new("example.org", 1).with_include_sender(true);
    // users with sixteen registrations with 2 KiB forms each
    let form = format!(
        "<x xmlns='jabber:x:data' type='submit'><field var='secret'><value>{}</value></field></x>",
        "s".repeat(MAX_OPTIONS_BYTES - 100)
    );
    let regs: Vec<PushRegistration> = (0..MAX_PUSH_REGISTRATIONS)
        .map(|i| PushRegistration {
            options: Some(Bytes::from(form.clone())),
            ..reg("push.example.net", &format!("n{i}"), i)
        })
        .collect();
    let per_user = 16 * (MAX_OPTIONS_BYTES + REGISTRATION_OVERHEAD);
    let fit = MAX_CACHED_BYTES / per_user;
    for i in 0..fit + 10 {
        let user = format!("u{i}");
        s.notify(t0, &user, msg("b@example.org", "x"));
        s.registrations_loaded(&user, regs.clone());
        s.user_online(&user);
    }
    assert!(s.users_cached() < fit + 10, "{} cached", s.users_cached());
    assert!(s.users_cached() > fit / 2);
    assert!(s.stats().evicted >= 10);
}

// ---- parsing a client's requests ----

fn parse(xml: &str) -> Result<PushRequest, RequestError> {
    parse_request(&Element::parse(xml.as_bytes(), ns::CLIENT).unwrap())
}

#[test]
fn enable_and_disable_requests_parse() {
    assert_eq!(
        parse("<enable xmlns='urn:xmpp:push:0' jid='Push-5.Client.Example' node='yxs32'/>"),
        Ok(PushRequest::Enable {
            jid: "push-5.client.example".into(),
            node: "yxs32".into(),
            options: None
        })
    );
    let Ok(PushRequest::Enable { options, .. }) = parse(
        "<enable xmlns='urn:xmpp:push:0' jid='push.example' node='n'>\
         <x xmlns='jabber:x:data'><field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
         <field var='secret'><value>eruio234vzxc2kla-91</value></field></x></enable>",
    ) else {
        panic!("an enable with a form");
    };
    let form = Element::parse(&options.unwrap(), ns::CLIENT).unwrap();
    assert_eq!((form.name.as_str(), form.ns.as_str()), ("x", ns::DATA));
    assert_eq!(form.attr("type"), Some("submit"), "kept as submitted");
    assert_eq!(form.elements().count(), 2);
    assert_eq!(
        parse("<disable xmlns='urn:xmpp:push:0' jid='push.example'/>"),
        Ok(PushRequest::Disable {
            jid: "push.example".into(),
            node: None
        })
    );
    assert_eq!(
        parse("<disable xmlns='urn:xmpp:push:0' jid='push.example' node='n'/>"),
        Ok(PushRequest::Disable {
            jid: "push.example".into(),
            node: Some("n".into())
        })
    );
}

#[test]
fn bad_enable_and_disable_requests_are_refused() {
    use RequestError::*;
    let long = "n".repeat(MAX_NODE_BYTES + 1);
    let big = "v".repeat(MAX_OPTIONS_BYTES);
    for (xml, error, condition) in [
        (
            "<enable xmlns='urn:xmpp:push:1' jid='p.example' node='n'/>",
            NotPush,
            StanzaCondition::BadRequest,
        ),
        (
            "<enabled xmlns='urn:xmpp:push:0' jid='p.example' node='n'/>",
            NotPush,
            StanzaCondition::BadRequest,
        ),
        (
            "<enable xmlns='urn:xmpp:push:0' node='n'/>",
            MissingJid,
            StanzaCondition::BadRequest,
        ),
        (
            "<disable xmlns='urn:xmpp:push:0'/>",
            MissingJid,
            StanzaCondition::BadRequest,
        ),
        (
            "<enable xmlns='urn:xmpp:push:0' jid='' node='n'/>",
            BadJid,
            StanzaCondition::BadRequest,
        ),
        (
            "<enable xmlns='urn:xmpp:push:0' jid='a@b@c' node='n'/>",
            BadJid,
            StanzaCondition::BadRequest,
        ),
        (
            "<disable xmlns='urn:xmpp:push:0' jid='@p.example'/>",
            BadJid,
            StanzaCondition::BadRequest,
        ),
        (
            "<enable xmlns='urn:xmpp:push:0' jid='p.example'/>",
            MissingNode,
            StanzaCondition::BadRequest,
        ),
        (
            "<enable xmlns='urn:xmpp:push:0' jid='p.example' node=''/>",
            MissingNode,
            StanzaCondition::BadRequest,
        ),
        (
            "<disable xmlns='urn:xmpp:push:0' jid='p.example' node=''/>",
            MissingNode,
            StanzaCondition::BadRequest,
        ),
        (
            &format!("<enable xmlns='urn:xmpp:push:0' jid='p.example' node='{long}'/>"),
            NodeTooLong,
            StanzaCondition::NotAcceptable,
        ),
        (
            "<enable xmlns='urn:xmpp:push:0' jid='p.example' node='n'><x xmlns='jabber:x:data'><field var='secret'><value>s</value></field></x></enable>",
            BadForm,
            StanzaCondition::BadRequest,
        ),
        (
            "<enable xmlns='urn:xmpp:push:0' jid='p.example' node='n'><x xmlns='jabber:x:data'><field var='FORM_TYPE'><value>urn:other</value></field></x></enable>",
            BadForm,
            StanzaCondition::BadRequest,
        ),
        (
            &format!(
                "<enable xmlns='urn:xmpp:push:0' jid='p.example' node='n'><x xmlns='jabber:x:data'><field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field><field var='secret'><value>{big}</value></field></x></enable>"
            ),
            FormTooLarge,
            StanzaCondition::NotAcceptable,
        ),
    ] {
        assert_eq!(parse(xml), Err(error), "{xml}");
        assert_eq!(error.condition(), condition);
    }
}

#[test]
fn the_account_feature_is_the_namespace() {
    assert_eq!(FEATURE, "urn:xmpp:push:0");
}
