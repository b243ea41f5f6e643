//! The CM's share of stream management (XEP-0198) and client state
//! indication (XEP-0352) for one session: counters and the presence held
//! back while the client is inactive. The core keeps what was delivered
//! until the client acknowledges it (the ledgers in im-core's
//! `router/sm_sessions`); the CM counts,
//! answers `<r/>` with what the core says it handled, and numbers the
//! core's deliveries so it can report those it dropped. The counters leave
//! the session as values (at most once per batch), for the registry to
//! re-announce to a (possibly restarted) core.

use bytes::Bytes;
use cm_protocol::{Frame, SessionId};
use xmpp_stream::element::Element;
use xmpp_stream::stanza::inspect;
use xmpp_stream::{StanzaKind, StreamCondition, TopLevel, ns, stream};

use super::output::{Output, StreamError};
use super::report::Refusal;
use super::{AnnouncementUpdate, SessionAction, SmAnnouncement};

/// A session's stream-management counters, as re-announced to the core.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmCounts {
    /// Stanzas handled from the client.
    pub handled: u32,
    /// Stanzas written to the client.
    pub sent: u32,
    /// The client's last `<a h/>`.
    pub client_acked: u32,
    /// Number the next delivery from the core gets.
    pub next_seq: u32,
    /// The highest `handled` the core confirmed (its `Handled` frames, or
    /// the `h` a resumption started from): only these stanzas of the
    /// client are known to have reached the core.
    pub confirmed: u32,
}

impl SmCounts {
    /// The client's stanzas the core has not confirmed: lost if the link
    /// they went on died, or still queued for it.
    pub fn unconfirmed(&self) -> u32 {
        self.handled.wrapping_sub(self.confirmed)
    }
}

/// One session's stream-management state at the CM.
#[derive(Debug)]
pub(super) struct SmState {
    /// SM id given to the client (empty: not resumable).
    id: String,
    /// Resumption time granted.
    max: u32,
    counts: SmCounts,
    /// Numbering of core deliveries is on (after SmEnabled / Resumed).
    numbering: bool,
    /// An `<r/>` is outstanding.
    requested: bool,
    /// The counts changed since they were last taken.
    changed: bool,
}

/// Why a client's `<a h/>` was refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct HandledTooHigh;

impl SmState {
    /// State after the client's `<enable/>` (numbering starts on SmEnabled).
    pub fn enabling() -> Self {
        Self {
            id: String::new(),
            max: 0,
            counts: SmCounts::default(),
            numbering: false,
            requested: false,
            changed: false,
        }
    }

    /// State of a resumed session: the client acknowledged `client_h`, the
    /// server handled `handled`; replayed deliveries are numbered from 0.
    /// Its counts count as taken: the caller announces them whole
    /// ([`SmState::announcement`]).
    pub fn resumed(id: String, max: u32, handled: u32, client_h: u32) -> Self {
        Self {
            id,
            max,
            counts: SmCounts {
                handled,
                sent: client_h,
                client_acked: client_h,
                next_seq: 0,
                confirmed: handled,
            },
            numbering: true,
            requested: false,
            changed: false,
        }
    }

    /// The core confirmed; deliveries are numbered from now on. Returns
    /// what the registry announces from now on (the counts included, so
    /// they count as taken).
    pub fn enabled(&mut self, id: String, max: u32) -> SmAnnouncement {
        self.id = id;
        self.max = max;
        self.numbering = true;
        self.changed = false;
        self.announcement()
    }

    /// Id, resumption time and counters, as the registry announces them.
    pub fn announcement(&self) -> SmAnnouncement {
        SmAnnouncement {
            id: self.id.clone(),
            max: self.max,
            counts: self.counts,
        }
    }

    /// A stanza came from the client.
    pub fn count_in(&mut self) {
        self.counts.handled = self.counts.handled.wrapping_add(1);
        self.changed = true;
    }

    /// The core's `Handled`: it confirmed `h` of the client's stanzas. An
    /// older count, or one beyond what the client sent, confirms nothing.
    pub fn on_confirmed(&mut self, h: u32) {
        let confirmed = self.counts.confirmed;
        let ahead = h.wrapping_sub(confirmed);
        if ahead != 0 && ahead <= self.counts.handled.wrapping_sub(confirmed) {
            self.counts.confirmed = h;
            self.changed = true;
        }
    }

