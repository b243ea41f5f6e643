//! The client's side of stream management (XEP-0198), sans-IO: what was
//! sent and not yet acknowledged (resent after a resumption or a new
//! login) and what was received (the `h` we report).

use std::collections::VecDeque;

use bytes::Bytes;

/// A stanza on its way out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// The serialized stanza.
    pub bytes: Bytes,
    /// Message id whose state the app follows, if any.
    pub id: Option<String>,
}

/// Where stream management stands on the current stream.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Not requested, or the server refused it.
    Off,
    /// `<enable/>` sent: what we write from now on is counted.
    Enabling,
    /// `<enabled/>` received (with an id if resumable).
    On,
}

/// Client stream-management state (see the module docs).
#[derive(Debug)]
pub struct SmClient {
    phase: Phase,
    /// SM id for resumption.
    id: Option<String>,
    /// Stanzas received since `<enabled/>`.
    inbound: u32,
    /// Stanzas written since `<enable/>` (wrapping).
    sent: u32,
    /// The server's last `h`.
    acked: u32,
    unacked: VecDeque<Outgoing>,
    requested: bool,
}

/// The server acknowledged more than was sent.
#[derive(Debug, PartialEq, Eq)]
pub struct TooHigh;

impl Default for SmClient {
    fn default() -> Self {
        Self {
            phase: Phase::Off,
            id: None,
            inbound: 0,
            sent: 0,
            acked: 0,
            unacked: VecDeque::new(),
            requested: false,
        }
    }
}

impl SmClient {
    /// The counters of a session another process saved (its SM id and our
    /// `h`), about to be resumed.
    pub fn saved(id: String, inbound: u32) -> Self {
        Self {
            phase: Phase::On,
            id: Some(id).filter(|i| !i.is_empty()),
            inbound,
            ..Self::default()
        }
    }

    /// `<enable/>` was written.
    pub fn enabling(&mut self) {
        self.phase = Phase::Enabling;
        self.sent = 0;
        self.acked = 0;
        self.inbound = 0;
        self.requested = false;
    }

    /// `<enabled/>` arrived.
    pub fn enabled(&mut self, id: Option<String>) {
        if self.phase == Phase::Enabling {
            self.phase = Phase::On;
            self.id = id.filter(|i| !i.is_empty());
        }
    }

    /// `<failed/>` arrived in answer to `<enable/>`: no tracking.
    pub fn refused(&mut self) {
        self.phase = Phase::Off;
        self.id = None;
        self.unacked.clear();
    }

    /// Whether outgoing stanzas are tracked.
    pub fn tracking(&self) -> bool {
        self.phase != Phase::Off
    }

    /// The resumption id and our `h`, if the session can be resumed.
    pub fn resumption(&self) -> Option<(String, u32)> {
        self.resumable().map(|(id, h)| (id.to_owned(), h))
    }

    /// [`Self::resumption`], borrowed.
    pub fn resumable(&self) -> Option<(&str, u32)> {
        self.id.as_deref().map(|id| (id, self.inbound))
    }

    /// A stanza was written; tracked until acknowledged.
    pub fn written(&mut self, out: Outgoing) {
        if self.tracking() {
            self.sent = self.sent.wrapping_add(1);
            self.unacked.push_back(out);
        }
    }

    /// A stanza arrived.
    pub fn received(&mut self) {
        if self.phase == Phase::On {
            self.inbound = self.inbound.wrapping_add(1);
        }
    }

    /// Stanzas written since `<enable/>` (what an `<a h/>` acknowledging
    /// everything says).
    #[cfg(test)]
    pub fn sent(&self) -> u32 {
        self.sent
    }

    /// Our `h`.
    pub fn inbound(&self) -> u32 {
        self.inbound
    }

    /// `<a h/>` arrived: returns what it acknowledged.
    pub fn acked(&mut self, h: u32) -> Result<Vec<Outgoing>, TooHigh> {
        let n = h.wrapping_sub(self.acked) as usize;
        if n > self.unacked.len() {
            return Err(TooHigh);
        }
        self.acked = h;
        self.requested = false;
        Ok(self.unacked.drain(..n).collect())
    }

    /// Whether to send `<r/>` now (something unacknowledged, none outstanding).
    pub fn want_ack(&mut self) -> bool {
        let due = self.tracking() && !self.requested && !self.unacked.is_empty();
        self.requested |= due;
        due
    }

    /// An `<r/>` is outstanding.
    pub fn ack_outstanding(&self) -> bool {
        self.requested
    }

    /// `<resumed h/>`: returns (acknowledged, to send again). Counting
    /// continues from `h`.
    pub fn resumed(&mut self, h: u32) -> (Vec<Outgoing>, Vec<Outgoing>) {
        let acked = self.acked(h).unwrap_or_default();
        let rest: Vec<_> = self.unacked.drain(..).collect();
        self.sent = h;
        self.acked = h;
        self.requested = false;
        (acked, rest)
    }

    /// The old session is gone (resumption failed): everything not
    /// acknowledged must go out again on the new one.
    pub fn restart(&mut self) -> Vec<Outgoing> {
        let rest = self.unacked.drain(..).collect();
        *self = Self::default();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(n: u32) -> Outgoing {
        Outgoing {
            bytes: Bytes::from(n.to_string()),
            id: Some(n.to_string()),
        }
    }

    #[test]
    fn tracks_acks_and_resends_after_resume() {
        let mut sm = SmClient::default();
        sm.written(out(0)); // before enable: not tracked
        sm.enabling();
        sm.written(out(1));
        sm.written(out(2));
        sm.received(); // before enabled: not counted
        sm.enabled(Some("id".into()));
        sm.received();
        assert_eq!(sm.resumption(), Some(("id".into(), 1)));
        assert!(sm.want_ack());
        assert!(!sm.want_ack());
        assert_eq!(sm.acked(1).unwrap(), vec![out(1)]);
        assert_eq!(sm.acked(5), Err(TooHigh));
        sm.written(out(3));
        let (acked, rest) = sm.resumed(2);
        assert_eq!(acked, vec![out(2)]);
        assert_eq!(rest, vec![out(3)]);
        sm.written(out(3));
        assert_eq!(sm.acked(3).unwrap(), vec![out(3)]);
    }

    #[test]
    fn counters_wrap_and_restart_hands_back_everything() {
        let mut sm = SmClient::default();
        sm.enabling();
        sm.enabled(Some("id".into()));
        let (_, _) = sm.resumed(u32::MAX);
        sm.written(out(1));
        sm.written(out(2));
        assert_eq!(sm.acked(0).unwrap(), vec![out(1)]);
        assert_eq!(sm.restart(), vec![out(2)]);
        assert_eq!(sm.resumption(), None);
    }

    #[test]
    fn a_saved_session_reports_its_h_and_counts_on() {
        let mut sm = SmClient::saved("id".into(), 7);
        assert!(sm.tracking());
        sm.received();
        assert_eq!(sm.resumption(), Some(("id".into(), 8)));
        let (acked, rest) = sm.resumed(3);
        assert!(acked.is_empty() && rest.is_empty());
        sm.written(out(1));
        assert_eq!(sm.acked(4).unwrap(), vec![out(1)]);
    }
}
