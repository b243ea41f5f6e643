//! One client XMPP stream as a sans-IO state machine, [`ClientSession`].
//!
//! Inputs, each with the current time where it matters: bytes from the
//! client ([`ClientSession::on_data`]), frames from the core
//! ([`ClientSession::on_core`]), the core's offer
//! ([`ClientSession::on_core_offer`]), timers
//! ([`ClientSession::handle_timeout`] at [`ClientSession::poll_timeout`]),
//! the driver ending the stream ([`ClientSession::close`],
//! [`ClientSession::on_closed`]). Outputs: the [`SessionAction`]s of the
//! batch ([`ClientSession::poll_actions`]) and whether to read from the
//! client now ([`ClientSession::wants_read`]). Randomness (stream ids)
//! comes from a generator the driver seeds.
//!
//! The CM negotiates the stream itself (`features`), relays SASL
//! (`sasl`), in-band registration (`registration`) and resource binding
//! or resumption (`binding`) to the core — or, with SASL2 (XEP-0388), one
//! `<authenticate/>` carrying an inline resumption and a Bind2 binding with
//! SM enable and carbons (`inline`), answered by one `<success/>` — then stamps and relays stanzas
//! (`relay`) and keeps its share of stream management and client state
//! indication (`stream_management`). It polices the stream: the framer's
//! limits, a read budget ([`xmpp_stream::pacing::TokenBucket`]) and a deadline to authenticate
//! and bind.
//!
//! On a QUIC connection accepted with 0-RTT, a session starts *early*
//! ([`ClientSession::with_early_data`]): until the driver reports the
//! handshake complete ([`ClientSession::on_handshake_complete`]), early data
//! may be a replay, so only the stream header and one SASL2
//! `<authenticate/>` with a FAST token (`HT-SHA-256-NONE`) are acted on
//! (marked `early` for the core, which then requires a FAST count);
//! anything else waits (docs/design/sasl2-fast.md §6.2).

mod binding;
mod features;
mod inline;
mod output;
mod registration;
mod relay;
mod report;
mod sasl;
mod stream_management;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cm_protocol::{Frame, SessionId};
use rand::rngs::SmallRng;
use xmpp_stream::framer::{FrameEvent, Framer, Limits};
use xmpp_stream::pacing::TokenBucket;
use xmpp_stream::stanza::inspect;
use xmpp_stream::{StanzaHeader, StanzaKind, StreamCondition, StreamHeader, TopLevel, ns, stream};

pub use features::CoreOffer;
pub use output::Framing;
pub use report::{EndReason, LoginResult, Refusal, SessionReport};
pub use stream_management::SmCounts;

use binding::{Binding, Resumed};
use inline::Inline;
use output::{Output, StreamError};
use registration::InBandRegistration;
use relay::AnnouncedPresence;
use sasl::{Profile, SaslRelay};
use stream_management::StreamManagement;

/// A stream must be authenticated and bound within this, or it is closed
/// (keep-alives would otherwise hold an idle, unauthenticated stream forever).
pub const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(60);

/// What every session of a CM shares.
#[derive(Clone, Debug)]
pub struct SessionSettings {
    /// Domain served.
    pub domain: String,
    /// Stream limits.
    pub limits: Limits,
    /// Sustained bytes per second read from one stream (flood shaping).
    pub read_rate: u64,
    /// Bytes one stream may send at once before shaping applies.
    pub read_burst: u64,
}

/// What a session started early holds until its transport's handshake
/// completes (see [`ClientSession::with_early_data`]).
#[derive(Debug, Default)]
struct Early {
    /// The one `<authenticate/>` early data may carry was taken.
    authenticated: bool,
    /// What came that early data may not do (any element but that
    /// `<authenticate/>`, or the stream's end): handled first once the
    /// handshake completes. Parsing stops behind it.
    held: Option<FrameEvent>,
}

