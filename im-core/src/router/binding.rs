//! Sessions entering and leaving the routing table: resource binding
//! (RFC 6120 §7), sessions a CM announces, a session's end, a CM's
//! departure, and a full JID taken over by a new session (`conflict`).

use std::time::Instant;

use cm_protocol::{Bind2, Frame, SessionId};
use jid::BareJid;
use xmpp_stream::StreamCondition;

use super::Router;
use crate::address;
use crate::routing::{NodeId, SessionAddr};

impl Router {
    /// Binds a resource for a session the core authenticated as `user`
    /// (the CM, a trusted cluster member, carries the user from AuthSuccess).
    /// A Bind2 binding (`bind2`) gets the resource `tag/random` and its
    /// carbons with the route, before anything can be routed to it; like
    /// the legacy bind it leaves the offline messages alone (they come
    /// after the first available presence; ejabberd #4287).
    pub(super) fn bind(
        &mut self,
        node: NodeId,
        sid: SessionId,
        user: &str,
        iq_id: String,
        resource: Option<String>,
        bind2: Option<Bind2>,
    ) {
        let resource = match (&bind2, resource.filter(|r| !r.is_empty())) {
            (Some(Bind2 { tag: Some(tag), .. }), _) => {
                format!("{tag}/{}", self.resources.next_name())
            }
            (Some(_), _) | (None, None) => self.resources.next_name(),
            (None, Some(r)) => r,
        };
        let full = BareJid::new(user)
            .ok()
            .and_then(|b| b.with_resource_str(&resource).ok());
        let Some(full) = full else {
            self.send(
                node,
                Frame::BindResult {
                    sid,
                    iq_id,
                    result: Err("bad-request".into()),
                },
            );
            return;
        };
        let bare = full.to_bare().to_string();
        let resource = full.resource().to_string();
        if !self.table.admits(&bare, &resource) {
            // The account holds its most sessions: refused (RFC 6120 §7.6.2.1).
            self.send(
                node,
                Frame::BindResult {
                    sid,
                    iq_id,
                    result: Err("resource-constraint".into()),
                },
            );
            return;
        }
        if let Some(old) = self.table.bind(&bare, &resource, node, sid, false, 0) {
            self.replaced(old, &full.to_string());
        }
        if bind2.as_ref().is_some_and(|b| b.carbons)
            && let Some(route) = self.table.route_mut(node, sid)
        {
            route.carbons = true;
        }
        self.send(
            node,
            Frame::BindResult {
                sid,
                iq_id,
                result: Ok(full.to_string()),
            },
        );
        if let Some(sm) = bind2.and_then(|b| b.sm) {
            // right behind the result: nothing is routed in between
            self.sm_enable(node, sid, sm.resume, sm.max);
        }
    }

    /// A session was replaced by a new one with its full JID (`conflict`):
    /// kick it and hand what it never acknowledged to the user's sessions.
    pub(super) fn replaced(&mut self, (old_node, old_sid): SessionAddr, full: &str) {
        self.kick((old_node, old_sid), StreamCondition::Conflict);
        if let Some(ledger) = self.sessions.remove((old_node, old_sid)) {
            self.reroute_unacked(full, ledger);
        }
        self.rooms_replaced(full);
    }

    /// Enters a session a CM announced (after a core restart or a link
    /// loss) into the routing table; one holding its full JID is replaced.
    pub(super) fn announce(
        &mut self,
        node: NodeId,
        sid: SessionId,
        jid: &str,
        available: bool,
        priority: i8,
    ) {
        let Ok(full) = jid::FullJid::new(jid) else {
            tracing::warn!(node, jid, "announce with an invalid JID");
            return;
        };
        let bare = full.to_bare().to_string();
        if let Some(old) = self.table.bind(
            &bare,
            full.resource().as_str(),
            node,
            sid,
            available,
            priority,
        ) {
            self.replaced(old, jid);
        }
    }

    /// A session is gone: out of the table, its presence withdrawn from
    /// those who had it, its roster dropped if it was the user's last.
    pub(super) fn session_end(&mut self, node: NodeId, sid: SessionId) {
        if let Some((full, route)) = self.table.unbind(node, sid) {
            if route.available {
                self.broadcast_unavailable(&full, &route.directed);
            }
            self.rooms_left(&full);
            self.forget_roster_if_unused(address::bare(&full));
        }
    }

    /// A CM is gone for good at `now`: its resumable SM sessions detach and
    /// wait for their clients; the others end, what they never
    /// acknowledged going to other resources or offline storage.
    pub(super) fn node_gone(&mut self, node: NodeId, now: Instant) {
        for (full, route) in self.table.drop_node(node) {
            let addr = (node, route.sid);
            if self.sessions.is_resumable(addr) {
                // The session waits for its client to resume on another CM.
                if let Some((bare, _)) = address::split_full(&full) {
                    self.table.insert(bare, route);
                }
                self.detach(addr, now);
                continue;
            }
            if let Some(ledger) = self.sessions.remove(addr) {
                self.reroute_unacked(&full, ledger);
            }
            if route.available {
                self.broadcast_unavailable(&full, &route.directed);
            }
            self.rooms_left(&full);
            self.forget_roster_if_unused(address::bare(&full));
        }
        self.rosters.forget_node(node);
    }
}

