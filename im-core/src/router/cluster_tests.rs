//! The router in a cluster of cores: stanzas for other cores' users are
//! forwarded and their senders' acknowledgements wait for the answer;
//! forwards from peers are routed and answered; slots lost are left.

use std::time::Duration;

use bytes::Bytes;
use cm_protocol::slots::slot_of;
use cm_protocol::{Frame, Kind, SlotEpoch};

use super::shards::FORWARD_GIVE_UP;
use super::test_support::*;
use super::{Action, Input, Router};
use crate::shards::{Epoch, LeaseEvent};

const SLOTS: u16 = 2;

/// Two users of different slots (of [`SLOTS`]).
fn two_users() -> (String, String) {
    let names: Vec<String> = (0..64).map(|i| format!("u{i}@x")).collect();
    let a = names[0].clone();
    let b = names
        .iter()
        .find(|n| slot_of(n, SLOTS) != slot_of(&a, SLOTS))
        .cloned()
        .unwrap_or_default();
    (a, b)
}

/// A router of core `member` that owns `user`'s slot.
fn core_owning(member: &str, user: &str) -> Router {
    let mut r = router().with_cluster(member, SLOTS);
    let slot = slot_of(user, SLOTS);
    let acts = r.run(Input::Ownership {
        events: vec![LeaseEvent::Owned {
            slot,
            epoch: Epoch(1),
        }],
    });
    assert!(
        acts.iter().any(|a| matches!(a, Action::SlotsOwned { owned } if owned == &[SlotEpoch { slot: slot.0, epoch: 1 }])),
        "{acts:?}"
    );
    r
}

/// Peer `core` (on link `node`) says it owns `user`'s slot at `epoch`.
fn peer_owns(r: &mut Router, node: u32, core: &str, user: &str, epoch: u64) -> Vec<Action> {
    frame(
        r,
        node,
        Frame::SlotOwners {
            core: core.into(),
            slot_count: SLOTS,
            version: epoch,
            owned: vec![SlotEpoch {
                slot: slot_of(user, SLOTS).0,
                epoch,
            }],
            cores: Vec::new(),
        },
    )
}

fn forwards(acts: &[Action]) -> Vec<(String, Frame)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Forward { core, frame } => Some((core.clone(), frame.clone())),
            _ => None,
        })
        .collect()
}

fn chat_to(r: &mut Router, from_full: &str, to: &str) -> Vec<Action> {
    stanza(
        r,
        1,
        10,
        header(Kind::Message, from_full, Some(to), Some("chat")),
        "<message type='chat' id='m1'><body>hi</body></message>",
    )
}

fn handled(acts: &[Action]) -> Vec<u32> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Send {
                frame: Frame::Handled { h, .. },
                ..
            } => Some(*h),
            _ => None,
        })
        .collect()
}

/// Commits every archive write in `acts` (reporting `Stored`).
fn commit_archives(r: &mut Router, acts: &[Action]) -> Vec<Action> {
    let mut out = Vec::new();
    for a in acts {
        if let Action::Archive {
            origin: Some(origin),
            ..
        } = a
        {
            out.extend(r.run(Input::Stored { origin: *origin }));
        }
    }
    out
}

#[test]
fn a_message_to_another_cores_user_goes_there_once_and_its_senders_ack_waits_for_the_answer() {
    let (alice, bob) = two_users();
    let mut a = core_owning("a#1", &alice);
    let mut b = core_owning("b#1", &bob);
    peer_owns(&mut a, 9, "b#1", &bob, 1);
    let alice_full = bound(&mut a, 1, 10, &alice, "phone");
    sm_enable(&mut a, 1, 10, 60);
    let bob_full = bound(&mut b, 3, 30, &bob, "pc");
    stanza(
        &mut b,
        3,
        30,
        header(Kind::Presence, &bob_full, None, None),
        "<presence/>",
    );

    let acts = chat_to(&mut a, &alice_full, &bob);
    assert!(delivered_to(&acts).is_empty(), "{acts:?}");
    let sent = forwards(&acts);
    let [
        (
            core,
            Frame::Forward {
                seq,
                header,
                payload,
            },
        ),
    ] = &sent[..]
    else {
        panic!("{acts:?}")
    };
    assert_eq!(core, "b#1");
    assert_eq!(header.to.as_deref(), Some(bob.as_str()));
    // the sender's archive commits, but the peer has not answered yet
    let after_archive = commit_archives(&mut a, &acts);
    let asked = frame(&mut a, 1, Frame::AckRequest { sid: 10 });
    // (an `<r/>` is answered with what is durable: not the message yet)
    assert!(handled(&after_archive).is_empty());
    assert_eq!(handled(&asked), vec![0]);

    // core b delivers it to bob and answers
    let at_b = frame(
        &mut b,
        8,
        Frame::Forward {
            seq: *seq,
            header: header.clone(),
            payload: payload.clone(),
        },
    );
    assert_eq!(delivered_to(&at_b), vec![(3, 30)]);
    assert!(at_b.iter().any(|x| matches!(
        x,
        Action::Send { node: 8, frame: Frame::ForwardDone { seq: s, accepted: true } } if s == seq
    )));
    let answered = a.run(Input::ForwardDone {
        core: "b#1".into(),
        seq: *seq,
        accepted: true,
    });
    assert_eq!(handled(&answered), vec![1]);
    assert_eq!(a.forwards_waiting(), 0);
}

