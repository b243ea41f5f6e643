//! The router's XEP-0198 half: enabling stream management, acknowledgements,
//! detaching when a client's stream or CM goes away, resumption on any CM,
//! and expiry to offline storage: the router's side, which routes what
//! [`SmSessions`](super::sm_sessions::SmSessions) decides.

use std::time::Instant;

use bytes::Bytes;
use cm_protocol::{Frame, Resumption, SessionId, SmSnapshot};
use xmpp_stream::stanza::{StanzaKind, inspect};
use xmpp_stream::{StanzaCondition, StreamCondition};

use super::live_rows::MessageRow;
use super::sm_sessions::{Admission, Delivery, Detach, Ledger, Row};
use super::{Bounce, Router};
use crate::address;
use crate::routing::{NodeId, Route, SessionAddr};

impl Router {
    /// Handles the stream-management frames from a CM.
    pub(super) fn sm_frame(&mut self, node: NodeId, frame: Frame) {
        match frame {
            Frame::SmEnable { sid, resume, max } => self.sm_enable(node, sid, resume, max),
            Frame::AckRequest { sid } => {
                if let Some(h) = self.sessions.ack_request((node, sid)) {
                    self.send(node, Frame::Handled { sid, h });
                }
            }
            Frame::Acked { sid, h } => self.acked((node, sid), h),
            Frame::Skipped { sid, seqs } => self.sessions.skipped((node, sid), &seqs),
            Frame::Resume {
                sid,
                user,
                previd,
                h,
            } => self.resume(node, sid, &user, &previd, h),
            other => tracing::warn!(node, frame = other.name(), "not a stream-management frame"),
        }
    }

    /// The client acknowledged `h` stanzas (`<a h/>`): its ledger drops
    /// them; a ledger that drained enough flushes stored messages, and a
    /// client claiming more than it was sent is ended.
    fn acked(&mut self, (node, sid): SessionAddr, h: u32) {
        let Some(acked) = self.sessions.acked((node, sid), h) else {
            return;
        };
        self.live_rows.acked(&acked.rows.tickets);
        if !acked.rows.rows.is_empty()
            && let Some(user) = self.user_of((node, sid))
        {
            self.stored_acked(&user, &acked.rows.rows);
        }
        if acked.caught_up {
            self.request_flush((node, sid));
        }
        if acked.refused {
            tracing::debug!(node, sid, h, "client acknowledged more than it was sent");
            self.kick((node, sid), StreamCondition::UndefinedCondition);
        }
    }

    /// Records a stanza for a session before it is sent; one its ledger
    /// cannot take is stored offline if it is a message that may be, and
    /// stored messages are asked for once the client caught up. A chat or
    /// normal message its ledger takes is held by a live row (see
    /// `live_rows`): the message's one, or a new one whose ticket (with the
    /// user) is returned, for the caller to write ([`Router::store_live`]).
    pub(super) fn track(
        &mut self,
        addr: SessionAddr,
        payload: &Bytes,
        delivery: Delivery,
    ) -> (Admission, Option<(u64, String)>) {
        let token = match delivery {
            Delivery::Storable => self.sessions.token_of(addr),
            Delivery::Other | Delivery::Copy => None,
        };
        let (row, fresh) = match (token, self.live_ticket) {
            (None, _) => (Row::None, None),
            (Some(_), MessageRow::Issued(ticket)) => (Row::Ticket(ticket), None),
            (Some(_), MessageRow::Refused { .. }) => (Row::None, None),
            (Some(_), MessageRow::Unset) => match self
                .user_of(addr)
                .and_then(|u| Some((self.live_rows.issue(&u)?, u)))
            {
                Some((ticket, user)) => (Row::Ticket(ticket), Some(user)),
                None => {
                    self.live_ticket = MessageRow::Refused { answered: false };
                    (Row::None, None)
                }
            },
        };
        let admission = self.sessions.admit(addr, payload, delivery, row);
        if self.live_ticket == (MessageRow::Refused { answered: false })
            && matches!(admission, Admission::Send | Admission::Held)
        {
            // Delivered with nothing durable behind it: its sender is
            // told, never acknowledged as if it were stored.
            self.live_ticket = MessageRow::Refused { answered: true };
            self.store_failed(
                Bounce::default(),
                payload,
                StanzaCondition::ResourceConstraint,
                None,
            );
        }
        let mut live = None;
        if let (Row::Ticket(ticket), Some(token)) = (row, token) {
            if matches!(admission, Admission::Send | Admission::Held) {
                self.live_rows.held_by(ticket, token);
                if let Some(user) = fresh {
                    self.live_ticket = MessageRow::Issued(ticket);
                    live = Some((ticket, user));
                }
            } else if fresh.is_some() {
                // not taken: no row to write
                self.live_rows.written(ticket);
            }
        }
        if let Admission::Spill { flush } = admission {
            if delivery == Delivery::Storable
                && let Some(user) = self.user_of(addr)
            {
                self.store_spilled(user, payload.clone());
            }
            if flush {
                self.request_flush(addr);
            }
        }
        (admission, live)
    }