impl Early {
    /// Whether parsing waits for the handshake.
    fn waits(&self) -> bool {
        self.authenticated || self.held.is_some()
    }
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionAction {
    /// Write bytes to the client.
    Write(Bytes),
    /// Send a frame to the core.
    ToCore(Frame),
    /// What the registry re-announces for this session changed.
    Announcement(AnnouncementUpdate),
    /// Close the client stream after the writes before it; who ended it
    /// (a [`SessionReport::Ended`] says why, just before).
    Close(ClosedBy),
    /// Something for the CM's metrics to count.
    Report(SessionReport),
}

/// Who ended a client stream ([`SessionAction::Close`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClosedBy {
    /// The client, with `</stream:stream>` (`<close/>` on WebSocket),
    /// answered in kind: it is done with the stream, and its session
    /// ended cleanly (not resumable, XEP-0198 §5).
    Client,
    /// The CM, with a stream error.
    Server,
}

/// A change to what the session registry re-announces for a session when a
/// core connection comes back (an `Announce` frame). Each one holds real
/// values, never placeholders a later update fills in: the registry may
/// announce the session between any two of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnnouncementUpdate {
    /// Bound to a full JID: deliverable and announced from now on, as this
    /// says (after a bind: unavailable, priority 0, no SM; after a
    /// resumption: the presence and stream management it resumed).
    Bound {
        /// The full JID.
        jid: String,
        /// The client's broadcast presence is available.
        available: bool,
        /// Its priority.
        priority: i8,
        /// Stream management, if on.
        sm: Option<SmAnnouncement>,
    },
    /// The client's broadcast presence changed.
    Presence {
        /// It sent available presence.
        available: bool,
        /// Its priority.
        priority: i8,
    },
    /// Stream management was enabled.
    StreamManagement(SmAnnouncement),
    /// The client asked the core for stream management (true, before the
    /// request leaves) or gave up asking (false: an inline Bind2 refused);
    /// a session re-announced while it waits for the core's answer is
    /// kicked (see `sessions::announce`).
    SmEnabling(bool),
    /// The SM counters now (at most once per batch, before the batch's
    /// first stanza to the core; only while stream management is on or
    /// being enabled).
    SmCounters(SmCounts),
}

/// What the registry announces of a session's stream management.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmAnnouncement {
    /// SM id (empty: not resumable).
    pub id: String,
    /// Resumption time granted, seconds.
    pub max: u32,
    /// The counters when it was enabled or resumed.
    pub counts: SmCounts,
}

/// Where the stream stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for a stream header.
    Header { authenticated: bool },
    /// The header is answered; the features wait for the core's offer.
    /// What the client sends meanwhile is buffered unparsed, up to one
    /// stanza's worth (reading goes on so a client that leaves is noticed).
    AwaitingOffer,
    /// Before authentication: SASL (or registration).
    Sasl,
    /// SASL2 succeeded at the core; its inline requests (resumption,
    /// Bind2, SM enable) are at the core and the `<success/>` waits for
    /// their answers. What the client sends meanwhile waits unparsed, as
    /// in `AwaitingOffer`.
    Inline,
    /// Authenticated: binding or resumption.
    Bind,
    /// Bound: stanzas flow.
    Bound,
    /// Closed.
    Closed,
}

/// The state of one client stream (see the module docs).
pub struct ClientSession {
    sid: SessionId,
    settings: Arc<SessionSettings>,
    /// What the core offers, once the CM heard it.
    offer: Option<Arc<CoreOffer>>,
    framer: Framer,
    state: State,
    /// Stream ids.
    rng: SmallRng,
    /// The user the core authenticated.
    user: Option<String>,
    /// The bound full JID.
    jid: Option<String>,
    sasl: SaslRelay,
    /// The inline requests of a SASL2 `<authenticate/>`, until its
    /// `<success/>` is written.
    inline: Option<Inline>,
    registration: InBandRegistration,
    binding: Binding,
    presence: AnnouncedPresence,
    sm: StreamManagement,
    read_budget: TokenBucket,
    /// Reading waits until then (the read budget is spent).
    read_paused_until: Option<Instant>,
    /// Authenticate and bind before then.
    negotiation_deadline: Option<Instant>,
    /// The client closed its stream itself.
    closed_by_client: bool,
    /// The connection's `tls-exporter` channel binding, if known (sent to
    /// the core with SASL2 attempts, for FAST's `HT-SHA-256-EXPR`).
    tls_exporter: Option<Bytes>,
    /// The transport accepts 0-RTT: the FAST offer says `tls-0rtt`.
    zero_rtt: bool,
    /// Set while the transport's handshake is not complete (0-RTT).
    early: Option<Box<Early>>,
    /// Frames from the core came in this batch (ask for an ack after it).
    core_batch: bool,
    out: Output,
}

