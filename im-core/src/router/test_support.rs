//! Shared helpers of the router's unit tests: a test router, a driver
//! stand-in that answers roster loads at once, and builders and readers of
//! frames.

use std::sync::LazyLock;
use std::time::Instant;

use bytes::Bytes;
use cm_protocol::{Frame, Kind, RouteHeader, SessionId};

use super::{Action, Input, Router};
use crate::routing::{NodeId, SessionAddr};
use crate::storage::Roster;

/// The instant tests start from (every input without a time of its own
/// happens at it).
pub(super) fn t0() -> Instant {
    static T0: LazyLock<Instant> = LazyLock::new(Instant::now);
    *T0
}

/// A router for domain `x` with a fixed seed and SM key.
pub(super) fn router() -> Router {
    Router::new("x", 1, [7; 32])
}

/// Drives the router as the driver does.
pub(super) trait Run {
    /// Handles `input` at [`t0`], answering roster loads at once (every
    /// user has an empty roster) and committing roster writes at once;
    /// returns the other actions (with the roster writes).
    fn run(&mut self, input: Input) -> Vec<Action> {
        self.run_at(input, t0())
    }

    /// [`Run::run`] at `now`.
    fn run_at(&mut self, input: Input, now: Instant) -> Vec<Action>;

    /// Handles `input` at [`t0`]; returns every action it produced.
    fn step(&mut self, input: Input) -> Vec<Action>;

    /// Reaches `now`; returns the actions of what expired.
    fn timeout(&mut self, now: Instant) -> Vec<Action>;

    /// The actions waiting.
    fn drain(&mut self) -> Vec<Action>;
}

impl Run for Router {
    fn run_at(&mut self, input: Input, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        self.handle(input, now);
        let mut pending = self.drain();
        while !pending.is_empty() {
            let mut next = Vec::new();
            for a in pending {
                match a {
                    Action::LoadRoster { user } => {
                        let loaded = Input::RosterLoaded {
                            user,
                            roster: Some(Roster::default()),
                        };
                        self.handle(loaded, now);
                        next.extend(self.drain());
                    }
                    Action::WriteRoster { txn, writes } => {
                        // kept for the test to read, and committed at once
                        out.push(Action::WriteRoster { txn, writes });
                        self.handle(Input::RosterWritten { txn }, now);
                        next.extend(self.drain());
                    }
                    a => out.push(a),
                }
            }
            pending = next;
        }
        out
    }

    fn step(&mut self, input: Input) -> Vec<Action> {
        self.handle(input, t0());
        self.drain()
    }

    fn timeout(&mut self, now: Instant) -> Vec<Action> {
        self.handle_timeout(now);
        self.drain()
    }

    fn drain(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.poll_action()).collect()
    }
}

/// A routing header of `kind` from `from` (id `i1`).
pub(super) fn header(kind: Kind, from: &str, to: Option<&str>, stype: Option<&str>) -> RouteHeader {
    RouteHeader {
        kind,
        stanza_type: stype.map(Into::into),
        to: to.map(Into::into),
        id: Some("i1".into()),
        from: from.into(),
    }
}

/// Binds `user`'s resource `res` as session (`node`, `sid`); returns the
/// full JID.
pub(super) fn bound(r: &mut Router, node: NodeId, sid: SessionId, user: &str, res: &str) -> String {
    let acts = r.run(Input::Frame {
        node,
        frame: Frame::Bind {
            sid,
            user: user.into(),
            iq_id: "b".into(),
            resource: Some(res.into()),
            bind2: None,
        },
    });
    match &acts[..] {
        [
            Action::Send {
                frame: Frame::BindResult {
                    result: Ok(jid), ..
                },
                ..
            },
        ] => jid.clone(),
        other => panic!("unexpected {other:?}"),
    }
}

/// A stanza `p` from session (`node`, `sid`), run as [`Run::run`] does.
pub(super) fn stanza(
    r: &mut Router,
    node: NodeId,
    sid: SessionId,
    h: RouteHeader,
    p: &str,
) -> Vec<Action> {
    r.run(Input::Frame {
        node,
        frame: Frame::Stanza {
            sid,
            header: h,
            payload: Bytes::copy_from_slice(p.as_bytes()),
        },
    })
}

/// The sessions `acts` deliver to, in order.
pub(super) fn delivered_to(acts: &[Action]) -> Vec<(NodeId, SessionId)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Send {
                node,
                frame: Frame::Deliver { sid, .. },
            } => Some((*node, *sid)),
            _ => None,
        })
        .collect()
}

/// A frame from `node`, run as [`Run::run`] does.
pub(super) fn frame(r: &mut Router, node: NodeId, frame: Frame) -> Vec<Action> {
    r.run(Input::Frame { node, frame })
}