    /// A pooled CM connection ended: whatever was in flight on it, either
    /// way, is lost, so its SM sessions detach (and resume to realign).
    pub(super) fn link_lost(&mut self, node: NodeId, index: u16, pool_size: u16, now: Instant) {
        let size = u64::from(pool_size.max(1));
        let sids: Vec<SessionId> = self
            .table
            .sids_of(node)
            .into_iter()
            .filter(|sid| sid % size == u64::from(index) && self.sessions.is_tracked((node, *sid)))
            .collect();
        for sid in sids {
            self.detach((node, sid), now);
        }
    }

    /// Ends a session's stream so that its client resumes (XEP-0198 §5),
    /// realigning what it received with its ledger.
    pub(super) fn kick_to_resume(&mut self, addr: SessionAddr) {
        self.kick(addr, StreamCondition::ConnectionTimeout);
    }

    /// A CM bounced a stanza: for an SM session (or one that ended or
    /// moved) the ledger has it already, so nothing is routed again.
    pub(super) fn bounce_tracked(&mut self, addr: SessionAddr, now: Instant) -> bool {
        if self.sessions.is_tracked(addr) {
            self.detach(addr, now);
            return true;
        }
        self.sessions.is_retired(addr)
    }

    /// A CM (re)announced a bound session, or (`sm.detached`) told of a
    /// session whose client went away there, at `now`.
    pub(super) fn announced(
        &mut self,
        (node, sid): SessionAddr,
        jid: &str,
        available: bool,
        priority: i8,
        sm: Option<SmSnapshot>,
        now: Instant,
    ) {
        let bare = address::bare(jid);
        let holder = sm
            .as_ref()
            .and_then(|sm| self.sessions.holder_of(&sm.id, bare))
            .filter(|addr| *addr != (node, sid));
        if let Some(sm) = sm.as_ref().filter(|sm| sm.detached) {
            self.announced_detached((node, sid), jid, available, priority, sm, holder, now);
            return;
        }
        // A CM that never heard its `conflict`: the session lives elsewhere
        // now. (One only a CM's word says is detached elsewhere is the
        // stale one: that CM remembered it after it resumed, and this core
        // heard of it first; it is replaced below.)
        let moved = holder.is_some_and(|addr| !self.sessions.is_hearsay(addr));
        if moved || self.sessions.is_retired((node, sid)) {
            self.kick((node, sid), StreamCondition::Conflict);
            return;
        }
        self.announce(node, sid, jid, available, priority);
        if self.sessions.is_detached((node, sid)) {
            // The session detached while its CM was cut off: what reached
            // the ledger meanwhile was never sent. The client resumes.
            self.kick_to_resume((node, sid));
        } else if let Some(sm) = sm
            && !self.sessions.is_tracked((node, sid))
        {
            // A restarted core did not know the session: its ledger is
            // rebuilt from the CM's counters. Stored messages the lost core
            // handed out unacknowledged are still stored: an available
            // session (which sends no initial presence again) gets them now.
            self.sessions.restore((node, sid), bare, &sm);
            if available {
                self.request_flush((node, sid));
            }
            self.unpark((node, sid));
        }
        // (after its ledger is restored: the question counts in it; none
        // to a session told to resume)
        if !self.sessions.is_detached((node, sid)) {
            self.caps_after_announce((node, sid));
        }
    }

