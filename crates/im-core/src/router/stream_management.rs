//! The router's XEP-0198 half: enabling stream management, acknowledgements,
//! detaching when a client's stream or CM goes away, resumption on any CM,
//! and expiry to offline storage. The ledgers themselves live in
//! [`crate::ledger`].

use std::cmp::Reverse;
use std::time::Duration;

use bytes::Bytes;
use cm_protocol::{Frame, Resumption, SessionId, SmSnapshot};
use xmpp_stream::StanzaCondition;
use xmpp_stream::stanza::{StanzaKind, inspect};

use super::{Action, Router};
use crate::ledger::{DEFAULT_MAX_RESUME_SECS, Ledger};
use crate::routing::{NodeId, SessionAddr};

impl Router {
    pub(super) fn sm_enable(&mut self, node: NodeId, sid: SessionId, resume: bool, max: u32) {
        let Some(full) = self.table.jid_of(node, sid).map(str::to_owned) else {
            return;
        };
        if self.ledgers.contains_key(&(node, sid)) {
            return;
        }
        let token = self.new_token();
        let max = match (resume, max) {
            (false, _) => 0,
            (true, 0) => DEFAULT_MAX_RESUME_SECS,
            (true, m) => m.min(DEFAULT_MAX_RESUME_SECS),
        };
        let id = if max > 0 {
            self.sm_ids.issue(token, bare_of(&full))
        } else {
            String::new()
        };
        self.ledgers.insert((node, sid), Ledger::new(token, max));
        self.tokens.insert(token, (node, sid));
        self.send(node, Frame::SmEnabled { sid, id, max });
    }

    fn new_token(&mut self) -> u64 {
        loop {
            self.next_token = self
                .next_token
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            if !self.tokens.contains_key(&self.next_token) {
                return self.next_token;
            }
        }
    }

    /// A CM re-announced an SM session (after a reconnection or a core
    /// restart): keep the ledger if there is one, else rebuild it from the
    /// CM's counters (what a lost core held unacknowledged is gone).
    pub(super) fn restore_ledger(
        &mut self,
        node: NodeId,
        sid: SessionId,
        jid: &str,
        sm: SmSnapshot,
    ) {
        if let Some(l) = self.ledgers.get(&(node, sid)) {
            if l.detached_at.is_some() {
                // The CM was cut off longer than the grace period and the
                // session detached meanwhile: what went to the ledger since
                // was never sent. The client resumes and gets it in order.
                let condition = xmpp_stream::StreamCondition::ConnectionTimeout;
                self.send(
                    node,
                    Frame::Kick {
                        sid,
                        condition: condition.name().into(),
                    },
                );
            }
            return;
        }
        let token = match self.sm_ids.verify(&sm.id, bare_of(jid)) {
            Some(t) if !self.tokens.contains_key(&t) => t,
            _ => self.new_token(),
        };
        let max = if sm.id.is_empty() { 0 } else { sm.max };
        let ledger = Ledger::restored_at(token, max, sm.handled, sm.sent, sm.next_seq);
        self.ledgers.insert((node, sid), ledger);
        self.tokens.insert(token, (node, sid));
    }

    /// The client's stream (or its CM) is gone: a resumable session waits
    /// for its client; any other ends, handing on what was unacknowledged.
    pub(super) fn detach(&mut self, addr: SessionAddr) {
        let now = self.now;
        let Some(l) = self.ledgers.get_mut(&addr) else {
            return;
        };
        if !l.resumable() {
            self.end_tracked(addr);
            return;
        }
        if l.detached_at.is_none() {
            l.detached_at = Some(now);
            self.detached += 1;
            let deadline = now + Duration::from_secs(u64::from(l.max));
            self.expiries.push(Reverse((deadline, l.token)));
            tracing::debug!(node = addr.0, sid = addr.1, "SM session detached");
        }
    }

    /// Removes a ledger and its token (keeping the detached count right).
    pub(super) fn take_ledger(&mut self, addr: SessionAddr) -> Option<Ledger> {
        let ledger = self.ledgers.remove(&addr)?;
        self.tokens.remove(&ledger.token);
        if ledger.detached_at.is_some() {
            self.detached -= 1;
        }
        Some(ledger)
    }

    /// Ends an SM session for good: unbinds it and treats what it never
    /// acknowledged as sent to an unavailable resource.
    pub(super) fn end_tracked(&mut self, (node, sid): SessionAddr) {
        let Some(ledger) = self.take_ledger((node, sid)) else {
            return;
        };
        let full = self.table.jid_of(node, sid).map(str::to_owned);
        self.session_end(node, sid);
        if let Some(full) = full {
            self.reroute_unacked(&full, ledger);
        }
    }

    /// XEP-0198 §5: unacknowledged messages go to another resource or
    /// offline storage (with a delay stamp); the rest is dropped.
    pub(super) fn reroute_unacked(&mut self, full: &str, ledger: Ledger) {
        let bare = bare_of(full).to_owned();
        for payload in ledger.into_unacked() {
            let Ok(top) = inspect(&payload) else { continue };
            if top.stanza_kind() != Some(StanzaKind::Message) {
                continue;
            }
            let mtype = top.attr("type").unwrap_or("normal").to_owned();
            if mtype == "error" {
                continue;
            }
            self.message_to_bare(&bare, &mtype, payload, None);
        }
    }