impl ClientSession {
    /// A new stream on session id `sid`, started at `now`. `offer` is what
    /// the core offers, if the CM has heard it yet (else see
    /// [`ClientSession::on_core_offer`]); `rng` makes the stream ids.
    pub fn new(
        sid: SessionId,
        settings: Arc<SessionSettings>,
        framing: Framing,
        offer: Option<Arc<CoreOffer>>,
        rng: SmallRng,
        now: Instant,
    ) -> Self {
        Self {
            sid,
            framer: Framer::new(settings.limits),
            read_budget: TokenBucket::new(settings.read_rate, settings.read_burst, now),
            settings,
            offer,
            state: State::Header {
                authenticated: false,
            },
            rng,
            user: None,
            jid: None,
            sasl: SaslRelay::default(),
            inline: None,
            registration: InBandRegistration::default(),
            binding: Binding::default(),
            presence: AnnouncedPresence::default(),
            sm: StreamManagement::default(),
            read_paused_until: None,
            negotiation_deadline: Some(now + NEGOTIATION_TIMEOUT),
            closed_by_client: false,
            tls_exporter: None,
            zero_rtt: false,
            early: None,
            core_batch: false,
            out: Output::new(framing),
        }
    }

    /// The client connected from `ip` (sent to the core with SASL attempts).
    pub fn with_client_ip(mut self, ip: std::net::IpAddr) -> Self {
        self.sasl.set_client_ip(ip);
        self
    }

    /// The connection's `tls-exporter` channel binding (RFC 9266), as the
    /// driver that terminates TLS computed it.
    pub fn with_tls_exporter(mut self, exporter: Bytes) -> Self {
        self.tls_exporter = Some(exporter);
        self
    }

    /// The connection's transport accepts 0-RTT (QUIC on a CM with
    /// `zero_rtt` on): the FAST offer says `tls-0rtt='true'`, so a client
    /// may use its token in early data next time.
    pub fn with_zero_rtt(mut self) -> Self {
        self.zero_rtt = true;
        self
    }

    /// The transport's handshake is not complete yet (a QUIC connection
    /// accepted with 0-RTT; implies [`ClientSession::with_zero_rtt`]): what
    /// the client sends may be replayed early data. Until
    /// [`ClientSession::on_handshake_complete`] only the stream header and
    /// one SASL2 `<authenticate/>` with `HT-SHA-256-NONE` (a FAST token,
    /// counted) are handled (sent to the core marked `early`, without
    /// channel binding, so only `HT-SHA-256-NONE` is offered); anything
    /// else (another mechanism too) waits unparsed.
    pub fn with_early_data(mut self) -> Self {
        self.zero_rtt = true;
        self.early = Some(Box::default());
        self
    }

    /// The transport's handshake completed, with the connection's
    /// `tls-exporter` channel binding if the driver computed it: what the
    /// client sent beyond the early rule is handled now.
    pub fn on_handshake_complete(&mut self, tls_exporter: Option<Bytes>) {
        if self.jid.is_none() && tls_exporter.is_some() {
            // (only authentication uses it: a bound session needs none)
            self.tls_exporter = tls_exporter;
        }
        let Some(early) = self.early.take() else {
            return;
        };
        if self.state == State::Closed {
            return;
        }
        // (held only before any authentication, when nothing else pauses
        // parsing: it is handled as it would have been)
        if let Some(event) = early.held {
            self.on_event(Ok(Some(event)));
        }
        self.process_events();
    }