    /// A delivery arrived from the core: its number, if numbering is on.
    pub fn next_seq(&mut self) -> Option<u32> {
        if !self.numbering {
            return None;
        }
        let seq = self.counts.next_seq;
        self.counts.next_seq = seq.wrapping_add(1);
        self.changed = true;
        Some(seq)
    }

    /// A stanza is written to the client.
    pub fn count_out(&mut self) {
        if self.numbering {
            self.counts.sent = self.counts.sent.wrapping_add(1);
            self.changed = true;
        }
    }

    /// The client acknowledged `h`.
    pub fn on_ack(&mut self, h: u32) -> Result<(), HandledTooHigh> {
        let acked = self.counts.client_acked;
        if h.wrapping_sub(acked) > self.counts.sent.wrapping_sub(acked) {
            return Err(HandledTooHigh);
        }
        self.counts.client_acked = h;
        self.changed = true;
        self.requested = false;
        Ok(())
    }

    /// Whether to ask the client for an acknowledgement now (something is
    /// unacknowledged and no request is outstanding); asks at most once per
    /// write burst, so a phone's radio is not woken per stanza.
    pub fn want_ack(&mut self) -> bool {
        let due = self.numbering && !self.requested && self.counts.sent != self.counts.client_acked;
        self.requested |= due;
        due
    }

    /// The counters, if they changed since last taken.
    pub fn take_changed(&mut self) -> Option<SmCounts> {
        std::mem::take(&mut self.changed).then_some(self.counts)
    }
}

/// Most presence stanzas held for an inactive client; more flushes them.
pub(super) const MAX_HELD: usize = 64;

/// Presence held back while the client is inactive (XEP-0352): only the
/// latest from each sender is kept.
#[derive(Debug, Default)]
pub(super) struct CsiHold {
    /// The client said `<inactive/>`.
    inactive: bool,
    held: Vec<Held>,
}

#[derive(Debug)]
struct Held {
    seq: Option<u32>,
    from: String,
    payload: Bytes,
}

/// What holding a presence did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct HoldOutcome {
    /// Number of the presence it replaced (to report as skipped).
    pub replaced: Option<u32>,
    /// The hold is full: flush it.
    pub full: bool,
}

impl CsiHold {
    /// Holds a presence from `from` (numbered `seq`).
    pub fn hold(&mut self, seq: Option<u32>, from: &str, payload: Bytes) -> HoldOutcome {
        let mut outcome = HoldOutcome::default();
        if let Some(pos) = self.held.iter().position(|h| h.from == from) {
            outcome.replaced = self.held.remove(pos).seq;
        }
        self.held.push(Held {
            seq,
            from: from.to_owned(),
            payload,
        });
        outcome.full = self.held.len() >= MAX_HELD;
        outcome
    }

    /// Everything held (with its number, if it had one), oldest first.
    pub fn take(&mut self) -> Vec<(Option<u32>, Bytes)> {
        std::mem::take(&mut self.held)
            .into_iter()
            .map(|h| (h.seq, h.payload))
            .collect()
    }
}

/// Stream management and client state indication of a bound session.
#[derive(Debug, Default)]
pub(super) struct StreamManagement {
    /// Once the client enabled it (or resumed).
    sm: Option<SmState>,
    csi: CsiHold,
}

impl StreamManagement {
    /// Whether stream management is on (enabled, being enabled, or
    /// resumed).
    pub fn is_on(&self) -> bool {
        self.sm.is_some()
    }

    /// An XEP-0198 or XEP-0352 element (a nonza) from the bound client.
    pub fn on_nonza(
        &mut self,
        sid: SessionId,
        top: &TopLevel,
        out: &mut Output,
    ) -> Result<(), StreamError> {
        match (top.ns.as_str(), top.name.as_str(), &mut self.sm) {
            (ns::SM, "enable", None) => {
                let resume = matches!(top.attr("resume"), Some("true" | "1"));
                let max = top.attr("max").and_then(|m| m.parse().ok()).unwrap_or(0);
                self.sm = Some(SmState::enabling());
                out.push(SessionAction::Announcement(AnnouncementUpdate::SmEnabling(
                    true,
                )));
                out.send(Frame::SmEnable { sid, resume, max });
            }
            (ns::SM, "enable" | "resume", _) => {
                out.write(stream::sm_failed("unexpected-request", None));
            }
            (ns::SM, "r", Some(_)) => out.send(Frame::AckRequest { sid }),
            (ns::SM, "a", Some(sm)) => {
                let Some(h) = top.attr("h").and_then(|h| h.parse::<u32>().ok()) else {
                    return Err(StreamError::new(StreamCondition::BadFormat, "bad h")
                        .refusing(Refusal::StreamManagement));
                };
                if sm.on_ack(h).is_err() {
                    return Err(StreamError::new(
                        StreamCondition::UndefinedCondition,
                        "handled-count-too-high",
                    )
                    .refusing(Refusal::StreamManagement));
                }
                out.send(Frame::Acked { sid, h });
            }
            (ns::CSI, "inactive", _) => self.csi.inactive = true,
            (ns::CSI, "active", _) => {
                self.csi.inactive = false;
                self.flush_held(out);
            }
            _ => {
                return Err(StreamError::new(
                    StreamCondition::UnsupportedStanzaType,
                    "unsupported element",
                )
                .refusing(Refusal::StreamManagement));
            }
        }
        Ok(())
    }