#[test]
fn a_forward_refused_by_a_core_that_lost_the_slot_goes_to_the_next_owner() {
    let (alice, bob) = two_users();
    let mut a = core_owning("a#1", &alice);
    peer_owns(&mut a, 9, "b#1", &bob, 1);
    let alice_full = bound(&mut a, 1, 10, &alice, "phone");
    let acts = chat_to(&mut a, &alice_full, &bob);
    let [(_, Frame::Forward { seq, .. })] = &forwards(&acts)[..] else {
        panic!("{acts:?}")
    };
    // b no longer owns bob's slot: it refuses; nothing is sent until an owner is known
    let refused = a.run(Input::ForwardDone {
        core: "b#1".into(),
        seq: *seq,
        accepted: false,
    });
    assert!(forwards(&refused).is_empty());
    // c claims it at a later epoch: the forward goes there, once
    let moved = peer_owns(&mut a, 7, "c#1", &bob, 2);
    let again = forwards(&moved);
    assert!(
        matches!(&again[..], [(core, Frame::Forward { seq: s, .. })] if core == "c#1" && s == seq),
        "{moved:?}"
    );
    // b's stale word (epoch 1) does not take the slot back
    assert!(forwards(&peer_owns(&mut a, 9, "b#1", &bob, 1)).is_empty());
}

#[test]
fn a_core_that_does_not_own_the_recipients_slot_refuses_a_forward() {
    let (alice, bob) = two_users();
    let mut b = core_owning("b#1", &alice); // owns alice's slot, not bob's
    let acts = frame(
        &mut b,
        8,
        Frame::Forward {
            seq: 5,
            header: header(
                Kind::Message,
                &format!("{alice}/r"),
                Some(&bob),
                Some("chat"),
            ),
            payload: Bytes::from_static(b"<message type='chat'><body>x</body></message>"),
        },
    );
    assert!(delivered_to(&acts).is_empty());
    assert!(
        acts.iter().any(|x| matches!(
            x,
            Action::Send {
                node: 8,
                frame: Frame::ForwardDone {
                    seq: 5,
                    accepted: false
                }
            }
        )),
        "{acts:?}"
    );
}

#[test]
fn a_forward_nobody_takes_is_answered_with_an_error_and_acknowledged_after_the_give_up_time() {
    let (alice, bob) = two_users();
    let mut a = core_owning("a#1", &alice);
    let alice_full = bound(&mut a, 1, 10, &alice, "phone");
    sm_enable(&mut a, 1, 10, 60);
    // bob's slot has no known owner
    let acts = chat_to(&mut a, &alice_full, &bob);
    assert!(forwards(&acts).is_empty());
    commit_archives(&mut a, &acts);
    assert_eq!(
        handled(&frame(&mut a, 1, Frame::AckRequest { sid: 10 })),
        vec![0]
    );
    let due = a.poll_timeout().unwrap_or_else(t0);
    assert!(due >= t0() + FORWARD_GIVE_UP - Duration::from_secs(1));
    let expired = a.timeout(due);
    let errors: Vec<_> = deliveries(&expired)
        .into_iter()
        .filter(|(to, xml)| *to == (1, 10) && xml.contains("recipient-unavailable"))
        .collect();
    assert_eq!(errors.len(), 1, "{expired:?}");
    assert_eq!(handled(&expired), vec![1]);
}

#[test]
fn a_lost_slots_sessions_leave_without_a_word_and_their_frames_are_refused() {
    let (alice, bob) = two_users();
    let mut a = core_owning("a#1", &alice);
    bound(&mut a, 1, 10, &alice, "phone");
    let acts = a.run(Input::Ownership {
        events: vec![LeaseEvent::Lost {
            slot: slot_of(&alice, SLOTS),
        }],
    });
    assert!(delivered_to(&acts).is_empty(), "{acts:?}");
    assert!(
        acts.iter()
            .any(|x| matches!(x, Action::SlotsOwned { owned } if owned.is_empty()))
    );
    assert!(a.table().resources(&alice).is_empty());
    // its CM, behind, announces it again: kicked so the client resumes elsewhere
    let announced = frame(
        &mut a,
        1,
        Frame::Announce {
            sid: 10,
            jid: format!("{alice}/phone"),
            available: true,
            priority: 0,
            sm: None,
        },
    );
    assert!(
        announced.iter().any(|x| matches!(
            x,
            Action::Send {
                frame: Frame::Kick { sid: 10, .. },
                ..
            }
        )),
        "{announced:?}"
    );
    let _ = bob;
}

