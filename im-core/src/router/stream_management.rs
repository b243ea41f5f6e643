//! The router's XEP-0198 half: enabling stream management, acknowledgements,
//! detaching when a client's stream or CM goes away, resumption on any CM,
//! and expiry to offline storage. The ledgers themselves live in
//! [`crate::ledger`].

use std::cmp::Reverse;
use std::time::Duration;

use bytes::Bytes;
use cm_protocol::{Frame, Resumption, SessionId, SmSnapshot};
use xmpp_stream::stanza::{StanzaKind, inspect};
use xmpp_stream::{StanzaCondition, StreamCondition};

use super::{Action, Router};
use crate::address;
use crate::ledger::{DEFAULT_MAX_RESUME_SECS, Ledger, MAX_LEDGER_BYTES_TOTAL, Restored};
use crate::routing::{NodeId, Route, SessionAddr};

/// How many addresses of ended or moved SM sessions are remembered, so a
/// CM's late bounces for them are not routed a second time.
pub const RETIRED_MEMORY: usize = 65_536;

/// What happened to a stanza sent to a session.
pub(super) enum Tracking {
    /// Not an SM session: send it.
    Untracked,
    /// In the ledger; send it.
    Send,
    /// In the ledger; the client is away, so not sent now.
    Held,
    /// Went to offline storage instead (or dropped if not a message).
    Spilled,
}

impl Router {
    /// Handles the stream-management frames from a CM.
    pub(super) fn sm_frame(&mut self, node: NodeId, frame: Frame) {
        match frame {
            Frame::SmEnable { sid, resume, max } => self.sm_enable(node, sid, resume, max),
            Frame::AckRequest { sid } => {
                if let Some(l) = self.ledgers.get_mut(&(node, sid)) {
                    let h = l.report_h();
                    l.ack_owed = h != l.handled;
                    self.send(node, Frame::Handled { sid, h });
                }
            }
            Frame::Acked { sid, h } => self.acked((node, sid), h),
            Frame::Skipped { sid, seqs } => {
                if let Some(l) = self.ledgers.get_mut(&(node, sid)) {
                    l.skip(&seqs);
                }
            }
            Frame::Resume {
                sid,
                user,
                previd,
                h,
            } => self.resume(node, sid, &user, &previd, h),
            other => tracing::warn!(node, frame = other.name(), "not a stream-management frame"),
        }
    }

    fn acked(&mut self, (node, sid): SessionAddr, h: u32) {
        let Some(l) = self.ledgers.get_mut(&(node, sid)) else {
            return;
        };
        let before = l.bytes();
        let refused = l.ack(h).is_err();
        let after = l.bytes();
        let caught_up = l.overflowed && !l.flushing && l.half_empty();
        self.ledger_bytes -= before - after;
        if caught_up {
            self.request_flush((node, sid));
        }
        if refused {
            tracing::debug!(node, sid, h, "client acknowledged more than it was sent");
            self.kick((node, sid), StreamCondition::UndefinedCondition);
        }
    }

    /// Records a stanza for a session before it is sent (see [`Tracking`]).
    /// `queue`: a message that must not overtake stored ones (not a copy or
    /// a query result, which belong to no conversation order).
    pub(super) fn track(&mut self, addr: SessionAddr, payload: &Bytes, queue: bool) -> Tracking {
        let total = self.ledger_bytes;
        let Some(l) = self.ledgers.get_mut(&addr) else {
            return Tracking::Untracked;
        };
        let full = !l.has_room() || total >= MAX_LEDGER_BYTES_TOTAL;
        // While stored messages are flushed, a new message waits behind them;
        // anything else (IQ answers, presence) goes on.
        if full && !queue {
            // A copy or a query result for a client far behind: dropped,
            // never stored offline as if it were a message to it.
            return Tracking::Spilled;
        }
        if full || (queue && l.overflowed && storable_message(payload)) {
            // Far behind, or behind stored messages: store this one too
            // (after them; it is flushed to the session in order).
            l.overflowed = true;
            l.spilled_while_flushing |= l.flushing;
            let caught_up = !l.flushing && l.half_empty();
            if let Some(user) = self.user_of(addr) {
                self.store_undeliverable(user, payload.clone());
            }
            if caught_up {
                // e.g. the global budget was hit with this ledger nearly empty
                self.request_flush(addr);
            }
            return Tracking::Spilled;
        }
        self.ledger_bytes += payload.len();
        l.push(payload.clone());
        if l.detached_at.is_some() {
            Tracking::Held
        } else {
            Tracking::Send
        }
    }