    /// A stanza came from the client.
    pub fn count_in(&mut self) {
        if let Some(sm) = &mut self.sm {
            sm.count_in();
        }
    }

    /// A delivery from the core: written, or held while the client is
    /// inactive if it is presence.
    pub fn on_deliver(&mut self, sid: SessionId, payload: Bytes, out: &mut Output) {
        let seq = self.sm.as_mut().and_then(SmState::next_seq);
        if self.csi.inactive
            && let Ok(top) = inspect(&payload)
            && top.stanza_kind() == Some(StanzaKind::Presence)
        {
            // XEP-0352: presence waits for `<active/>`; only the latest per sender.
            let from = top.attr("from").unwrap_or_default().to_owned();
            let outcome = self.csi.hold(seq, &from, payload);
            if let Some(replaced) = outcome.replaced
                && self.sm.is_some()
            {
                out.send(Frame::Skipped {
                    sid,
                    seqs: vec![replaced],
                });
            }
            if outcome.full {
                self.flush_held(out);
            }
            return;
        }
        self.write_delivery(payload, seq.is_some(), out);
    }

    /// The core's `SmEnabled`: `<enabled/>` to the client; numbering starts.
    pub fn on_enabled(&mut self, id: String, max: u32, out: &mut Output) {
        if let Some(enabled) = self.confirm_enabled(id, max, out) {
            out.write(enabled.to_bytes(ns::CLIENT));
        }
    }

    /// Stream management is being enabled with a Bind2 binding (its
    /// `SmEnabled` comes right behind the `BindResult`); `inactive`: the
    /// client starts inactive (XEP-0352 inline). Called before the bind
    /// request leaves.
    pub fn enabling_inline(&mut self, inactive: bool, out: &mut Output) {
        self.sm = Some(SmState::enabling());
        self.csi.inactive = inactive;
        out.push(SessionAction::Announcement(AnnouncementUpdate::SmEnabling(
            true,
        )));
    }

    /// The inline Bind2 was refused: neither SM nor CSI is on (the
    /// client binds and enables them the legacy way).
    pub fn inline_refused(&mut self, out: &mut Output) {
        if self.sm.take().is_some() {
            out.push(SessionAction::Announcement(AnnouncementUpdate::SmEnabling(
                false,
            )));
        }
        self.csi.inactive = false;
    }

    /// The client starts inactive (XEP-0352, inline in Bind2).
    pub fn set_inactive(&mut self) {
        self.csi.inactive = true;
    }

    /// The core's `SmEnabled`, confirmed: numbering starts, the registry
    /// learns it; returns the `<enabled/>` to write (alone, or inline in a
    /// Bind2 `<bound/>`), None if the client never asked.
    pub fn confirm_enabled(&mut self, id: String, max: u32, out: &mut Output) -> Option<Element> {
        let Some(sm) = &mut self.sm else {
            return None;
        };
        // Presence held before numbering began is written before
        // `<enabled/>`: neither side counts it.
        for (_, payload) in self.csi.take() {
            out.write_stanza(payload);
        }
        let announcement = sm.enabled(id, max);
        let mut enabled = Element::new("enabled", ns::SM);
        if !announcement.id.is_empty() {
            enabled = enabled
                .with_attr("id", &announcement.id)
                .with_attr("resume", "true")
                .with_attr("max", max.to_string());
        }
        out.push(SessionAction::Announcement(
            AnnouncementUpdate::StreamManagement(announcement),
        ));
        Some(enabled)
    }

    /// The core's `Handled`: the answer to the client's `<r/>`, and what
    /// the core confirmed.
    pub fn on_handled(&mut self, h: u32, out: &mut Output) {
        if let Some(sm) = &mut self.sm {
            sm.on_confirmed(h);
        }
        out.write(stream::sm_element("a", &[("h", &h.to_string())]));
    }