#[test]
fn presence_reaches_a_contact_of_another_core_and_a_probe_there_is_answered() {
    let (alice, bob) = two_users();
    let mut a = core_owning("a#1", &alice);
    let mut b = core_owning("b#1", &bob);
    peer_owns(&mut a, 9, "b#1", &bob, 1);
    peer_owns(&mut b, 8, "a#1", &alice, 1);
    let bob_full = bound_with_contact(&mut b, 3, 30, &bob, &alice);
    stanza(
        &mut b,
        3,
        30,
        header(Kind::Presence, &bob_full, None, None),
        "<presence/>",
    );
    let alice_full = bound_with_contact(&mut a, 1, 10, &alice, &bob);

    // alice comes online: her presence goes to bob's core, and so does a probe
    let acts = stanza(
        &mut a,
        1,
        10,
        header(Kind::Presence, &alice_full, None, None),
        "<presence/>",
    );
    let sent = forwards(&acts);
    let kinds: Vec<Option<String>> = sent
        .iter()
        .map(|(core, f)| match f {
            Frame::Forward { header, .. } if core == "b#1" => header.stanza_type.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds, vec![None, Some("probe".into())], "{acts:?}");
    // at bob's core: the presence reaches bob; the probe is answered with
    // bob's presence, forwarded back to alice's full JID
    let mut answers = Vec::new();
    for (_, f) in sent {
        let at_b = frame(&mut b, 8, f);
        if !delivered_to(&at_b).is_empty() {
            assert_eq!(delivered_to(&at_b), vec![(3, 30)]);
        }
        answers.extend(forwards(&at_b));
    }
    let [(core, answer @ Frame::Forward { header, .. })] = &answers[..] else {
        panic!("{answers:?}")
    };
    assert_eq!(core, "a#1");
    assert_eq!(header.to.as_deref(), Some(alice_full.as_str()));
    assert_eq!(header.from, bob_full);
    // … which reaches alice's session
    let at_a = frame(&mut a, 9, answer.clone());
    assert_eq!(delivered_to(&at_a), vec![(1, 10)]);
}

#[test]
fn a_forward_waiting_for_a_slot_this_core_then_takes_is_delivered_here_and_acknowledged() {
    let (alice, bob) = two_users();
    let mut a = core_owning("a#1", &alice);
    let alice_full = bound(&mut a, 1, 10, &alice, "phone");
    sm_enable(&mut a, 1, 10, 60);
    // bob's slot has no owner: the message waits
    let acts = chat_to(&mut a, &alice_full, &bob);
    assert!(forwards(&acts).is_empty());
    commit_archives(&mut a, &acts);
    // this core takes bob's slot (bob is offline): the message is stored
    // here, and alice's acknowledgement follows the store's commit
    let took = a.run(Input::Ownership {
        events: vec![LeaseEvent::Owned {
            slot: slot_of(&bob, SLOTS),
            epoch: Epoch(2),
        }],
    });
    let stored: Vec<_> = took
        .iter()
        .filter_map(|x| match x {
            Action::StoreOffline { origin, .. } => Some(*origin),
            _ => None,
        })
        .collect();
    assert!(matches!(&stored[..], [Some(_)]), "{took:?}");
    // (it went home as a forward to this core: answered once stored)
    assert_eq!(a.forwards_waiting(), 1);
    assert_eq!(
        handled(&frame(&mut a, 1, Frame::AckRequest { sid: 10 })),
        vec![0]
    );
    let Some(origin) = stored[0] else { return };
    assert_eq!(handled(&a.run(Input::Stored { origin })), vec![1]);
    assert_eq!(a.forwards_waiting(), 0);
}

/// The SM id an `<enable/>` was answered with among `acts`.
fn sm_id(acts: &[Action]) -> String {
    acts.iter()
        .find_map(|x| match x {
            Action::Send {
                frame: Frame::SmEnabled { id, .. },
                ..
            } => Some(id.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("SM enabled: {acts:?}"))
}

/// Core a with alice's SM session (on link 1, sid 10, max 60), after
/// alice's slot was lost and taken again at a new epoch (the core forgot
/// the session); returns the core, the session's full JID and its SM id.
fn sm_session_of_a_slot_lost_and_taken_again() -> (Router, String, String) {
    let (alice, _) = two_users();
    let mut a = core_owning("a#1", &alice);
    let full = bound(&mut a, 1, 10, &alice, "phone");
    let id = sm_id(&sm_enable(&mut a, 1, 10, 60));
    let slot = slot_of(&alice, SLOTS);
    a.run(Input::Ownership {
        events: vec![LeaseEvent::Lost { slot }],
    });
    a.run(Input::Ownership {
        events: vec![LeaseEvent::Owned {
            slot,
            epoch: Epoch(3),
        }],
    });
    (a, full, id)
}

#[test]
fn a_session_of_a_slot_lost_and_taken_again_is_announced_back_without_a_conflict() {
    let (mut a, full, id) = sm_session_of_a_slot_lost_and_taken_again();
    let announced = frame(
        &mut a,
        1,
        Frame::Announce {
            sid: 10,
            jid: full,
            available: true,
            priority: 0,
            sm: Some(cm_protocol::SmSnapshot {
                id,
                handled: 0,
                sent: 0,
                client_acked: 0,
                next_seq: 0,
                max: 60,
                detached: false,
            }),
        },
    );
    assert!(
        !announced.iter().any(|x| matches!(
            x,
            Action::Send {
                frame: Frame::Kick { .. },
                ..
            }
        )),
        "{announced:?}"
    );
    assert_eq!(a.sm_counts().0, 1);
}

#[test]
fn a_resumption_that_comes_before_its_moved_sessions_announcement_waits_for_it() {
    // the slot moves away and back: this core knows the session no more
    let (mut a, full, id) = sm_session_of_a_slot_lost_and_taken_again();
    let (alice, _) = two_users();
    let resumed = |acts: &[Action]| {
        acts.iter().find_map(|x| match x {
            Action::Send {
                frame: Frame::Resumed { sid: 20, result },
                ..
            } => Some(result.is_ok()),
            _ => None,
        })
    };
    // the client resumes on another CM before its CM announces the session
    let resume = Frame::Resume {
        sid: 20,
        user: alice.clone(),
        previd: id.clone(),
        h: 0,
    };
    let early = frame(&mut a, 2, resume);
    assert_eq!(resumed(&early), None, "it waits: {early:?}");
    let snapshot = cm_protocol::SmSnapshot {
        id: id.clone(),
        handled: 0,
        sent: 0,
        client_acked: 0,
        next_seq: 0,
        max: 60,
        detached: false,
    };
    let announced = frame(
        &mut a,
        1,
        Frame::Announce {
            sid: 10,
            jid: full.clone(),
            available: true,
            priority: 0,
            sm: Some(snapshot),
        },
    );
    assert_eq!(resumed(&announced), Some(true), "{announced:?}");
    // one whose session never comes (it ended) fails once the wait is over
    frame(
        &mut a,
        2,
        Frame::SessionEnd {
            sid: 20,
            jid: Some(full),
            clean: true,
        },
    );
    let lost = frame(
        &mut a,
        2,
        Frame::Resume {
            sid: 21,
            user: alice.clone(),
            previd: id,
            h: 0,
        },
    );
    assert!(lost.is_empty(), "{lost:?}");
    let later = t0() + super::parked_resumes::RESUME_WAIT + Duration::from_millis(1);
    let expired = a.timeout(later);
    assert!(expired.iter().any(|x| matches!(
        x,
        Action::Send { frame: Frame::Resumed { sid: 21, result: Err(c) }, .. } if c == "item-not-found"
    )), "{expired:?}");
}

#[test]
fn a_forward_whose_offline_write_the_fence_refuses_is_refused_back_without_an_error() {
    let (alice, bob) = two_users();
    let mut b = core_owning("b#1", &bob); // bob has no session: stored offline
    let acts = frame(
        &mut b,
        8,
        Frame::Forward {
            seq: 7,
            header: header(
                Kind::Message,
                &format!("{alice}/r"),
                Some(&bob),
                Some("chat"),
            ),
            payload: Bytes::from_static(b"<message type='chat'><body>x</body></message>"),
        },
    );
    let Some((bounce, payload, origin)) = acts.iter().find_map(|a| match a {
        Action::StoreOffline {
            bounce,
            payload,
            origin,
            ..
        } => Some((bounce.clone(), payload.clone(), *origin)),
        _ => None,
    }) else {
        panic!("stored offline: {acts:?}")
    };
    assert!(
        !acts.iter().any(|x| matches!(
            x,
            Action::Send {
                frame: Frame::ForwardDone { .. },
                ..
            }
        )),
        "the answer waits for the write: {acts:?}"
    );
    // the slot changed hands before the write: the fence refuses it
    let refused = b.run(Input::StoreFenced {
        user: bob.split('@').next().unwrap_or_default().to_owned(),
        bounce,
        payload,
        origin,
        live: None,
    });
    assert!(
        refused.iter().any(|x| matches!(
            x,
            Action::Send {
                node: 8,
                frame: Frame::ForwardDone {
                    seq: 7,
                    accepted: false
                }
            }
        )),
        "refused back, so alice's core sends it to the new owner: {refused:?}"
    );
    assert!(
        forwards(&refused).is_empty()
            && !refused.iter().any(|x| matches!(
                x,
                Action::Send {
                    frame: Frame::Deliver { .. } | Frame::ForwardDone { accepted: true, .. },
                    ..
                }
            )),
        "no error to alice and no acceptance: {refused:?}"
    );
}

#[test]
fn a_refused_forward_is_sent_again_after_the_retry_time_and_a_stale_refusal_changes_nothing() {
    let (alice, bob) = two_users();
    let mut a = core_owning("a#1", &alice);
    peer_owns(&mut a, 9, "b#1", &bob, 1);
    let alice_full = bound(&mut a, 1, 10, &alice, "phone");
    let acts = chat_to(&mut a, &alice_full, &bob);
    let [(_, Frame::Forward { seq, .. })] = &forwards(&acts)[..] else {
        panic!("{acts:?}")
    };
    // a refusal from a core it was never sent to is ignored
    let stale = a.run(Input::ForwardDone {
        core: "c#1".into(),
        seq: *seq,
        accepted: false,
    });
    assert!(forwards(&stale).is_empty());
    assert!(
        forwards(&a.timeout(t0() + super::shards::FORWARD_RETRY)).is_empty(),
        "still sent to b: nothing to retry"
    );
    // b refuses (its write was fenced, say) but still claims the slot: no
    // word on the owner comes, and the retry sends it to b again
    let t1 = t0() + super::shards::FORWARD_RETRY;
    let refused = a.run_at(
        Input::ForwardDone {
            core: "b#1".into(),
            seq: *seq,
            accepted: false,
        },
        t1,
    );
    assert!(forwards(&refused).is_empty());
    let early = a.timeout(t1 + super::shards::FORWARD_RETRY / 2);
    assert!(forwards(&early).is_empty(), "{early:?}");
    assert!(a.poll_timeout() <= Some(t1 + super::shards::FORWARD_RETRY));
    let retried = a.timeout(t1 + super::shards::FORWARD_RETRY);
    assert!(
        matches!(&forwards(&retried)[..], [(core, Frame::Forward { seq: s, .. })] if core == "b#1" && s == seq),
        "{retried:?}"
    );
}

#[test]
fn a_message_whose_offline_write_the_fence_refuses_goes_to_the_recipients_new_owner() {
    let (alice, bob) = two_users();
    let mut a = core_owning("a#1", &alice);
    // a owns bob's slot too, at first
    let acts = a.run(Input::Ownership {
        events: vec![LeaseEvent::Owned {
            slot: slot_of(&bob, SLOTS),
            epoch: Epoch(1),
        }],
    });
    assert!(!acts.is_empty());
    let alice_full = bound(&mut a, 1, 10, &alice, "phone");
    sm_enable(&mut a, 1, 10, 60);
    // bob is offline: stored, alice's ack waits for the write
    let acts = chat_to(&mut a, &alice_full, &bob);
    let Some((bounce, payload, origin)) = acts.iter().find_map(|x| match x {
        Action::StoreOffline {
            bounce,
            payload,
            origin,
            ..
        } => Some((bounce.clone(), payload.clone(), *origin)),
        _ => None,
    }) else {
        panic!("stored offline: {acts:?}")
    };
    let _ = commit_archives(&mut a, &acts);
    // bob's slot goes to b before the write lands: the fence refuses it
    a.run(Input::Ownership {
        events: vec![LeaseEvent::Lost {
            slot: slot_of(&bob, SLOTS),
        }],
    });
    peer_owns(&mut a, 9, "b#1", &bob, 2);
    let fenced = a.run(Input::StoreFenced {
        user: bob.split('@').next().unwrap_or_default().to_owned(),
        bounce,
        payload,
        origin,
        live: None,
    });
    let sent = forwards(&fenced);
    let [(core, Frame::Forward { seq, header, .. })] = &sent[..] else {
        panic!("forwarded to the new owner: {fenced:?}")
    };
    assert_eq!(core, "b#1");
    assert_eq!(header.to.as_deref(), Some(bob.as_str()));
    assert!(
        handled(&fenced).is_empty(),
        "alice's ack waits for b: {fenced:?}"
    );
    let asked = frame(&mut a, 1, Frame::AckRequest { sid: 10 });
    assert_eq!(handled(&asked), vec![0], "not durable anywhere yet");
    let done = a.run(Input::ForwardDone {
        core: "b#1".into(),
        seq: *seq,
        accepted: true,
    });
    assert_eq!(handled(&done), vec![1]);
}

/// `full`'s `Announce` for `sid` with SM id `id` (max 60), `detached` or not.
fn sm_announce(sid: u64, full: &str, id: &str, detached: bool) -> Frame {
    Frame::Announce {
        sid,
        jid: full.into(),
        available: true,
        priority: 0,
        sm: Some(cm_protocol::SmSnapshot {
            id: id.into(),
            handled: 2,
            sent: 0,
            client_acked: 0,
            next_seq: 0,
            max: 60,
            detached,
        }),
    }
}

/// The sessions kicked among `acts`.
fn kicked(acts: &[Action]) -> Vec<(u32, u64)> {
    acts.iter()
        .filter_map(|x| match x {
            Action::Send {
                node,
                frame: Frame::Kick { sid, .. },
            } => Some((*node, *sid)),
            _ => None,
        })
        .collect()
}

/// `<resumed/>` (its `h`) or a failure for session `sid` among `acts`.
fn resumed_h(acts: &[Action], sid: u64) -> Option<Result<u32, String>> {
    acts.iter().find_map(|x| match x {
        Action::Send {
            frame: Frame::Resumed { sid: s, result },
            ..
        } if *s == sid => Some(result.clone().map(|r| r.h)),
        _ => None,
    })
}

#[test]
fn a_session_a_cm_says_is_detached_waits_here_for_its_client_which_resumes_and_its_cm_forgets_it() {
    // the session detached at a core that died; its slot is this core's now
    let (mut a, full, id) = sm_session_of_a_slot_lost_and_taken_again();
    let (alice, _) = two_users();
    let told = frame(&mut a, 1, sm_announce(10, &full, &id, true));
    assert!(kicked(&told).is_empty(), "{told:?}");
    assert_eq!(a.sm_counts(), (1, 1), "tracked and detached");
    assert!(
        a.table().resources(&alice).len() == 1,
        "routed (available while it waits)"
    );
    // its client comes back on another CM: the CM's counters hold
    let back = frame(
        &mut a,
        2,
        Frame::Resume {
            sid: 20,
            user: alice.clone(),
            previd: id.clone(),
            h: 0,
        },
    );
    assert_eq!(resumed_h(&back, 20), Some(Ok(2)), "{back:?}");
    assert_eq!(kicked(&back), vec![(1, 10)], "its old CM forgets it");
    assert_eq!(a.sm_counts(), (1, 0));
    // the old CM tells of it again (it had not heard yet): refused, and
    // told to forget it again; the resumed session is untouched
    let again = frame(&mut a, 1, sm_announce(10, &full, &id, true));
    assert_eq!(kicked(&again), vec![(1, 10)]);
    assert_eq!(a.sm_counts(), (1, 0));
}

#[test]
fn a_live_announcement_replaces_a_stale_detached_session_of_its_id_and_a_new_login_wins_over_one() {
    let (mut a, full, id) = sm_session_of_a_slot_lost_and_taken_again();
    // a CM remembered the session detached after it had resumed on
    // another CM; this core hears of the stale one first
    frame(&mut a, 1, sm_announce(10, &full, &id, true));
    let live = frame(&mut a, 2, sm_announce(20, &full, &id, false));
    assert_eq!(kicked(&live), vec![(1, 10)], "only the stale one: {live:?}");
    assert_eq!(a.sm_counts(), (1, 0), "the live one is tracked");
    // a new login took the full JID: a detached word about another
    // session of it is stale (another SM id of the same user)
    let (alice, _) = two_users();
    let mut b = core_owning("b#1", &alice);
    let full_b = bound(&mut b, 3, 30, &alice, "phone");
    assert_eq!(full_b, full);
    let stale = frame(&mut b, 1, sm_announce(10, &full, &id, true));
    assert_eq!(kicked(&stale), vec![(1, 10)], "{stale:?}");
    assert_eq!(b.sm_counts(), (0, 0));
}

#[test]
fn a_detached_session_that_expires_in_a_cluster_is_forgotten_by_its_cm_too() {
    let (mut a, full, id) = sm_session_of_a_slot_lost_and_taken_again();
    frame(&mut a, 1, sm_announce(10, &full, &id, true));
    let expired = a.timeout(t0() + Duration::from_secs(60));
    assert_eq!(kicked(&expired), vec![(1, 10)], "{expired:?}");
    assert_eq!(a.sm_counts(), (0, 0));
}

#[test]
fn a_detached_word_about_a_user_this_core_does_not_serve_is_dropped_without_a_kick() {
    let (alice, bob) = two_users();
    let mut a = core_owning("a#1", &alice);
    let acts = frame(&mut a, 1, sm_announce(10, &format!("{bob}/r"), "x", true));
    assert!(
        kicked(&acts).is_empty(),
        "the CM keeps it for the owner: {acts:?}"
    );
    let live = frame(&mut a, 1, sm_announce(11, &format!("{bob}/r"), "x", false));
    assert_eq!(kicked(&live), vec![(1, 11)]);
}

#[test]
fn a_live_announcement_of_an_sm_id_detached_here_at_another_address_is_kicked_as_before() {
    // (a CM that never heard its session's `conflict`: the session resumed
    // elsewhere and detached there; its zombie must not replace it)
    let mut r = router();
    let full = bound(&mut r, 1, 10, "alice@x", "phone");
    let id = sm_id(&sm_enable(&mut r, 1, 10, 60));
    frame(
        &mut r,
        1,
        Frame::SessionEnd {
            sid: 10,
            jid: Some(full.clone()),
            clean: false,
        },
    );
    assert_eq!(r.sm_counts(), (1, 1));
    let zombie = frame(&mut r, 2, sm_announce(20, &full, &id, false));
    assert_eq!(kicked(&zombie), vec![(2, 20)], "{zombie:?}");
    assert_eq!(r.sm_counts(), (1, 1), "the detached session waits on");
}

/// A forward from peer link 8 of a chat message from `from_full` to `to`,
/// with `body` inside.
fn forwarded_chat(r: &mut Router, from_full: &str, to: &str, inner: &str) -> Vec<Action> {
    frame(
        r,
        8,
        Frame::Forward {
            seq: 1,
            header: header(Kind::Message, from_full, Some(to), Some("chat")),
            payload: Bytes::from(format!("<message type='chat' id='m1'>{inner}</message>")),
        },
    )
}

#[test]
fn a_forwarded_chat_message_is_carbon_copied_to_the_recipients_other_resources_unless_private() {
    let (alice, bob) = two_users();
    let mut b = core_owning("b#1", &bob);
    let pc = bound(&mut b, 3, 30, &bob, "pc");
    let phone = bound(&mut b, 3, 31, &bob, "phone");
    for (sid, full) in [(30, &pc), (31, &phone)] {
        stanza(
            &mut b,
            3,
            sid,
            header(Kind::Presence, full, None, None),
            "<presence/>",
        );
    }
    stanza(
        &mut b,
        3,
        31,
        header(Kind::Iq, &phone, None, Some("set")),
        "<iq type='set' id='c'><enable xmlns='urn:xmpp:carbons:2'/></iq>",
    );

    let acts = forwarded_chat(&mut b, &format!("{alice}/desk"), &pc, "<body>hi</body>");
    let got = deliveries(&acts);
    assert_eq!(got.len(), 2, "{acts:?}");
    assert_eq!(got[0].0, (3, 30));
    assert!(got[0].1.contains("<body>hi</body>"), "{got:?}");
    assert_eq!(got[1].0, (3, 31));
    assert!(
        got[1].1.starts_with(&format!(
            "<message xmlns=\"jabber:client\" from=\"{bob}\" to=\"{phone}\" type=\"chat\"><received xmlns=\"urn:xmpp:carbons:2\"><forwarded"
        )) && got[1].1.contains("<body>hi</body>"),
        "{got:?}"
    );
    // the sender's resources are not here: no sent copy to anyone
    assert!(!got.iter().any(|(_, p)| p.contains("<sent ")), "{got:?}");

    let private = forwarded_chat(
        &mut b,
        &format!("{alice}/desk"),
        &pc,
        "<body>psst</body><private xmlns='urn:xmpp:carbons:2'/>",
    );
    assert_eq!(delivered_to(&private), vec![(3, 30)], "{private:?}");
}

/// The transaction of the one roster write among `acts`.
fn roster_txn(acts: &[Action]) -> u64 {
    match acts
        .iter()
        .filter_map(|x| match x {
            Action::WriteRoster { txn, .. } => Some(*txn),
            _ => None,
        })
        .collect::<Vec<_>>()[..]
    {
        [txn] => txn,
        _ => panic!("not one roster write: {acts:?}"),
    }
}

#[test]
fn a_subscription_request_for_another_cores_user_goes_after_its_commit_and_again_to_the_next_owner_until_taken()
 {
    let (alice, bob) = two_users();
    let mut a = core_owning("a#1", &alice);
    peer_owns(&mut a, 9, "b#1", &bob, 1);
    let alice_full = bound(&mut a, 1, 10, &alice, "phone");
    sm_enable(&mut a, 1, 10, 60);

    let asked = a.step(Input::Frame {
        node: 1,
        frame: Frame::Stanza {
            sid: 10,
            header: header(Kind::Presence, &alice_full, Some(&bob), Some("subscribe")),
            payload: Bytes::from_static(b"<presence type='subscribe'/>"),
        },
    });
    // nothing leaves before alice's roster write commits
    assert!(forwards(&asked).is_empty(), "{asked:?}");
    let committed = a.step(Input::RosterWritten {
        txn: roster_txn(&asked),
    });
    let sent = forwards(&committed);
    let [(core, Frame::Forward { seq, header, .. })] = &sent[..] else {
        panic!("{committed:?}")
    };
    assert_eq!(core, "b#1");
    assert_ne!(*seq, 0, "a subscription request is a tracked forward");
    assert_eq!(header.stanza_type.as_deref(), Some("subscribe"));
    assert_eq!(header.to.as_deref(), Some(bob.as_str()));
    // alice's acknowledgement waits for bob's owner
    assert_eq!(
        handled(&frame(&mut a, 1, Frame::AckRequest { sid: 10 })),
        vec![0]
    );

    // b#1 dies unanswered; c#1 takes bob's slot: the request goes there
    let moved = peer_owns(&mut a, 7, "c#1", &bob, 2);
    let again = forwards(&moved);
    let [(core, forward @ Frame::Forward { seq: seq2, .. })] = &again[..] else {
        panic!("{moved:?}")
    };
    assert_eq!((core.as_str(), seq2), ("c#1", seq));

    // c#1 takes it as one roster change of bob's, answered once durable
    let mut c = core_owning("c#1", &bob);
    let arrived = c.step(Input::Frame {
        node: 8,
        frame: forward.clone(),
    });
    assert!(
        matches!(&arrived[..], [Action::LoadRoster { .. }]),
        "{arrived:?}"
    );
    let loaded = c.step(Input::RosterLoaded {
        user: bob.clone(),
        roster: Some(crate::storage::Roster::default()),
    });
    let done = |acts: &[Action]| {
        acts.iter()
            .any(|x| matches!(x, Action::Send { node: 8, frame: Frame::ForwardDone { seq: s, accepted: true } } if s == seq))
    };
    assert!(
        !done(&loaded),
        "answered before bob's roster write: {loaded:?}"
    );
    let written = c.step(Input::RosterWritten {
        txn: roster_txn(&loaded),
    });
    assert!(done(&written), "{written:?}");

    let answered = a.run(Input::ForwardDone {
        core: "c#1".into(),
        seq: *seq,
        accepted: true,
    });
    assert_eq!(handled(&answered), vec![1]);
    assert_eq!(a.forwards_waiting(), 0);
}

#[test]
fn a_forwarded_subscription_request_whose_roster_write_fails_here_is_refused_back_to_be_sent_again()
{
    let (alice, bob) = two_users();
    let mut b = core_owning("b#1", &bob);
    let arrived = b.step(Input::Frame {
        node: 8,
        frame: Frame::Forward {
            seq: 5,
            header: header(
                Kind::Presence,
                &format!("{alice}/phone"),
                Some(&bob),
                Some("subscribe"),
            ),
            payload: Bytes::from_static(b"<presence type='subscribe'/>"),
        },
    });
    assert!(
        matches!(&arrived[..], [Action::LoadRoster { .. }]),
        "{arrived:?}"
    );
    let loaded = b.step(Input::RosterLoaded {
        user: bob.clone(),
        roster: Some(crate::storage::Roster::default()),
    });
    let failed = b.step(Input::RosterWriteFailed {
        txn: roster_txn(&loaded),
        condition: xmpp_stream::StanzaCondition::InternalServerError,
    });
    assert!(
        failed.iter().any(|x| matches!(
            x,
            Action::Send {
                node: 8,
                frame: Frame::ForwardDone {
                    seq: 5,
                    accepted: false
                }
            }
        )),
        "{failed:?}"
    );
}

/// Alice (of core a#1, SM on) asks to subscribe to bob, whose slot peer
/// b#1 owns; her roster write commits. The forward's seq.
fn alice_asks_bob(a: &mut Router, alice: &str, bob: &str) -> u64 {
    peer_owns(a, 9, "b#1", bob, 1);
    let alice_full = bound(a, 1, 10, alice, "phone");
    sm_enable(a, 1, 10, 60);
    let asked = a.step(Input::Frame {
        node: 1,
        frame: Frame::Stanza {
            sid: 10,
            header: header(Kind::Presence, &alice_full, Some(bob), Some("subscribe")),
            payload: Bytes::from_static(b"<presence type='subscribe'/>"),
        },
    });
    let committed = a.step(Input::RosterWritten {
        txn: roster_txn(&asked),
    });
    match &forwards(&committed)[..] {
        [(_, Frame::Forward { seq, header, .. })] => {
            // (named by the sender's full JID, for an error if nobody takes it)
            assert_eq!(header.from, alice_full);
            *seq
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_subscription_request_whose_recipients_slot_comes_here_waits_for_the_roster_and_its_commit() {
    let (alice, bob) = two_users();
    let mut a = core_owning("a#1", &alice);
    alice_asks_bob(&mut a, &alice, &bob);
    // b#1 dies unanswered and this core takes bob's slot
    let took = a.step(Input::Ownership {
        events: vec![LeaseEvent::Owned {
            slot: slot_of(&bob, SLOTS),
            epoch: Epoch(2),
        }],
    });
    assert!(
        took.iter()
            .any(|x| matches!(x, Action::LoadRoster { user } if *user == bob)),
        "bob's roster is loaded first: {took:?}"
    );
    assert_eq!(a.forwards_waiting(), 1);
    let loaded = a.step(Input::RosterLoaded {
        user: bob.clone(),
        roster: Some(crate::storage::Roster::default()),
    });
    // bob's side is written (a request waiting for him), not refused
    let writes = roster_writes(&loaded);
    assert!(
        writes
            .iter()
            .any(|w| matches!(w, crate::router::RosterWrite::Put { item, .. } if item.pending_in)),
        "{loaded:?}"
    );
    assert!(
        !payloads(&loaded).iter().any(|p| p.contains("unsubscribed")),
        "{loaded:?}"
    );
    assert_eq!(
        handled(&frame(&mut a, 1, Frame::AckRequest { sid: 10 })),
        vec![0]
    );
    let written = a.step(Input::RosterWritten {
        txn: roster_txn(&loaded),
    });
    assert_eq!(handled(&written), vec![1], "{written:?}");
    assert_eq!(a.forwards_waiting(), 0);
}

#[test]
fn a_subscription_request_no_core_takes_is_answered_with_an_error_to_the_senders_session() {
    let (alice, bob) = two_users();
    let mut a = core_owning("a#1", &alice);
    alice_asks_bob(&mut a, &alice, &bob);
    let later = a.timeout(t0() + FORWARD_GIVE_UP + Duration::from_secs(1));
    let to_alice: Vec<String> = deliveries(&later)
        .into_iter()
        .filter(|(addr, _)| *addr == (1, 10))
        .map(|(_, p)| p)
        .collect();
    assert!(
        matches!(&to_alice[..], [p] if p.starts_with("<presence") && p.contains("type=\"error\"") && p.contains("recipient-unavailable")),
        "{later:?}"
    );
    // and her acknowledgement goes on
    assert_eq!(
        handled(&frame(&mut a, 1, Frame::AckRequest { sid: 10 })),
        vec![1]
    );
}

#[test]
fn a_forwarded_message_from_a_user_the_recipient_blocks_is_refused_back_to_its_sender() {
    let (alice, bob) = two_users();
    let mut b = core_owning("b#1", &bob);
    peer_owns(&mut b, 8, "a#1", &alice, 1);
    let acts = b.step(Input::Frame {
        node: 3,
        frame: Frame::Bind {
            sid: 30,
            user: bob.clone(),
            iq_id: "b".into(),
            resource: Some("pc".into()),
            bind2: None,
        },
    });
    assert!(matches!(&acts[..], [Action::LoadRoster { .. }]), "{acts:?}");
    b.step(Input::RosterLoaded {
        user: bob.clone(),
        roster: Some(crate::storage::Roster {
            blocked: vec![alice.clone()],
            ..Default::default()
        }),
    });
    let alice_full = format!("{alice}/desk");
    let acts = forwarded_chat(&mut b, &alice_full, &bob, "<body>hi</body>");
    assert!(delivered_to(&acts).is_empty(), "{acts:?}");
    // the error goes back to alice's core, and the forward is answered
    let back = forwards(&acts);
    assert!(
        matches!(&back[..], [(core, Frame::Forward { seq: 0, header, payload })]
            if core == "a#1" && header.to.as_deref() == Some(alice_full.as_str())
                && String::from_utf8_lossy(payload).contains("service-unavailable")),
        "{acts:?}"
    );
    assert!(acts.iter().any(|x| matches!(
        x,
        Action::Send {
            node: 8,
            frame: Frame::ForwardDone {
                seq: 1,
                accepted: true
            }
        }
    )));
}