    /// A CM tells of a session that closed resumably there (its slot moved
    /// here since): it is entered detached, its ledger rebuilt from the
    /// CM's counters (stored messages its old core handed out are loaded
    /// for it), so that its client can resume here. A session this core
    /// knows under the same SM id (`holder`: it resumed, or was announced
    /// live, here) or with the same full JID (a new login), or one that
    /// ended here, wins: the CM is told to forget it (a `Kick` for a
    /// session it no longer carries).
    #[allow(clippy::too_many_arguments)]
    fn announced_detached(
        &mut self,
        (node, sid): SessionAddr,
        jid: &str,
        available: bool,
        priority: i8,
        sm: &SmSnapshot,
        holder: Option<SessionAddr>,
        now: Instant,
    ) {
        if self.sessions.is_tracked((node, sid)) {
            return; // heard of already
        }
        let taken = address::split_full(jid).is_some_and(|(b, r)| self.table.full(b, r).is_some());
        if holder.is_some() || taken || self.sessions.is_retired((node, sid)) {
            self.kick((node, sid), StreamCondition::Conflict);
            return;
        }
        self.announce(node, sid, jid, available, priority);
        self.sessions.restore((node, sid), address::bare(jid), sm);
        self.sessions.mark_hearsay((node, sid));
        if available {
            self.request_flush((node, sid));
        }
        self.detach((node, sid), now);
        self.unpark((node, sid));
    }

    /// `<enable/>` from a bound session: its ledger starts, and the CM is
    /// told the SM id and the resumption time granted.
    pub(super) fn sm_enable(&mut self, node: NodeId, sid: SessionId, resume: bool, max: u32) {
        let Some(full) = self.table.jid_of(node, sid) else {
            return;
        };
        let bare = address::bare(full);
        if let Some((id, max)) = self.sessions.enable((node, sid), bare, resume, max) {
            self.send(node, Frame::SmEnabled { sid, id, max });
        }
    }

    /// The client's stream (or its CM) is gone: a resumable session waits
    /// for its client; any other ends, handing on what was unacknowledged.
    pub(super) fn detach(&mut self, addr: SessionAddr, now: Instant) {
        if self.sessions.detach(addr, now) == Detach::NotResumable {
            self.end_tracked(addr);
        }
    }

    /// Ends an SM session for good: unbinds it and treats what it never
    /// acknowledged as sent to an unavailable resource.
    pub(super) fn end_tracked(&mut self, (node, sid): SessionAddr) {
        let Some(ledger) = self.sessions.remove((node, sid)) else {
            return;
        };
        let full = self.table.jid_of(node, sid).map(str::to_owned);
        self.session_end(node, sid);
        if let Some(full) = full {
            self.reroute_unacked(&full, ledger);
        }
    }