    /// Bytes arrived from the client at `now`.
    pub fn on_data(&mut self, now: Instant, data: &[u8]) {
        if self.state == State::Closed {
            return;
        }
        let wait = self.read_budget.take(data.len(), now);
        if !wait.is_zero() {
            self.read_paused_until = Some(now + wait);
            self.out
                .push(SessionAction::Report(SessionReport::ReadPaused));
        }
        self.framer.push(data);
        self.process_events();
    }

    /// A frame from the core for this session.
    pub fn on_core(&mut self, frame: Frame) {
        if self.state == State::Closed {
            return;
        }
        self.core_batch = true;
        let was_inline = self.parsing_paused();
        let result = match (self.state, frame) {
            (
                _,
                frame @ (Frame::AuthChallenge { .. }
                | Frame::AuthSuccess { .. }
                | Frame::AuthFailure { .. }),
            ) => self
                .sasl
                .on_core(frame, &mut self.out)
                .map(|authenticated| match authenticated {
                    Some(a) if a.profile == Profile::Sasl2 => self.sasl2_succeeded(a),
                    Some(a) => self.authenticated(a.user),
                    None => {}
                }),
            (State::Inline, frame) => {
                self.on_inline_answer(frame);
                Ok(())
            }
            (_, Frame::RegisterResult { error, .. }) => {
                self.registration.on_result(error, &mut self.out);
                Ok(())
            }
            (State::Bind, Frame::BindResult { iq_id, result, .. }) => {
                let user = self.user.as_deref().unwrap_or_default();
                let bound = self.binding.on_bind_result(
                    iq_id,
                    result,
                    &self.settings.domain,
                    user,
                    &mut self.out,
                );
                if let Some(jid) = bound {
                    self.bound(jid);
                }
                Ok(())
            }
            (State::Bind, Frame::Resumed { result, .. }) => {
                if let Some(resumed) = self.binding.on_resumed(result, &mut self.out) {
                    self.resumed(resumed);
                }
                Ok(())
            }
            (State::Bound, Frame::Deliver { payload, .. }) => {
                self.sm.on_deliver(self.sid, payload, &mut self.out);
                Ok(())
            }
            (State::Bound, Frame::SmEnabled { id, max, .. }) => {
                self.sm.on_enabled(id, max, &mut self.out);
                Ok(())
            }
            (State::Bound, Frame::Handled { h, .. }) => {
                self.sm.on_handled(h, &mut self.out);
                Ok(())
            }
            (_, Frame::Kick { condition, .. }) => {
                Err(StreamError::bare(StreamCondition::from_name(&condition)))
            }
            (state, other) => {
                tracing::debug!(
                    sid = self.sid,
                    ?state,
                    frame = other.name(),
                    "frame ignored in this state"
                );
                Ok(())
            }
        };
        if let Err(e) = result {
            self.close_with(e);
        }
        if was_inline && !self.parsing_paused() && self.state != State::Closed {
            // what the client sent behind its `<authenticate/>`
            self.process_events();
        }
    }

    /// The CM heard what the core offers: features held for it go out,
    /// and the stream goes on.
    pub fn on_core_offer(&mut self, offer: Arc<CoreOffer>) {
        let waiting = self.state == State::AwaitingOffer;
        if waiting {
            self.state = State::Sasl;
            let fast = features::fast_feature(&offer, self.tls_exporter.is_some(), self.zero_rtt);
            self.out
                .write_features(features::before_auth(&offer, &fast));
        }
        self.offer = Some(offer);
        if waiting {
            // what the client sent meanwhile
            self.process_events();
        }
    }