    /// The session resumed SM id `previd` (see [`SmState::resumed`]);
    /// returns what the registry announces of it.
    pub fn resumed(
        &mut self,
        previd: String,
        max: u32,
        handled: u32,
        client_h: u32,
    ) -> SmAnnouncement {
        self.sm
            .insert(SmState::resumed(previd, max, handled, client_h))
            .announcement()
    }

    /// After a burst of writes: asks the client to acknowledge them
    /// (`<r/>`), once per burst.
    pub fn request_ack(&mut self, out: &mut Output) {
        if self.sm.as_mut().is_some_and(SmState::want_ack) {
            out.write(stream::sm_element("r", &[]));
        }
    }

    /// The counters, if they changed since last taken.
    pub fn take_changed_counts(&mut self) -> Option<SmCounts> {
        self.sm.as_mut().and_then(SmState::take_changed)
    }

    /// Writes a delivery; `numbered` if the core counts it (SM numbering on).
    fn write_delivery(&mut self, payload: Bytes, numbered: bool, out: &mut Output) {
        if numbered && let Some(sm) = &mut self.sm {
            sm.count_out();
        }
        out.write_stanza(payload);
    }

    fn flush_held(&mut self, out: &mut Output) {
        for (seq, payload) in self.csi.take() {
            self.write_delivery(payload, seq.is_some(), out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_are_checked_and_requested_once_per_burst() {
        let mut sm = SmState::enabling();
        assert_eq!(sm.next_seq(), None);
        sm.enabled("id".into(), 300);
        assert_eq!(sm.next_seq(), Some(0));
        sm.count_out();
        sm.count_out();
        assert!(sm.want_ack());
        assert!(!sm.want_ack());
        assert_eq!(sm.on_ack(3), Err(HandledTooHigh));
        sm.on_ack(2).unwrap();
        assert!(!sm.want_ack());
    }

    #[test]
    fn counters_wrap() {
        let mut sm = SmState::resumed("id".into(), 300, 7, u32::MAX);
        sm.count_out();
        sm.count_out();
        sm.on_ack(1).unwrap();
        let counts = sm.take_changed().expect("changed");
        assert_eq!(counts.sent, 1);
        assert_eq!(counts.handled, 7);
        assert_eq!(counts.client_acked, 1);
    }

    #[test]
    fn changed_counts_are_taken_once_until_they_change_again() {
        let mut sm = SmState::enabling();
        assert_eq!(sm.take_changed(), None);
        sm.count_in();
        sm.count_in();
        assert_eq!(
            sm.take_changed(),
            Some(SmCounts {
                handled: 2,
                ..SmCounts::default()
            })
        );
        assert_eq!(sm.take_changed(), None);
        // deliveries are not numbered before the core confirmed
        assert_eq!(sm.next_seq(), None);
        sm.count_out();
        assert_eq!(sm.take_changed(), None);
        // enabling announces the counts whole: they count as taken
        sm.count_in();
        let announced = sm.enabled("id".into(), 300);
        assert_eq!(
            announced,
            SmAnnouncement {
                id: "id".into(),
                max: 300,
                counts: SmCounts {
                    handled: 3,
                    ..SmCounts::default()
                }
            }
        );
        assert_eq!(sm.take_changed(), None);
        assert_eq!(sm.next_seq(), Some(0));
        sm.count_out();
        assert_eq!(
            sm.take_changed(),
            Some(SmCounts {
                handled: 3,
                sent: 1,
                client_acked: 0,
                next_seq: 1,
                confirmed: 0,
            })
        );
    }

    #[test]
    fn hold_keeps_the_latest_presence_per_sender() {
        let mut hold = CsiHold::default();
        let p = |s: &'static str| Bytes::from_static(s.as_bytes());
        assert_eq!(hold.hold(Some(1), "a", p("a1")), HoldOutcome::default());
        hold.hold(Some(2), "b", p("b1"));
        let o = hold.hold(Some(3), "a", p("a2"));
        assert_eq!(o.replaced, Some(1));
        assert_eq!(hold.take(), vec![(Some(2), p("b1")), (Some(3), p("a2"))]);
        for i in 0..MAX_HELD {
            let o = hold.hold(None, &i.to_string(), p("x"));
            assert_eq!(o.full, i + 1 == MAX_HELD);
        }
    }
}