    pub(super) fn tick(&mut self, now: std::time::Instant) {
        self.now = now;
        while let Some(Reverse((deadline, token))) = self.expiries.peek().copied() {
            if deadline > now {
                break;
            }
            self.expiries.pop();
            let Some(&addr) = self.tokens.get(&token) else {
                continue;
            };
            let expired = self.ledgers.get(&addr).is_some_and(|l| {
                l.detached_at
                    .is_some_and(|at| at + Duration::from_secs(u64::from(l.max)) <= now)
            });
            if expired {
                self.stats.sm_expired += 1;
                tracing::debug!(node = addr.0, sid = addr.1, "detached SM session expired");
                self.end_tracked(addr);
            }
        }
    }

    pub(super) fn stored(&mut self, (token, h): (u64, u32)) {
        let Some(&(node, sid)) = self.tokens.get(&token) else {
            return;
        };
        let Some(l) = self.ledgers.get_mut(&(node, sid)) else {
            return;
        };
        l.store_done(h);
        if l.ack_owed && l.detached_at.is_none() && l.durable_h() == l.handled {
            l.ack_owed = false;
            let h = l.handled;
            self.send(node, Frame::Handled { sid, h });
        }
    }

    /// `<resume previd h/>` from a client the core authenticated as `user`.
    pub(super) fn resume(
        &mut self,
        node: NodeId,
        sid: SessionId,
        user: &str,
        previd: &str,
        h: u32,
    ) {
        match self.try_resume(node, sid, user, previd, h) {
            Ok((resumption, replay)) => {
                self.stats.resumed += 1;
                self.send(
                    node,
                    Frame::Resumed {
                        sid,
                        result: Ok(resumption),
                    },
                );
                for payload in replay {
                    self.stats.delivered += 1;
                    self.send(node, Frame::Deliver { sid, payload });
                }
            }
            Err(condition) => {
                self.stats.resume_failed += 1;
                self.send(
                    node,
                    Frame::Resumed {
                        sid,
                        result: Err(condition.name().into()),
                    },
                );
            }
        }
    }

    fn try_resume(
        &mut self,
        node: NodeId,
        sid: SessionId,
        user: &str,
        previd: &str,
        h: u32,
    ) -> Result<(Resumption, Vec<Bytes>), StanzaCondition> {
        let token = self
            .sm_ids
            .verify(previd, user)
            .ok_or(StanzaCondition::ItemNotFound)?;
        let old = *self
            .tokens
            .get(&token)
            .ok_or(StanzaCondition::ItemNotFound)?;
        let full = self
            .table
            .jid_of(old.0, old.1)
            .map(str::to_owned)
            .ok_or(StanzaCondition::ItemNotFound)?;
        let route = {
            let (bare, res) = full.split_once('/').ok_or(StanzaCondition::ItemNotFound)?;
            self.table
                .full(bare, res)
                .map(|r| (r.available, r.priority))
                .ok_or(StanzaCondition::ItemNotFound)?
        };
        let mut ledger = self.take_ledger(old).ok_or(StanzaCondition::ItemNotFound)?;
        let old_stream_alive = ledger.detached_at.is_none();
        if ledger.ack(h).is_err() {
            // The client claims more than it was sent: the session is unusable.
            self.tokens.insert(token, old);
            self.ledgers.insert(old, ledger);
            self.end_tracked(old);
            return Err(StanzaCondition::UndefinedCondition);
        }
        let replay = ledger.reattach();
        let resumption = Resumption {
            jid: full.clone(),
            h: ledger.handled,
            available: route.0,
            priority: route.1,
            max: ledger.max,
        };
        self.ledgers.insert((node, sid), ledger);
        self.tokens.insert(token, (node, sid));
        // Move the route; the old stream (if its CM still holds it) is told `conflict`.
        let (bare, res) = full.split_once('/').unwrap_or((&full, ""));
        if let Some(previous) = self.table.bind(bare, res, node, sid, route.0, route.1)
            && old_stream_alive
        {
            self.send(
                previous.0,
                Frame::Kick {
                    sid: previous.1,
                    condition: xmpp_stream::StreamCondition::Conflict.name().into(),
                },
            );
        }
        Ok((resumption, replay))
    }

    /// Stored messages loaded for `to`: deliver them through its ledger (if
    /// any), then let the driver remove them from storage.
    pub(super) fn offline(&mut self, user: String, to: SessionAddr, messages: Vec<(i64, Bytes)>) {
        if self.table.jid_of(to.0, to.1).is_none() {
            return; // gone meanwhile: they stay stored
        }
        let mut upto = None;
        for (id, payload) in messages {
            if self.ledgers.get(&to).is_some_and(|l| !l.has_room()) {
                break;
            }
            self.deliver(to, payload);
            upto = Some(id);
        }
        if let Some(upto) = upto {
            self.out.push(Action::RemoveOffline { user, upto });
        }
    }
}

/// The bare part of a full JID.
fn bare_of(full: &str) -> &str {
    full.split_once('/').map_or(full, |(b, _)| b)
}