    /// Asks the driver to load the session's stored messages. For an SM
    /// session, new messages are stored behind them until the flush is done,
    /// so none overtakes a stored one.
    pub(super) fn request_flush(&mut self, addr: SessionAddr) {
        if let Some(l) = self.ledgers.get_mut(&addr) {
            if l.flushing {
                return;
            }
            l.flushing = true;
            l.overflowed = true;
        }
        if let Some(user) = self.user_of(addr) {
            self.out.push(Action::FlushOffline { user, to: addr });
        }
    }

    /// A pooled CM connection ended: whatever was in flight on it, either
    /// way, is lost, so its SM sessions detach (and resume to realign).
    pub(super) fn link_lost(&mut self, node: NodeId, index: u16, pool_size: u16) {
        let size = u64::from(pool_size.max(1));
        let sids: Vec<SessionId> = self
            .table
            .sids_of(node)
            .into_iter()
            .filter(|sid| {
                sid % size == u64::from(index) && self.ledgers.contains_key(&(node, *sid))
            })
            .collect();
        for sid in sids {
            self.detach((node, sid));
        }
    }

    /// A Deliver for an SM session could not be handed to its CM link: the
    /// session detaches and is told to resume (which replays it).
    pub fn delivery_failed(&mut self, addr: SessionAddr) -> Vec<Action> {
        if self
            .ledgers
            .get(&addr)
            .is_some_and(|l| l.detached_at.is_none())
        {
            self.detach(addr);
            self.kick_to_resume(addr);
        }
        std::mem::take(&mut self.out)
    }

    fn kick_to_resume(&mut self, addr: SessionAddr) {
        self.kick(addr, StreamCondition::ConnectionTimeout);
    }

    /// A CM bounced a stanza: for an SM session (or one that ended or
    /// moved) the ledger has it already, so nothing is routed again.
    pub(super) fn bounce_tracked(&mut self, addr: SessionAddr) -> bool {
        if self.ledgers.contains_key(&addr) {
            self.detach(addr);
            return true;
        }
        self.retired.contains(&addr)
    }

    /// A CM (re)announced a bound session.
    pub(super) fn announced(
        &mut self,
        (node, sid): SessionAddr,
        jid: &str,
        available: bool,
        priority: i8,
        sm: Option<SmSnapshot>,
    ) {
        // A CM that never heard its `conflict`: the session lives elsewhere now.
        let moved = sm
            .as_ref()
            .and_then(|sm| self.sm_ids.verify(&sm.id, address::bare(jid)))
            .and_then(|token| self.tokens.get(&token))
            .is_some_and(|addr| *addr != (node, sid));
        if moved || self.retired.contains(&(node, sid)) {
            self.kick((node, sid), StreamCondition::Conflict);
            return;
        }
        self.announce(node, sid, jid, available, priority);
        match (self.ledgers.get(&(node, sid)), sm) {
            // The session detached while its CM was cut off: what reached
            // the ledger meanwhile was never sent. The client resumes.
            (Some(l), _) if l.detached_at.is_some() => self.kick_to_resume((node, sid)),
            (Some(_), _) | (None, None) => {}
            (None, Some(sm)) => self.restore_ledger(node, sid, jid, sm),
        }
    }