/// Binds alice (node 1, sid 10, SM on) and bob (node 3, sid 30); returns alice's SM id.
pub(super) fn sm_pair(r: &mut Router) -> String {
    bound(r, 1, 10, "alice@x", "phone");
    bound(r, 3, 30, "bob@x", "pc");
    let acts = frame(
        r,
        1,
        Frame::SmEnable {
            sid: 10,
            resume: true,
            max: 60,
        },
    );
    let [
        Action::Send {
            frame: Frame::SmEnabled { id, max: 60, .. },
            node: 1,
        },
    ] = &acts[..]
    else {
        panic!("{acts:?}")
    };
    assert!(!id.is_empty());
    id.clone()
}

/// A chat `body` from bob (3, 30) to alice@x/phone; its actions but the
/// archive's and its live row's, which is written at once (see
/// [`commit_live`]).
pub(super) fn chat(r: &mut Router, body: &str) -> Vec<Action> {
    let acts = stanza(
        r,
        3,
        30,
        header(
            Kind::Message,
            "bob@x/pc",
            Some("alice@x/phone"),
            Some("chat"),
        ),
        &format!(
            "<message type='chat' to='alice@x/phone' id='{body}'><body>{body}</body></message>"
        ),
    )
    .into_iter()
    .filter(|a| !matches!(a, Action::Archive { .. }))
    .collect();
    commit_live(r, acts)
}

thread_local! {
    /// The row id the next live row written by [`commit_live`] gets.
    static NEXT_ROW: std::cell::Cell<i64> = const { std::cell::Cell::new(1000) };
}

/// Writes the live rows among `acts` as storage would (their ids increase
/// from 1000 in each test thread), reporting [`Input::LiveStored`]; returns
/// the other actions, then those the reports produced.
pub(super) fn commit_live(r: &mut Router, acts: Vec<Action>) -> Vec<Action> {
    let mut out = Vec::new();
    let mut written = Vec::new();
    for a in acts {
        match a {
            Action::StoreOffline {
                live: Some(ticket),
                origin,
                ..
            } => {
                let row = NEXT_ROW.with(|n| n.replace(n.get() + 1));
                written.push(Input::LiveStored {
                    ticket,
                    row,
                    origin,
                });
            }
            a => out.push(a),
        }
    }
    for input in written {
        out.extend(r.run(input));
    }
    out
}

/// The stanzas `acts` deliver, in order.
pub(super) fn payloads(acts: &[Action]) -> Vec<String> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Send {
                frame: Frame::Deliver { payload, .. },
                ..
            } => Some(String::from_utf8_lossy(payload).into_owned()),
            _ => None,
        })
        .collect()
}

/// The deliveries in `acts`: (session, stanza), in order.
pub(super) fn deliveries(acts: &[Action]) -> Vec<((NodeId, SessionId), String)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Send {
                node,
                frame: Frame::Deliver { sid, payload },
            } => Some(((*node, *sid), String::from_utf8_lossy(payload).into_owned())),
            _ => None,
        })
        .collect()
}

/// The roster writes among `acts`, in order.
pub(super) fn roster_writes(acts: &[Action]) -> Vec<crate::router::RosterWrite> {
    acts.iter()
        .flat_map(|a| match a {
            Action::WriteRoster { writes, .. } => writes.clone(),
            _ => Vec::new(),
        })
        .collect()
}

/// The session (`node`, `sid`) enables SM, resumable for `max` seconds.
pub(super) fn sm_enable(r: &mut Router, node: NodeId, sid: SessionId, max: u32) -> Vec<Action> {
    frame(
        r,
        node,
        Frame::SmEnable {
            sid,
            resume: true,
            max,
        },
    )
}

/// The CM reports the session (`node`, `sid`) of `jid` ended.
pub(super) fn end_session(
    r: &mut Router,
    node: NodeId,
    sid: SessionId,
    jid: &str,
    clean: bool,
) -> Vec<Action> {
    frame(
        r,
        node,
        Frame::SessionEnd {
            sid,
            jid: Some(jid.into()),
            clean,
        },
    )
}

/// Whether `acts` ask for a flush to `to` (any session if None).
pub(super) fn flushes(acts: &[Action], to: Option<SessionAddr>) -> bool {
    acts.iter()
        .any(|a| matches!(a, Action::FlushOffline { to: t, .. } if to.is_none_or(|to| *t == to)))
}

/// Binds `user` (node, sid) with a roster naming `contact` (both ways
/// subscribed), loaded as storage would.
pub(super) fn bound_with_contact(
    r: &mut Router,
    node: u32,
    sid: u64,
    user: &str,
    contact: &str,
) -> String {
    let acts = r.step(Input::Frame {
        node,
        frame: Frame::Bind {
            sid,
            user: user.into(),
            iq_id: "b".into(),
            resource: Some("phone".into()),
            bind2: None,
        },
    });
    assert!(matches!(&acts[..], [Action::LoadRoster { .. }]), "{acts:?}");
    let roster = crate::storage::Roster {
        version: 1,
        items: vec![crate::storage::RosterItem {
            jid: contact.into(),
            subscription: crate::storage::Subscription::Both,
            listed: true,
            ..Default::default()
        }],
        blocked: Vec::new(),
    };
    r.step(Input::RosterLoaded {
        user: user.into(),
        roster: Some(roster),
    });
    format!("{user}/phone")
}