    /// XEP-0198 §5: unacknowledged messages go to another resource or
    /// offline storage (with a delay stamp); the rest is dropped. Stored
    /// messages it held (live rows included) were never removed from
    /// storage: they stay there (and go to another available resource by a
    /// flush), but for chat states, which are removed (XEP-0085 notices
    /// are not kept for later). Live rows still being written are handed
    /// back when their ids come (see `live_rows`).
    pub(super) fn reroute_unacked(&mut self, full: &str, ledger: Ledger) {
        let bare = address::bare(full).to_owned();
        let unacked = ledger.into_unacked();
        if let Some(user) = address::local(&bare) {
            self.stored_ended(user, unacked.rows, &unacked.tickets);
        }
        // (counted for push when first held)
        let outer = std::mem::replace(&mut self.rerouting, true);
        for payload in unacked.payloads {
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
        self.rerouting = outer;
    }

    /// Ends the detached sessions whose resumption time is over at `now`.
    pub(super) fn expire(&mut self, now: Instant) {
        while let Some(addr) = self.sessions.next_expired(now) {
            self.stats.sm_expired += 1;
            tracing::debug!(node = addr.0, sid = addr.1, "detached SM session expired");
            self.end_tracked(addr);
            if self.shard.is_some() {
                // its CM, which remembers it for the slot's next owners,
                // forgets it
                self.kick(addr, StreamCondition::UndefinedCondition);
            }
        }
    }

    /// A storage commit an SM stanza's acknowledgement waited for is done.
    pub(super) fn stored(&mut self, origin: (u64, u32)) {
        if self.inbound_stored(origin.0) {
            return;
        }
        if let Some(((node, sid), h)) = self.sessions.store_done(origin) {
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
            Ok((resumption, replay, reflush)) => {
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
                if reflush {
                    self.request_flush((node, sid));
                }
            }
            Err(StanzaCondition::ItemNotFound)
                if self.shard.is_some()
                    && let Some(token) = self.sessions.token_of_id(previd, user)
                    && let Some(now) = self.now
                    && self.parked.park((node, sid), user, previd, h, token, now) =>
            {
                // its session may be announced here in a moment (a move)
                tracing::debug!(
                    node,
                    sid,
                    user,
                    "resumption waits for its session's announcement"
                );
            }
            Err(condition) => self.resume_failed(node, sid, condition),
        }
    }

    fn resume_failed(&mut self, node: NodeId, sid: SessionId, condition: StanzaCondition) {
        tracing::debug!(
            node,
            sid,
            condition = condition.name(),
            "resumption refused"
        );
        self.stats.resume_failed += 1;
        self.send(
            node,
            Frame::Resumed {
                sid,
                result: Err(condition.name().into()),
            },
        );
    }

    /// Resumptions that waited for the session at `addr`, just announced.
    fn unpark(&mut self, addr: SessionAddr) {
        let Some(token) = self.sessions.token_of(addr) else {
            return;
        };
        for p in self.parked.take(token) {
            self.resume(p.node, p.sid, &p.user, &p.previd, p.h);
        }
    }

    /// Resumptions whose session was not announced in time fail.
    pub(super) fn expire_parked(&mut self, now: Instant) {
        for p in self.parked.expired(now) {
            self.resume_failed(p.node, p.sid, StanzaCondition::ItemNotFound);
        }
    }

    /// Moves the SM session `previd` of `user` to the stream (`node`,
    /// `sid`): what to tell the client, the stanzas to send again and
    /// whether a flush of stored messages must be asked for again (one to
    /// the old address was under way), or why it cannot resume.
    fn try_resume(
        &mut self,
        node: NodeId,
        sid: SessionId,
        user: &str,
        previd: &str,
        h: u32,
    ) -> Result<(Resumption, Vec<Bytes>, bool), StanzaCondition> {
        let old = self
            .sessions
            .holder_of(previd, user)
            .ok_or(StanzaCondition::ItemNotFound)?;
        let full = self
            .table
            .jid_of(old.0, old.1)
            .map(str::to_owned)
            .ok_or(StanzaCondition::ItemNotFound)?;
        let (bare, res) = address::split_full(&full).ok_or(StanzaCondition::ItemNotFound)?;
        let route = self
            .table
            .full(bare, res)
            .cloned()
            .ok_or(StanzaCondition::ItemNotFound)?;
        let resumed = match self.sessions.resume(old, (node, sid), h) {
            None => return Err(StanzaCondition::ItemNotFound),
            Some(Err(_)) => {
                // The client claims more than it was sent: the session is
                // unusable (in a cluster its CM, which may remember it for
                // the slot's next owners, is told).
                self.end_tracked(old);
                if self.shard.is_some() {
                    self.kick(old, StreamCondition::UndefinedCondition);
                }
                return Err(StanzaCondition::UndefinedCondition);
            }
            Some(Ok(resumed)) => resumed,
        };
        self.push_user_online(bare);
        self.live_rows.acked(&resumed.rows.tickets);
        if let Some(user) = address::local(bare) {
            let user = user.to_owned();
            self.stored_acked(&user, &resumed.rows.rows);
        }
        let resumption = Resumption {
            jid: full.clone(),
            h: resumed.h,
            available: route.available,
            priority: route.priority,
            max: resumed.max,
        };
        // Move the route; the old stream (if its CM still holds it) is told `conflict`.
        let moved = Route { node, sid, ..route };
        if let Some(previous) = self.table.insert(bare, moved)
            && (resumed.old_attached || self.shard.is_some())
        {
            // (a detached one's CM, which remembers it for the slot's next
            // owners, forgets it)
            self.kick(previous, StreamCondition::Conflict);
        }
        Ok((resumption, resumed.replay, resumed.reflush))
    }
}