    fn sm_enable(&mut self, node: NodeId, sid: SessionId, resume: bool, max: u32) {
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
            self.sm_ids.issue(token, address::bare(&full))
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

    /// Rebuilds the ledger of a session a restarted core did not know from
    /// its CM's counters (what the lost core held unacknowledged is gone).
    fn restore_ledger(&mut self, node: NodeId, sid: SessionId, jid: &str, sm: SmSnapshot) {
        let token = match self.sm_ids.verify(&sm.id, address::bare(jid)) {
            Some(t) if !self.tokens.contains_key(&t) => t,
            _ => self.new_token(),
        };
        let max = if sm.id.is_empty() { 0 } else { sm.max };
        let counters = Restored {
            handled: sm.handled,
            client_acked: sm.client_acked,
            sent: sm.sent,
            next_seq: sm.next_seq,
        };
        self.ledgers
            .insert((node, sid), Ledger::restored(token, max, counters));
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

    /// Removes a ledger and its token, keeping the counts right, and
    /// remembers the address as retired.
    pub(super) fn take_ledger(&mut self, addr: SessionAddr) -> Option<Ledger> {
        let ledger = self.ledgers.remove(&addr)?;
        self.tokens.remove(&ledger.token);
        if ledger.detached_at.is_some() {
            self.detached -= 1;
        }
        self.ledger_bytes -= ledger.bytes();
        if self.retired.insert(addr) {
            self.retired_order.push_back(addr);
            if self.retired_order.len() > RETIRED_MEMORY
                && let Some(old) = self.retired_order.pop_front()
            {
                self.retired.remove(&old);
            }
        }
        Some(ledger)
    }

    /// Puts back a ledger taken by [`Router::take_ledger`].
    fn put_ledger(&mut self, addr: SessionAddr, ledger: Ledger) {
        if ledger.detached_at.is_some() {
            self.detached += 1;
        }
        self.ledger_bytes += ledger.bytes();
        self.retired.remove(&addr);
        self.tokens.insert(ledger.token, addr);
        self.ledgers.insert(addr, ledger);
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
        let bare = address::bare(full).to_owned();
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
            let h = l.report_h();
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
            let (bare, res) = address::split_full(&full).ok_or(StanzaCondition::ItemNotFound)?;
            self.table
                .full(bare, res)
                .cloned()
                .ok_or(StanzaCondition::ItemNotFound)?
        };
        let mut ledger = self.take_ledger(old).ok_or(StanzaCondition::ItemNotFound)?;
        let old_stream_alive = ledger.detached_at.is_none();
        if ledger.ack(h).is_err() {
            // The client claims more than it was sent: the session is unusable.
            self.put_ledger(old, ledger);
            self.end_tracked(old);
            return Err(StanzaCondition::UndefinedCondition);
        }
        let replay = ledger.reattach();
        let resumption = Resumption {
            jid: full.clone(),
            // Only what is durable: a stanza whose archive or offline
            // store is still pending is sent again by the client (and
            // dropped as a duplicate by id at the recipient), never lost.
            h: ledger.report_h(),
            available: route.available,
            priority: route.priority,
            max: ledger.max,
        };
        self.put_ledger((node, sid), ledger);
        // Move the route; the old stream (if its CM still holds it) is told `conflict`.
        let bare = address::bare(&full);
        let moved = Route { node, sid, ..route };
        if let Some(previous) = self.table.insert(bare, moved)
            && old_stream_alive
        {
            self.kick(previous, StreamCondition::Conflict);
        }
        Ok((resumption, replay))
    }

    /// Stored messages loaded for `to` (possibly none): deliver them
    /// (through its ledger, ahead of anything stored meanwhile), then let the
    /// driver remove them from storage.
    pub(super) fn offline(&mut self, user: String, to: SessionAddr, messages: Vec<(i64, Bytes)>) {
        if self.table.jid_of(to.0, to.1).is_none() {
            return; // gone meanwhile: they stay stored
        }
        let total = messages.len();
        let mut delivered = 0;
        let mut upto = None;
        for (id, payload) in messages {
            let send = match self.ledgers.get_mut(&to) {
                None => true,
                Some(l) if !l.has_room() || self.ledger_bytes >= MAX_LEDGER_BYTES_TOTAL => break,
                Some(l) => {
                    self.ledger_bytes += payload.len();
                    l.push(payload.clone());
                    l.detached_at.is_none()
                }
            };
            if send {
                self.stats.delivered += 1;
                self.send(to.0, Frame::Deliver { sid: to.1, payload });
            }
            delivered += 1;
            upto = Some(id);
        }
        if let Some(upto) = upto {
            self.out.push(Action::RemoveOffline { user, upto });
        }
        let again = match self.ledgers.get_mut(&to) {
            None => false,
            Some(l) => {
                l.flushing = false;
                if delivered < total {
                    // full again: the next acknowledgement that drains it flushes the rest
                    false
                } else if std::mem::take(&mut l.spilled_while_flushing) {
                    true
                } else {
                    l.overflowed = false;
                    false
                }
            }
        };
        if again {
            self.request_flush(to);
        }
    }
}

/// Whether offline storage takes this stanza (a chat or normal message).
pub(crate) fn storable_message(payload: &[u8]) -> bool {
    inspect(payload).is_ok_and(|top| {
        top.stanza_kind() == Some(StanzaKind::Message)
            && matches!(top.attr("type").unwrap_or("normal"), "normal" | "chat")
    })
}