    /// Timers due at `now` (see [`ClientSession::poll_timeout`]): reading
    /// resumes once the read budget allows; a stream not bound by its
    /// deadline is closed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.read_paused_until.is_some_and(|t| t <= now) {
            self.read_paused_until = None;
        }
        if self.state == State::Closed || self.negotiation_deadline.is_none_or(|t| t > now) {
            return;
        }
        self.negotiation_deadline = None;
        let error = if self.state == State::AwaitingOffer {
            // The client did nothing wrong: the CM never heard the core.
            StreamError::new(
                StreamCondition::RemoteConnectionFailed,
                "the service is not reachable; try again later",
            )
        } else {
            StreamError::new(
                StreamCondition::ConnectionTimeout,
                "authenticate and bind in time",
            )
            .refusing(Refusal::NegotiationTimeout)
        };
        self.close_with(error);
    }

    /// When [`ClientSession::handle_timeout`] is due next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        match (self.negotiation_deadline, self.read_paused_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether to read from the client now: not while the read budget is
    /// spent, and while the features wait for the core only until one
    /// stanza's worth is buffered (reading on lets the driver notice a
    /// client that leaves; nothing is parsed until the offer comes).
    pub fn wants_read(&self) -> bool {
        self.read_paused_until.is_none()
            && match self.state {
                State::Closed => false,
                _ if self.parsing_paused() => {
                    self.framer.buffered() < self.settings.limits.max_stanza_bytes
                }
                _ => true,
            }
    }

    /// Whether the session waits for [`ClientSession::on_core_offer`].
    pub fn awaits_core_offer(&self) -> bool {
        self.state == State::AwaitingOffer
    }

    /// Ends the stream with a stream error (e.g. the CM is shutting down or
    /// the client cannot keep up).
    pub fn close(&mut self, condition: StreamCondition, text: Option<&'static str>) {
        if self.state != State::Closed {
            self.close_with(StreamError {
                condition,
                text: text.map(Into::into),
                refusal: None,
            });
        }
    }

    /// The client's stream is gone: the core learns it (a `SessionEnd` in
    /// the next actions) if it knows anything of this session.
    pub fn on_closed(&mut self) {
        let had_core_state = self.user.is_some()
            || self.jid.is_some()
            || self.sasl.is_running()
            || self.binding.is_resuming();
        self.state = State::Closed;
        if had_core_state {
            self.out.send(Frame::SessionEnd {
                sid: self.sid,
                jid: self.jid.clone(),
                clean: self.closed_by_client,
            });
        }
    }

    /// Ends the batch: what to do, in order. After frames from the core
    /// this asks the client for an acknowledgement (once per burst), and
    /// any change to what the registry re-announces comes last, once —
    /// but the SM counters, which come before the batch's first stanza
    /// to the core: a link that dies with stanzas on it must never be
    /// re-announced with counts that leave them out (they would be lost
    /// unnoticed); counts ahead of the frames only kick the session to
    /// resume.
    pub fn poll_actions(&mut self) -> Vec<SessionAction> {
        if std::mem::take(&mut self.core_batch) && self.state == State::Bound {
            self.sm.request_ack(&mut self.out);
        }
        if let Some((available, priority)) = self.presence.take_change() {
            self.out
                .push(SessionAction::Announcement(AnnouncementUpdate::Presence {
                    available,
                    priority,
                }));
        }
        let mut actions = self.out.take();
        if let Some(counts) = self.sm.take_changed_counts() {
            // (after an announcement that records counts of its own, which
            // must not overwrite these)
            let after = actions
                .iter()
                .rposition(|a| {
                    matches!(
                        a,
                        SessionAction::Announcement(
                            AnnouncementUpdate::Bound { .. }
                                | AnnouncementUpdate::StreamManagement(_)
                        )
                    )
                })
                .map_or(0, |i| i + 1);
            let first_stanza = actions[after..]
                .iter()
                .position(|a| matches!(a, SessionAction::ToCore(Frame::Stanza { .. })))
                .map_or(actions.len(), |p| after + p);
            actions.insert(
                first_stanza,
                SessionAction::Announcement(AnnouncementUpdate::SmCounters(counts)),
            );
        }
        actions
    }

    /// Releases parser memory while idle.
    pub fn shrink(&mut self) {
        self.framer.shrink();
    }

    /// Whether what the client sends waits unparsed: for the core's offer,
    /// for a SASL2 exchange's answer at the core (pipelined data behind an
    /// `<authenticate/>` is read the same whatever the core's latency),
    /// or for its inline requests; or, before the transport's handshake
    /// completes, for that.
    fn parsing_paused(&self) -> bool {
        if self.early.as_ref().is_some_and(|e| e.waits()) {
            return true;
        }
        match self.state {
            State::AwaitingOffer | State::Inline => true,
            State::Sasl => self.sasl.sasl2_awaiting_core(),
            _ => false,
        }
    }

    /// Runs the framer over what it holds, element by element.
    fn process_events(&mut self) {
        while self.state != State::Closed && !self.parsing_paused() {
            let event = self.framer.next_event();
            if matches!(event, Ok(None)) {
                break;
            }
            self.on_event(event);
        }
    }

    /// One event of the framer.
    fn on_event(&mut self, event: Result<Option<FrameEvent>, xmpp_stream::framer::FramingError>) {
        match event {
            Ok(None) => {}
            Ok(Some(FrameEvent::Open(header))) => self.on_open(header),
            Ok(Some(FrameEvent::Element(raw))) => self.on_element(raw),
            Ok(Some(FrameEvent::Close)) => {
                if let Some(early) = &mut self.early {
                    early.held = Some(FrameEvent::Close);
                    return;
                }
                self.closed_by_client = true;
                self.out.write_close();
                self.finish(EndReason::ClientClosed);
            }
            Err(e) => self.close_with(e.into()),
        }
    }

    fn on_open(&mut self, header: StreamHeader) {
        let State::Header { authenticated } = self.state else {
            return self.close_with(
                StreamError::new(StreamCondition::NotWellFormed, "unexpected stream header")
                    .refusing(Refusal::Malformed),
            );
        };
        let domain = &self.settings.domain;
        let opening = features::header(
            &mut self.rng,
            domain,
            self.out.framing(),
            header.lang.as_deref(),
        );
        if !header
            .to
            .as_deref()
            .is_some_and(|to| to.eq_ignore_ascii_case(domain))
        {
            self.out.write(opening);
            return self.close_with(
                StreamError::new(
                    StreamCondition::HostUnknown,
                    "this server does not serve that domain",
                )
                .refusing(Refusal::HostUnknown),
            );
        }
        let features = if authenticated {
            self.state = State::Bind;
            Some(features::after_auth(self.offer.as_deref()))
        } else if let Some(offer) = &self.offer {
            self.state = State::Sasl;
            let fast = features::fast_feature(offer, self.tls_exporter.is_some(), self.zero_rtt);
            Some(features::before_auth(offer, &fast))
        } else {
            // The core's Welcome has not come yet: its mechanisms, and
            // whether it offers registration, are unknown.
            self.state = State::AwaitingOffer;
            None
        };
        self.out.write_opening(opening, features);
    }

    fn on_element(&mut self, raw: Bytes) {
        let top = match inspect(&raw) {
            Ok(t) => t,
            Err(e) => return self.close_with(e.into()),
        };
        let authenticate = top.ns == ns::SASL2 && top.name == "authenticate";
        if let Some(early) = &mut self.early {
            // Early data: one counted FAST `<authenticate/>`, nothing else
            // (§6.2). (A password mechanism would be replayable with no
            // count to stop it: it waits for the handshake too.)
            let fast_none = self.offer.as_ref().is_some_and(|o| o.sasl2 && o.fast)
                && top.attr("mechanism") == Some(features::HT_SHA_256_NONE);
            if !(authenticate && fast_none && self.state == State::Sasl && !early.authenticated) {
                early.held = Some(FrameEvent::Element(raw));
                return;
            }
            early.authenticated = true;
        }
        let sid = self.sid;
        let iq = top.stanza_kind() == Some(StanzaKind::Iq);
        let result = match self.state {
            State::Sasl if authenticate => self.on_authenticate(&raw),
            State::Sasl if top.ns == ns::SASL || top.ns == ns::SASL2 => match &self.offer {
                Some(offer) => self.sasl.on_element(sid, offer, &raw, &top, &mut self.out),
                None => Ok(()),
            },
            State::Sasl
                if iq
                    && self.sasl.is_idle()
                    && self.offer.as_ref().is_some_and(|o| o.registration) =>
            {
                self.registration.on_iq(sid, &raw, &mut self.out)
            }
            State::Bind if iq && self.binding.is_idle() => {
                let user = self.user.as_deref().unwrap_or_default();
                self.binding.on_iq(sid, user, &raw, &mut self.out)
            }
            State::Bind if top.ns == ns::SM && top.name == "resume" && self.binding.is_idle() => {
                let user = self.user.as_deref().unwrap_or_default();
                self.binding.on_resume(sid, user, &top, &mut self.out);
                Ok(())
            }
            State::Bind if top.ns == ns::SM && top.name == "enable" && self.binding.is_idle() => {
                // XEP-0198 §3: only after binding.
                self.out
                    .write(stream::sm_failed("unexpected-request", None));
                Ok(())
            }
            State::Bound => match top.header() {
                Some(header) => {
                    self.relay(&raw, &top, header);
                    Ok(())
                }
                None => self.sm.on_nonza(sid, &top, &mut self.out),
            },
            State::Sasl | State::Bind => Err(StreamError::new(
                StreamCondition::NotAuthorized,
                "authenticate and bind first",
            )
            .refusing(Refusal::Unauthenticated)),
            State::Header { .. } | State::AwaitingOffer | State::Inline | State::Closed => Ok(()),
        };
        if let Err(e) = result {
            self.close_with(e);
        }
    }

    /// A stanza from the bound client goes to the core.
    fn relay(&mut self, raw: &[u8], top: &TopLevel, header: StanzaHeader) {
        let Some(from) = &self.jid else { return };
        self.presence.observe(&header, raw);
        self.sm.count_in();
        let frame = relay::stanza_frame(self.sid, raw, top, header, from, &self.settings.domain);
        self.out.send(frame);
    }

    /// SASL succeeded: the client restarts the stream.
    fn authenticated(&mut self, user: String) {
        self.user = Some(user);
        self.framer.restart();
        self.state = State::Header {
            authenticated: true,
        };
    }

    /// Bound by a bind: unavailable, priority 0, no stream management.
    fn bound(&mut self, jid: String) {
        self.bound_as(jid, false, 0, None);
    }

    /// Bound by a resumption: the presence and stream management of the
    /// resumed session, announced in one update.
    fn resumed(&mut self, resumed: Resumed) {
        let Resumed {
            previd,
            client_h,
            resumption: r,
        } = resumed;
        self.presence.resumed(r.available, r.priority);
        let sm = self.sm.resumed(previd, r.max, r.h, client_h);
        self.bound_as(r.jid, r.available, r.priority, Some(sm));
    }

    /// Bound to `jid`: stanzas flow, and the registry learns the binding
    /// whole.
    fn bound_as(&mut self, jid: String, available: bool, priority: i8, sm: Option<SmAnnouncement>) {
        self.state = State::Bound;
        // (only authentication uses it: an idle session holds no more)
        self.tls_exporter = None;
        self.negotiation_deadline = None;
        self.out
            .push(SessionAction::Announcement(AnnouncementUpdate::Bound {
                jid: jid.clone(),
                available,
                priority,
                sm,
            }));
        self.jid = Some(jid);
    }

    fn close_with(&mut self, error: StreamError) {
        tracing::debug!(sid = self.sid, condition = %error.condition, text = error.text.as_deref(), "closing client stream");
        if matches!(self.state, State::Header { .. }) && !self.out.has_writes() {
            // A stream error needs an open stream: open one first (RFC 6120 §4.9.1.1).
            let header = features::header(
                &mut self.rng,
                &self.settings.domain,
                self.out.framing(),
                None,
            );
            self.out.write(header);
        }
        self.out.write_stream_error(&error);
        self.finish(EndReason::StreamError {
            condition: error.condition,
            refusal: error.refusal,
        });
    }

    /// Ends the stream, reporting why.
    fn finish(&mut self, reason: EndReason) {
        self.state = State::Closed;
        let by = match reason {
            EndReason::ClientClosed => ClosedBy::Client,
            EndReason::StreamError { .. } => ClosedBy::Server,
        };
        self.out
            .push(SessionAction::Report(SessionReport::Ended(reason)));
        self.out.push(SessionAction::Close(by));
    }
}
