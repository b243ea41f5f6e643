//! Stanza relay after binding: `from` is stamped with the bound full JID
//! (whatever the client wrote is dropped), the server claims the client
//! forged for this domain (stanza-ids, delays, carbon wrappers, archive
//! results: [`xmpp_stream::Claim`]) are cut from messages and presence, the
//! routing header is taken from
//! the start tag, and the stanza goes to the core as a `Stanza` frame. The
//! client's broadcast presence is tracked, because a reconnected core must
//! learn the session's availability and priority again.

use cm_protocol::{Frame, Kind, RouteHeader, SessionId};
use xmpp_stream::element::Element;
use xmpp_stream::stanza::{stamp_from, stamp_from_unforged};
use xmpp_stream::{StanzaHeader, StanzaKind, TopLevel, ns};

/// The `Stanza` frame for a client stanza `raw` from the bound `from`, on
/// a CM serving `domain`.
pub(super) fn stanza_frame(
    sid: SessionId,
    raw: &[u8],
    top: &TopLevel,
    header: StanzaHeader,
    from: &str,
    domain: &str,
) -> Frame {
    let kind = match header.kind {
        StanzaKind::Message => Kind::Message,
        StanzaKind::Presence => Kind::Presence,
        StanzaKind::Iq => Kind::Iq,
    };
    // An IQ's children are its payload, addressed to whoever answers it.
    let payload = match header.kind {
        StanzaKind::Message | StanzaKind::Presence => stamp_from_unforged(raw, top, from, domain),
        StanzaKind::Iq => stamp_from(raw, top, from),
    };
    Frame::Stanza {
        sid,
        header: RouteHeader {
            kind,
            stanza_type: header.stanza_type,
            to: header.to,
            id: header.id,
            from: from.to_owned(),
        },
        payload,
    }
}

/// Availability and priority as the client's broadcast presence sets them,
/// and what was last reported for re-announcement.
#[derive(Debug, Default)]
pub(super) struct AnnouncedPresence {
    available: bool,
    priority: i8,
    /// What the registry holds (a new binding starts unavailable, 0).
    reported: (bool, i8),
}

impl AnnouncedPresence {
    /// Notes a client stanza: broadcast presence (no `to`) changes what is
    /// announced.
    pub fn observe(&mut self, header: &StanzaHeader, raw: &[u8]) {
        if header.kind != StanzaKind::Presence || header.to.is_some() {
            return;
        }
        match header.stanza_type.as_deref() {
            None => {
                self.available = true;
                self.priority = Element::parse(raw, ns::CLIENT)
                    .ok()
                    .and_then(|p| p.child("priority", ns::CLIENT).map(|c| c.text()))
                    .and_then(|t| t.trim().parse().ok())
                    .unwrap_or(0);
            }
            Some("unavailable") => self.available = false,
            _ => {}
        }
    }

    /// A resumed session has the presence its previous stream announced
    /// (and the registry learns it with the binding).
    pub fn resumed(&mut self, available: bool, priority: i8) {
        self.available = available;
        self.priority = priority;
        self.reported = (available, priority);
    }

    /// Availability and priority, if they changed since last taken.
    pub fn take_change(&mut self) -> Option<(bool, i8)> {
        let now = (self.available, self.priority);
        (now != self.reported).then(|| {
            self.reported = now;
            now
        })
    }
}