/// Names of the resources the server picks for clients that ask for none:
/// `ll-` and 16 hex digits, varying with the seed between runs.
#[derive(Debug)]
pub(super) struct ResourceNames {
    seed: u64,
    issued: u64,
}

impl ResourceNames {
    /// Names varied by `seed`.
    pub(super) fn new(seed: u64) -> Self {
        Self { seed, issued: 0 }
    }

    /// A name not given before.
    pub(super) fn next_name(&mut self) -> String {
        self.issued += 1;
        let x = self
            .seed
            .wrapping_add(self.issued.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        format!("ll-{:016x}", x ^ (x >> 29))
    }
}

#[cfg(test)]
mod tests {
    use cm_protocol::{Bind2, Frame, SmRequest};

    use super::super::test_support::{Run, bound};
    use super::super::{Action, Input, Router};

    #[test]
    fn a_bind2_binding_gets_tag_slash_random_and_carbons_and_touches_no_offline_store() {
        let mut r = Router::new("x", 1, [7; 32]);
        let bind = |sid, tag: Option<&str>, carbons| Input::Frame {
            node: 1,
            frame: Frame::Bind {
                sid,
                user: "a@x".into(),
                iq_id: String::new(),
                resource: Some("ignored".into()),
                bind2: Some(Bind2 {
                    tag: tag.map(Into::into),
                    carbons,
                    sm: None,
                }),
            },
        };
        let acts = r.run(bind(1, Some("app"), true));
        // only the answer: no offline flush or deletion (ejabberd #4287)
        let [
            Action::Send {
                frame:
                    Frame::BindResult {
                        sid: 1,
                        result: Ok(jid),
                        ..
                    },
                ..
            },
        ] = &acts[..]
        else {
            panic!("{acts:?}");
        };
        assert!(jid.starts_with("a@x/app/"), "{jid}");
        assert!(jid.len() > "a@x/app/".len());
        let route = r.table().full("a@x", &jid["a@x/".len()..]).unwrap();
        assert!(route.carbons);
        // no tag: a random resource, not the requested one; carbons as asked
        let acts = r.run(bind(2, None, false));
        let [
            Action::Send {
                frame: Frame::BindResult {
                    result: Ok(jid), ..
                },
                ..
            },
        ] = &acts[..]
        else {
            panic!("{acts:?}");
        };
        assert!(!jid.ends_with("/ignored") && !jid.contains("app"), "{jid}");
        assert!(!r.table().full("a@x", &jid["a@x/".len()..]).unwrap().carbons);
        // with SM: SmEnabled right behind the result
        let acts = r.run(Input::Frame {
            node: 1,
            frame: Frame::Bind {
                sid: 3,
                user: "a@x".into(),
                iq_id: String::new(),
                resource: None,
                bind2: Some(Bind2 {
                    tag: Some("app".into()),
                    carbons: false,
                    sm: Some(SmRequest {
                        resume: true,
                        max: 0,
                    }),
                }),
            },
        });
        assert!(
            matches!(
                &acts[..],
                [
                    Action::Send { frame: Frame::BindResult { sid: 3, result: Ok(_), .. }, .. },
                    Action::Send { frame: Frame::SmEnabled { sid: 3, id, max }, .. },
                ] if !id.is_empty() && *max > 0
            ),
            "{acts:?}"
        );
    }

    #[test]
    fn a_bind_beyond_the_accounts_resource_cap_is_refused_with_resource_constraint() {
        let mut r = Router::new("x", 1, [7; 32]).with_max_resources(2);
        bound(&mut r, 1, 1, "a@x", "one");
        bound(&mut r, 1, 2, "a@x", "two");
        let acts = r.run(Input::Frame {
            node: 1,
            frame: Frame::Bind {
                sid: 3,
                user: "a@x".into(),
                iq_id: "b".into(),
                resource: Some("three".into()),
                bind2: None,
            },
        });
        assert!(
            matches!(
                &acts[..],
                [Action::Send { frame: Frame::BindResult { sid: 3, result: Err(c), .. }, .. }]
                    if c == "resource-constraint"
            ),
            "{acts:?}"
        );
        assert_eq!(r.table().resources("a@x").len(), 2);
        // the same full JID still replaces its old session; other accounts bind
        let acts = r.run(Input::Frame {
            node: 1,
            frame: Frame::Bind {
                sid: 4,
                user: "a@x".into(),
                iq_id: "b".into(),
                resource: Some("two".into()),
                bind2: None,
            },
        });
        assert!(
            acts.iter().any(|a| matches!(
                a,
                Action::Send {
                    frame: Frame::BindResult {
                        sid: 4,
                        result: Ok(_),
                        ..
                    },
                    ..
                }
            )),
            "{acts:?}"
        );
        bound(&mut r, 1, 5, "b@x", "one");
    }
}
