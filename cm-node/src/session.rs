//! One client XMPP stream as a sans-IO state machine.
//!
//! Events in: bytes from the client ([`ClientSession::on_data`]), frames from
//! the core ([`ClientSession::on_core`]), the client going away
//! ([`ClientSession::on_closed`]). Actions out: bytes to write, frames to
//! send to the core, close. The CM negotiates the stream itself (header,
//! features), relays SASL and resource binding to the core, and afterwards
//! stamps `from` on every stanza and forwards it with its routing header.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use cm_protocol::{Frame, Kind, RouteHeader, SessionId};
use xmpp_stream::element::Element;
use xmpp_stream::framer::{FrameEvent, Framer, FramingError, Limits};
use xmpp_stream::stanza::{StanzaKind, inspect, stamp_from};
use xmpp_stream::{StreamCondition, ns, stream};

use crate::stream_management::{CsiHold, SmCounters, SmState};

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionAction {
    /// Write bytes to the client.
    Write(Bytes),
    /// Send a frame to the core.
    ToCore(Frame),
    /// The session is bound to this full JID (register it for delivery).
    Bound(String),
    /// Close the client stream after the writes before it.
    Close,
    /// Stream management is on: the registry re-announces these counters.
    Sm(SmShare),
}

/// What the registry keeps of a session's stream management.
#[derive(Clone, Debug)]
pub struct SmShare {
    /// SM id (empty: not resumable).
    pub id: String,
    /// Resumption time granted.
    pub max: u32,
    /// Live counters.
    pub counters: Arc<SmCounters>,
}

impl PartialEq for SmShare {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.max == other.max && Arc::ptr_eq(&self.counters, &other.counters)
    }
}

impl Eq for SmShare {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for a stream header.
    Header { authenticated: bool },
    /// Waiting for `<auth/>`.
    Sasl,
    /// `<auth/>` came without an initial response; an empty challenge was sent.
    SaslInitial,
    /// A SASL exchange is in progress at the core.
    SaslRunning,
    /// Authenticated; waiting for the bind IQ.
    Bind,
    /// Bind sent to the core.
    Binding,
    /// `<resume/>` sent to the core.
    Resuming,
    /// Bound: stanzas flow.
    Bound,
    /// Closed.
    Closed,
}

/// How XML is framed on the transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Framing {
    /// One XML stream (TCP, TLS, a QUIC stream): `<stream:stream>` header.
    #[default]
    Stream,
    /// RFC 7395 XMPP over WebSocket: `<open/>`, `<close/>`, and every
    /// element a complete, namespace-declared message of its own.
    WebSocket,
}

/// Most failed SASL attempts before the stream is closed.
const MAX_AUTH_FAILURES: u32 = 3;

/// The state of one client stream (see the module docs).
pub struct ClientSession {
    sid: SessionId,
    domain: String,
    mechanisms: Vec<String>,
    framer: Framer,
    state: State,
    user: Option<String>,
    jid: Option<String>,
    /// Id of the bind IQ being answered by the core.
    bind_id: String,
    /// Mechanism chosen by an `<auth/>` that had no initial response.
    mechanism: String,
    /// A SASL frame was sent to the core and its answer is due.
    awaiting_core: bool,
    /// The client aborted while an answer was due: drop that answer.
    drop_next_answer: bool,
    auth_failures: u32,
    /// Whether the client sent available presence (for re-announcing).
    pub available: bool,
    /// Presence priority (for re-announcing).
    pub priority: i8,
    /// Stream management, once the client enabled it.
    sm: Option<SmState>,
    /// Client state indication.
    csi: CsiHold,
    /// `previd` and `h` of a `<resume/>` at the core.
    resuming: Option<(String, u32)>,
    /// The client closed its stream itself.
    closed_by_client: bool,
    /// In-band registration (XEP-0077) is offered.
    registration: bool,
    /// Id of the registration IQ the core is answering.
    register_id: Option<String>,
    /// Registrations tried on this stream.
    registrations: u32,
    framing: Framing,
    out: Vec<SessionAction>,
}

impl ClientSession {
    /// A new stream on session id `sid` for `domain`.
    pub fn new(sid: SessionId, domain: &str, mechanisms: Vec<String>, limits: Limits) -> Self {
        Self {
            sid,
            domain: domain.to_owned(),
            mechanisms,
            framer: Framer::new(limits),
            state: State::Header {
                authenticated: false,
            },
            user: None,
            jid: None,
            bind_id: String::new(),
            mechanism: String::new(),
            awaiting_core: false,
            drop_next_answer: false,
            auth_failures: 0,
            available: false,
            priority: 0,
            sm: None,
            csi: CsiHold::default(),
            resuming: None,
            closed_by_client: false,
            registration: false,
            register_id: None,
            registrations: 0,
            framing: Framing::Stream,
            out: Vec::new(),
        }
    }

    /// Offers in-band registration (XEP-0077) before authentication.
    pub fn with_registration(mut self, on: bool) -> Self {
        self.registration = on;
        self
    }

    /// Uses another framing (WebSocket).
    pub fn with_framing(mut self, framing: Framing) -> Self {
        self.framing = framing;
        self
    }

    /// The bound full JID.
    pub fn jid(&self) -> Option<&str> {
        self.jid.as_deref()
    }

    /// Whether the stream has been closed.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Releases parser memory while idle.
    pub fn shrink(&mut self) {
        self.framer.shrink();
    }

    /// After a burst of writes: asks the client to acknowledge them
    /// (XEP-0198 `<r/>`), once per burst.
    pub fn request_ack(&mut self) -> Vec<SessionAction> {
        if self.state == State::Bound && self.sm.as_mut().is_some_and(SmState::want_ack) {
            self.write(stream::sm_element("r", &[]));
        }
        std::mem::take(&mut self.out)
    }

    /// Bytes arrived from the client.
    pub fn on_data(&mut self, data: &[u8]) -> Vec<SessionAction> {
        if self.state == State::Closed {
            return Vec::new();
        }
        self.framer.push(data);
        loop {
            match self.framer.next_event() {
                Ok(None) => break,
                Ok(Some(FrameEvent::Open(header))) => self.on_open(header),
                Ok(Some(FrameEvent::Element(raw))) => self.on_element(raw),
                Ok(Some(FrameEvent::Close)) => {
                    self.closed_by_client = true;
                    self.write_close();
                    self.finish();
                }
                Err(e) => self.fail(e),
            }
            if self.state == State::Closed {
                break;
            }
        }
        std::mem::take(&mut self.out)
    }

    /// A frame from the core for this session.
    pub fn on_core(&mut self, frame: Frame) -> Vec<SessionAction> {
        if self.state == State::Closed {
            return Vec::new();
        }
        if matches!(
            frame,
            Frame::AuthChallenge { .. } | Frame::AuthSuccess { .. } | Frame::AuthFailure { .. }
        ) {
            self.awaiting_core = false;
            if std::mem::take(&mut self.drop_next_answer) {
                return Vec::new();
            }
        }
        if let Frame::RegisterResult { error, .. } = &frame {
            let Some(id) = self.register_id.take() else {
                return Vec::new();
            };
            match error {
                None => {
                    let ok = Element::new("iq", ns::CLIENT)
                        .with_attr("type", "result")
                        .with_attr("id", id);
                    self.write_stanza_bytes(Bytes::from(ok.to_bytes(ns::CLIENT)));
                }
                Some(condition) => self.register_error(&id, condition),
            }
            return std::mem::take(&mut self.out);
        }
        match (self.state, frame) {
            (State::Bound, Frame::Deliver { payload, .. }) => self.on_deliver(payload),
            (State::Bound, Frame::SmEnabled { id, max, .. }) => {
                if self.sm.is_some() {
                    // Presence held before numbering began is written before
                    // `<enabled/>`: neither side counts it.
                    for (_, payload) in self.csi.take() {
                        self.write_stanza_bytes(payload);
                    }
                }
                if let Some(sm) = &mut self.sm {
                    sm.enabled(id.clone(), max);
                    let max_s = max.to_string();
                    let mut attrs = vec![];
                    if !id.is_empty() {
                        attrs = vec![("id", id.as_str()), ("resume", "true"), ("max", &max_s)];
                    }
                    self.write(stream::sm_element("enabled", &attrs));
                    self.share_sm();
                }
            }
            (State::Bound, Frame::Handled { h, .. }) => {
                self.write(stream::sm_element("a", &[("h", &h.to_string())]));
            }
            (State::Resuming, Frame::Resumed { result, .. }) => self.resumed(result),
            (State::SaslRunning, Frame::AuthChallenge { data, .. }) => {
                self.write(stream::sasl_element(
                    "challenge",
                    None,
                    Some(&B64.encode(&data)),
                ));
            }
            (State::SaslRunning, Frame::AuthSuccess { data, user, .. }) => {
                let data = (!data.is_empty()).then(|| B64.encode(&data));
                self.write(stream::sasl_element("success", None, data.as_deref()));
                self.user = Some(user);
                self.framer.restart();
                self.state = State::Header {
                    authenticated: true,
                };
            }
            (State::SaslRunning, Frame::AuthFailure { condition, .. }) => {
                self.write(stream::sasl_failure(&condition, None));
                self.auth_failures += 1;
                self.state = State::Sasl;
                if self.auth_failures >= MAX_AUTH_FAILURES {
                    self.close_with(
                        StreamCondition::PolicyViolation,
                        Some("too many failed authentication attempts"),
                    );
                }
            }
            (State::Binding, Frame::BindResult { iq_id, result, .. }) => {
                let iq_id = if iq_id.is_empty() {
                    std::mem::take(&mut self.bind_id)
                } else {
                    iq_id
                };
                self.bind_result(iq_id, result)
            }
            (_, Frame::Kick { condition, .. }) => {
                self.close_with(StreamCondition::from_name(&condition), None);
            }
            (state, other) => {
                tracing::debug!(
                    sid = self.sid,
                    ?state,
                    frame = other.name(),
                    "frame ignored in this state"
                );
            }
        }
        std::mem::take(&mut self.out)
    }

    fn on_deliver(&mut self, payload: Bytes) {
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
                self.out.push(SessionAction::ToCore(Frame::Skipped {
                    sid: self.sid,
                    seqs: vec![replaced],
                }));
            }
            if outcome.full {
                self.flush_held();
            }
            return;
        }
        self.write_stanza(payload, seq.is_some());
    }

    /// Writes a delivery; `numbered` if the core counts it (SM numbering on).
    fn write_stanza(&mut self, payload: Bytes, numbered: bool) {
        if numbered && let Some(sm) = &self.sm {
            sm.count_out();
        }
        self.write_stanza_bytes(payload);
    }

    fn flush_held(&mut self) {
        for (seq, payload) in self.csi.take() {
            self.write_stanza(payload, seq.is_some());
        }
    }

    fn share_sm(&mut self) {
        if let Some(sm) = &self.sm {
            self.out.push(SessionAction::Sm(SmShare {
                id: sm.id.clone(),
                max: sm.max,
                counters: sm.counters.clone(),
            }));
        }
    }

    fn resumed(&mut self, result: Result<cm_protocol::Resumption, String>) {
        let Some((previd, client_h)) = self.resuming.take() else {
            return;
        };
        match result {
            Ok(r) => {
                self.write(stream::sm_element(
                    "resumed",
                    &[("previd", &previd), ("h", &r.h.to_string())],
                ));
                self.jid = Some(r.jid.clone());
                self.available = r.available;
                self.priority = r.priority;
                self.state = State::Bound;
                self.sm = Some(SmState::resumed(previd, r.max, r.h, client_h));
                self.out.push(SessionAction::Bound(r.jid));
                self.share_sm();
            }
            Err(condition) => {
                self.write(stream::sm_failed(&condition, None));
                self.state = State::Bind;
            }
        }
    }

    /// XEP-0198 and XEP-0352 elements after binding.
    fn on_nonza(&mut self, top: &xmpp_stream::TopLevel) {
        match (top.ns.as_str(), top.name.as_str()) {
            (ns::SM, "enable") if self.sm.is_none() => {
                let resume = matches!(top.attr("resume"), Some("true" | "1"));
                let max = top.attr("max").and_then(|m| m.parse().ok()).unwrap_or(0);
                self.sm = Some(SmState::enabling());
                self.out.push(SessionAction::ToCore(Frame::SmEnable {
                    sid: self.sid,
                    resume,
                    max,
                }));
            }
            (ns::SM, "enable" | "resume") => {
                self.write(stream::sm_failed("unexpected-request", None));
            }
            (ns::SM, "r") if self.sm.is_some() => {
                self.out
                    .push(SessionAction::ToCore(Frame::AckRequest { sid: self.sid }));
            }
            (ns::SM, "a") if self.sm.is_some() => {
                let h = top.attr("h").and_then(|h| h.parse::<u32>().ok());
                let sm = self.sm.as_mut().map(|sm| h.map(|h| (h, sm.on_ack(h))));
                match sm.flatten() {
                    Some((h, Ok(()))) => self
                        .out
                        .push(SessionAction::ToCore(Frame::Acked { sid: self.sid, h })),
                    Some((_, Err(_))) => self.close_with(
                        StreamCondition::UndefinedCondition,
                        Some("handled-count-too-high"),
                    ),
                    None => self.close_with(StreamCondition::BadFormat, Some("bad h")),
                }
            }
            (ns::CSI, "inactive") => self.csi.inactive = true,
            (ns::CSI, "active") => {
                self.csi.inactive = false;
                self.flush_held();
            }
            _ => self.close_with(
                StreamCondition::UnsupportedStanzaType,
                Some("unsupported element"),
            ),
        }
    }

    fn on_resume(&mut self, top: &xmpp_stream::TopLevel) {
        let previd = top.attr("previd").unwrap_or_default().to_owned();
        let Some(h) = top.attr("h").and_then(|h| h.parse::<u32>().ok()) else {
            self.write(stream::sm_failed("bad-request", None));
            return;
        };
        self.state = State::Resuming;
        self.resuming = Some((previd.clone(), h));
        self.out.push(SessionAction::ToCore(Frame::Resume {
            sid: self.sid,
            user: self.user.clone().unwrap_or_default(),
            previd,
            h,
        }));
    }

    fn bind_result(&mut self, iq_id: String, result: Result<String, String>) {
        match result {
            Ok(jid) => {
                self.write_stanza_bytes(Bytes::from(stream::bind_result(&iq_id, &jid)));
                self.jid = Some(jid.clone());
                self.state = State::Bound;
                self.out.push(SessionAction::Bound(jid));
            }
            Err(condition) => {
                self.state = State::Bind;
                let cond = xmpp_stream::StanzaCondition::from_name(&condition);
                let reply = xmpp_stream::stanza::error_reply(
                    StanzaKind::Iq,
                    Some(&iq_id),
                    &self.domain.clone(),
                    self.user.as_deref().unwrap_or(""),
                    cond,
                    None,
                );
                self.write_stanza_bytes(reply);
            }
        }
    }

    /// Ends the stream with a stream error (e.g. the CM is shutting down or
    /// the client cannot keep up).
    pub fn close(&mut self, condition: StreamCondition, text: Option<&str>) -> Vec<SessionAction> {
        if self.state != State::Closed {
            self.close_with(condition, text);
        }
        std::mem::take(&mut self.out)
    }

    /// The client's stream is gone; returns what the core must learn.
    pub fn on_closed(&mut self) -> Option<Frame> {
        let had_core_state = self.user.is_some()
            || matches!(self.state, State::SaslRunning | State::Resuming)
            || self.jid.is_some();
        self.state = State::Closed;
        had_core_state.then(|| Frame::SessionEnd {
            sid: self.sid,
            jid: self.jid.clone(),
            clean: self.closed_by_client,
        })
    }

    fn on_open(&mut self, header: xmpp_stream::StreamHeader) {
        let State::Header { authenticated } = self.state else {
            self.close_with(
                StreamCondition::NotWellFormed,
                Some("unexpected stream header"),
            );
            return;
        };
        self.write_header(header.lang.as_deref());
        match header.to.as_deref() {
            Some(to) if to.eq_ignore_ascii_case(&self.domain) => {}
            _ => {
                self.close_with(
                    StreamCondition::HostUnknown,
                    Some("this server does not serve that domain"),
                );
                return;
            }
        }
        let features = if authenticated {
            self.state = State::Bind;
            stream::features_bind()
        } else {
            self.state = State::Sasl;
            let mechs: Vec<&str> = self.mechanisms.iter().map(String::as_str).collect();
            match self.registration {
                true => stream::features_sasl_register(&mechs),
                false => stream::features_sasl(&mechs),
            }
        };
        match self.framing {
            Framing::Stream => {
                // header and features in one write
                if let Some(SessionAction::Write(header)) = self.out.pop() {
                    let mut both = header.to_vec();
                    both.extend(features);
                    self.write(both);
                }
            }
            Framing::WebSocket => {
                let declared = String::from_utf8_lossy(&features).replacen(
                    "<stream:features",
                    "<stream:features xmlns:stream=\"http://etherx.jabber.org/streams\"",
                    1,
                );
                self.write(declared.into_bytes());
            }
        }
    }

    /// The server's stream header (`<open/>` on WebSocket).
    fn write_header(&mut self, lang: Option<&str>) {
        let id = format!("{:016x}", rand::random::<u64>());
        let header = match self.framing {
            Framing::Stream => stream::server_header(&self.domain, &id, None, lang),
            Framing::WebSocket => stream::ws_open(&self.domain, &id, lang),
        };
        self.write(header);
    }

    /// The end of the stream (`<close/>` on WebSocket).
    fn write_close(&mut self) {
        let close = match self.framing {
            Framing::Stream => stream::STREAM_CLOSE,
            Framing::WebSocket => stream::WS_CLOSE,
        };
        self.write(close.to_vec());
    }

    /// A stanza; on WebSocket it must declare its namespace (RFC 7395 §3.3.3).
    fn write_stanza_bytes(&mut self, stanza: Bytes) {
        let stanza = match self.framing {
            Framing::Stream => stanza,
            Framing::WebSocket => declare_client_ns(stanza),
        };
        self.out.push(SessionAction::Write(stanza));
    }

    fn on_element(&mut self, raw: Bytes) {
        let top = match inspect(&raw) {
            Ok(t) => t,
            Err(e) => return self.fail(e),
        };
        match self.state {
            State::Sasl | State::SaslInitial | State::SaslRunning if top.ns == ns::SASL => {
                self.on_sasl(&raw, &top)
            }
            State::Sasl if self.registration && top.stanza_kind() == Some(StanzaKind::Iq) => {
                self.on_register(&raw)
            }
            State::Bind if top.stanza_kind() == Some(StanzaKind::Iq) => self.on_bind(&raw),
            State::Bind if top.ns == ns::SM && top.name == "resume" => self.on_resume(&top),
            State::Bind if top.ns == ns::SM && top.name == "enable" => {
                // XEP-0198 §3: only after binding.
                self.write(stream::sm_failed("unexpected-request", None));
            }
            State::Bound => match top.header() {
                Some(h) => self.on_stanza(&raw, &top, h),
                None => self.on_nonza(&top),
            },
            State::Sasl
            | State::SaslInitial
            | State::SaslRunning
            | State::Bind
            | State::Binding
            | State::Resuming => self.close_with(
                StreamCondition::NotAuthorized,
                Some("authenticate and bind first"),
            ),
            State::Header { .. } | State::Closed => {}
        }
    }

    fn on_sasl(&mut self, raw: &[u8], top: &xmpp_stream::TopLevel) {
        let text = match Element::parse(raw, ns::CLIENT) {
            Ok(el) => el.text(),
            Err(e) => return self.fail(e),
        };
        let no_initial_response = text.trim().is_empty();
        let data = match text.trim() {
            "" | "=" => Ok(Vec::new()),
            t => B64.decode(t),
        };
        let Ok(data) = data else {
            self.write(stream::sasl_failure("incorrect-encoding", None));
            self.state = State::Sasl;
            return;
        };
        match (self.state, top.name.as_str()) {
            (State::Sasl, "auth") => {
                let mechanism = top.attr("mechanism").unwrap_or_default().to_owned();
                if !self.mechanisms.contains(&mechanism) {
                    self.write(stream::sasl_failure("invalid-mechanism", None));
                    return;
                }
                if no_initial_response {
                    // RFC 6120 §6.4.2: ask for it with an empty challenge.
                    self.write(stream::sasl_element("challenge", None, None));
                    self.mechanism = mechanism;
                    self.state = State::SaslInitial;
                    return;
                }
                self.start_auth(mechanism, data);
            }
            (State::SaslInitial, "response") => {
                let mechanism = std::mem::take(&mut self.mechanism);
                self.start_auth(mechanism, data);
            }
            (State::SaslRunning, "response") => {
                self.awaiting_core = true;
                self.out.push(SessionAction::ToCore(Frame::AuthResponse {
                    sid: self.sid,
                    data: data.into(),
                }));
            }
            (_, "abort") => {
                self.write(stream::sasl_failure("aborted", None));
                self.drop_next_answer = self.awaiting_core;
                self.state = State::Sasl;
                // Aborts count as failures: a stream cannot restart SASL forever.
                self.auth_failures += 1;
                if self.auth_failures >= MAX_AUTH_FAILURES {
                    self.close_with(
                        StreamCondition::PolicyViolation,
                        Some("too many failed authentication attempts"),
                    );
                }
            }
            _ => self.close_with(
                StreamCondition::NotAuthorized,
                Some("unexpected SASL element"),
            ),
        }
    }

    /// An IQ before authentication, where registration is offered
    /// (XEP-0077 §3.1): the form locally, account creation at the core.
    fn on_register(&mut self, raw: &[u8]) {
        let iq = match Element::parse(raw, ns::CLIENT) {
            Ok(el) => el,
            Err(e) => return self.fail(e),
        };
        let id = iq.attr("id").unwrap_or_default().to_owned();
        let Some(query) = iq.child("query", ns::REGISTER) else {
            return self.close_with(
                StreamCondition::NotAuthorized,
                Some("authenticate and bind first"),
            );
        };
        match iq.attr("type") {
            Some("get") => {
                let form = Element::new("query", ns::REGISTER)
                    .with_child(
                        Element::new("instructions", ns::REGISTER)
                            .with_text("Choose a user name and password."),
                    )
                    .with_child(Element::new("username", ns::REGISTER))
                    .with_child(Element::new("password", ns::REGISTER));
                let reply = Element::new("iq", ns::CLIENT)
                    .with_attr("type", "result")
                    .with_attr("id", id)
                    .with_child(form);
                self.write_stanza_bytes(Bytes::from(reply.to_bytes(ns::CLIENT)));
            }
            Some("set") => {
                let field = |name: &str| query.child(name, ns::REGISTER).map(Element::text);
                let (Some(username), Some(password)) = (field("username"), field("password"))
                else {
                    return self.register_error(&id, "bad-request");
                };
                if self.register_id.is_some() || self.registrations >= MAX_AUTH_FAILURES {
                    return self.register_error(&id, "not-allowed");
                }
                self.registrations += 1;
                self.register_id = Some(id);
                self.out.push(SessionAction::ToCore(Frame::Register {
                    sid: self.sid,
                    username,
                    password,
                }));
            }
            _ => self.register_error(&id, "bad-request"),
        }
    }

    /// Answers the registration IQ `id` with a stanza error.
    fn register_error(&mut self, id: &str, condition: &str) {
        let kind = match condition {
            "bad-request" | "not-acceptable" => "modify",
            "resource-constraint" => "wait",
            _ => "cancel",
        };
        let reply = Element::new("iq", ns::CLIENT)
            .with_attr("type", "error")
            .with_attr("id", id)
            .with_child(
                Element::new("error", ns::CLIENT)
                    .with_attr("type", kind)
                    .with_child(Element::new(condition, ns::STANZA_ERRORS)),
            );
        self.write_stanza_bytes(Bytes::from(reply.to_bytes(ns::CLIENT)));
    }

    fn start_auth(&mut self, mechanism: String, data: Vec<u8>) {
        self.state = State::SaslRunning;
        self.awaiting_core = true;
        self.out.push(SessionAction::ToCore(Frame::AuthStart {
            sid: self.sid,
            mechanism,
            data: data.into(),
        }));
    }

    fn on_bind(&mut self, raw: &[u8]) {
        let iq = match Element::parse(raw, ns::CLIENT) {
            Ok(el) => el,
            Err(e) => return self.fail(e),
        };
        let id = iq.attr("id").unwrap_or_default().to_owned();
        match (iq.attr("type"), iq.child("bind", ns::BIND)) {
            (Some("set"), Some(bind)) => {
                let resource = bind
                    .child("resource", ns::BIND)
                    .map(|r| r.text().trim().to_owned());
                self.state = State::Binding;
                self.bind_id = id.clone();
                self.out.push(SessionAction::ToCore(Frame::Bind {
                    sid: self.sid,
                    user: self.user.clone().unwrap_or_default(),
                    iq_id: id,
                    resource,
                }));
            }
            _ => self.close_with(
                StreamCondition::NotAuthorized,
                Some("bind a resource first"),
            ),
        }
    }

    fn on_stanza(&mut self, raw: &[u8], top: &xmpp_stream::TopLevel, h: xmpp_stream::StanzaHeader) {
        let Some(from) = self.jid.clone() else { return };
        let kind = match h.kind {
            StanzaKind::Message => Kind::Message,
            StanzaKind::Presence => Kind::Presence,
            StanzaKind::Iq => Kind::Iq,
        };
        if kind == Kind::Presence && h.to.is_none() {
            match h.stanza_type.as_deref() {
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
        if let Some(sm) = &self.sm {
            sm.count_in();
        }
        let payload = stamp_from(raw, top, &from);
        self.out.push(SessionAction::ToCore(Frame::Stanza {
            sid: self.sid,
            header: RouteHeader {
                kind,
                stanza_type: h.stanza_type,
                to: h.to,
                id: h.id,
                from,
            },
            payload,
        }));
    }

    fn fail(&mut self, e: FramingError) {
        self.close_with(e.condition, Some(&e.text));
    }

    fn close_with(&mut self, condition: StreamCondition, text: Option<&str>) {
        tracing::debug!(sid = self.sid, %condition, text, "closing client stream");
        if matches!(self.state, State::Header { .. })
            && !self
                .out
                .iter()
                .any(|a| matches!(a, SessionAction::Write(_)))
        {
            // A stream error needs an open stream: open one first (RFC 6120 §4.9.1.1).
            self.write_header(None);
        }
        match self.framing {
            Framing::Stream => self.write(stream::stream_error(condition, text)),
            Framing::WebSocket => {
                self.write(stream::stream_error_element(condition, text, true));
                self.write_close();
            }
        }
        self.finish();
    }

    fn finish(&mut self) {
        self.state = State::Closed;
        self.out.push(SessionAction::Close);
    }

    fn write(&mut self, bytes: Vec<u8>) {
        self.out.push(SessionAction::Write(Bytes::from(bytes)));
    }
}

/// Adds `xmlns="jabber:client"` to a stanza whose start tag declares no
/// default namespace (it inherited it from the stream).
fn declare_client_ns(stanza: Bytes) -> Bytes {
    let end = stanza
        .iter()
        .position(|&b| b == b'>')
        .unwrap_or(stanza.len());
    let start_tag = &stanza[..end];
    // The start tag was written by `rewrite_attrs`: attributes follow a space.
    if start_tag
        .windows(8)
        .any(|w| w == b" xmlns=\"" || w == b" xmlns='")
    {
        return stanza;
    }
    let name_end = start_tag
        .iter()
        .position(|&b| b == b' ' || b == b'/' || b == b'\t' || b == b'\n' || b == b'\r')
        .unwrap_or(end);
    let mut out = Vec::with_capacity(stanza.len() + 24);
    out.extend_from_slice(&stanza[..name_end]);
    out.extend_from_slice(b" xmlns=\"jabber:client\"");
    out.extend_from_slice(&stanza[name_end..]);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &[u8] = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='x' version='1.0'>";

    fn session() -> ClientSession {
        ClientSession::new(
            7,
            "x",
            vec!["SCRAM-SHA-256".into(), "PLAIN".into()],
            Limits::default(),
        )
    }

    fn written(actions: &[SessionAction]) -> String {
        actions
            .iter()
            .filter_map(|a| match a {
                SessionAction::Write(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            })
            .collect()
    }

    fn to_core(actions: &[SessionAction]) -> Vec<Frame> {
        actions
            .iter()
            .filter_map(|a| match a {
                SessionAction::ToCore(f) => Some(f.clone()),
                _ => None,
            })
            .collect()
    }

    fn bound_session() -> ClientSession {
        let mut s = session();
        let a = s.on_data(HEADER);
        assert!(written(&a).contains("<mechanism>SCRAM-SHA-256</mechanism>"));
        let a = s.on_data(
            b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>",
        );
        assert!(
            matches!(&to_core(&a)[..], [Frame::AuthStart { mechanism, data, .. }] if mechanism == "PLAIN" && &data[..] == b"\0a\0b")
        );
        let a = s.on_core(Frame::AuthSuccess {
            sid: 7,
            data: Bytes::new(),
            user: "a@x".into(),
        });
        assert!(written(&a).contains("<success"));
        let a = s.on_data(HEADER);
        assert!(written(&a).contains("urn:ietf:params:xml:ns:xmpp-bind"));
        let a = s.on_data(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>phone</resource></bind></iq>");
        assert!(
            matches!(&to_core(&a)[..], [Frame::Bind { resource: Some(r), .. }] if r == "phone")
        );
        let a = s.on_core(Frame::BindResult {
            sid: 7,
            iq_id: "b1".into(),
            result: Ok("a@x/phone".into()),
        });
        assert!(a.contains(&SessionAction::Bound("a@x/phone".into())));
        assert!(written(&a).contains("<jid>a@x/phone</jid>"));
        s
    }

    #[test]
    fn negotiates_and_stamps_from() {
        let mut s = bound_session();
        let a = s.on_data(
            b"<message to='b@x' from='evil@x' type='chat' id='m1'><body>hi</body></message>",
        );
        let [
            Frame::Stanza {
                header, payload, ..
            },
        ] = &to_core(&a)[..]
        else {
            panic!("{a:?}")
        };
        assert_eq!(header.from, "a@x/phone");
        assert_eq!(header.to.as_deref(), Some("b@x"));
        let el = Element::parse(payload, ns::CLIENT).unwrap();
        assert_eq!(el.attr("from"), Some("a@x/phone"));
        // whitespace keep-alives between stanzas are fine
        assert!(s.on_data(b" \n\t ").is_empty());
        // presence tracking for re-announce
        s.on_data(b"<presence><priority>5</priority></presence>");
        assert!(s.available);
        assert_eq!(s.priority, 5);
        // deliveries are written as they are
        let a = s.on_core(Frame::Deliver {
            sid: 7,
            payload: Bytes::from_static(b"<message/>"),
        });
        assert_eq!(written(&a), "<message/>");
        assert_eq!(
            s.on_closed(),
            Some(Frame::SessionEnd {
                sid: 7,
                jid: Some("a@x/phone".into()),
                clean: false,
            })
        );
    }

    #[test]
    fn stanzas_before_auth_end_the_stream() {
        let mut s = session();
        s.on_data(HEADER);
        let a = s.on_data(b"<message to='b@x'><body>hi</body></message>");
        assert!(written(&a).contains("not-authorized"));
        assert!(a.contains(&SessionAction::Close));
        assert_eq!(s.on_closed(), None);
    }

    #[test]
    fn wrong_domain_and_bad_xml_get_stream_errors() {
        let mut s = session();
        let a = s.on_data(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='other' version='1.0'>");
        assert!(written(&a).contains("host-unknown"));
        let mut s = bound_session();
        let a = s.on_data(b"<message><body>&bogus;</body></message>");
        assert!(written(&a).contains("not-well-formed"));
        assert!(a.contains(&SessionAction::Close));
    }

    #[test]
    fn auth_failures_are_relayed_and_limited() {
        let mut s = session();
        s.on_data(HEADER);
        for i in 0..3 {
            s.on_data(
                b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>",
            );
            let a = s.on_core(Frame::AuthFailure {
                sid: 7,
                condition: "not-authorized".into(),
            });
            assert!(written(&a).contains("<not-authorized"));
            assert_eq!(a.contains(&SessionAction::Close), i == 2);
        }
    }

    #[test]
    fn a_bind_lost_by_a_restarted_core_is_answered_with_an_error() {
        let mut s = session();
        s.on_data(HEADER);
        s.on_data(
            b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>",
        );
        s.on_core(Frame::AuthSuccess {
            sid: 7,
            data: Bytes::new(),
            user: "a@x".into(),
        });
        s.on_data(HEADER);
        s.on_data(
            b"<iq type='set' id='bind-9'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>",
        );
        // what the pool sends unbound sessions when the core instance changed
        let a = s.on_core(Frame::AuthFailure {
            sid: 7,
            condition: "temporary-auth-failure".into(),
        });
        assert!(a.is_empty());
        let a = s.on_core(Frame::BindResult {
            sid: 7,
            iq_id: String::new(),
            result: Err("internal-server-error".into()),
        });
        let text = written(&a);
        assert!(
            text.contains("id=\"bind-9\"") && text.contains("internal-server-error"),
            "{text}"
        );
        // the client may bind again
        let a = s.on_data(
            b"<iq type='set' id='bind-10'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>",
        );
        assert!(matches!(&to_core(&a)[..], [Frame::Bind { iq_id, .. }] if iq_id == "bind-10"));
    }

    #[test]
    fn auth_without_initial_response_gets_an_empty_challenge() {
        let mut s = session();
        s.on_data(HEADER);
        let a = s.on_data(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'/>");
        assert!(written(&a).contains("<challenge"));
        assert!(to_core(&a).is_empty());
        let a =
            s.on_data(b"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>AGEAYg==</response>");
        assert!(
            matches!(&to_core(&a)[..], [Frame::AuthStart { mechanism, data, .. }] if mechanism == "PLAIN" && &data[..] == b"\0a\0b")
        );
    }

    #[test]
    fn aborts_count_and_a_stale_answer_is_dropped() {
        let mut s = session();
        s.on_data(HEADER);
        s.on_data(
            b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>",
        );
        let a = s.on_data(b"<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
        assert!(written(&a).contains("<aborted"));
        // a new attempt; the core's late answer to the aborted one is ignored
        s.on_data(
            b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGMAZA==</auth>",
        );
        let a = s.on_core(Frame::AuthSuccess {
            sid: 7,
            data: Bytes::new(),
            user: "a@x".into(),
        });
        assert!(a.is_empty(), "{a:?}");
        let a = s.on_core(Frame::AuthFailure {
            sid: 7,
            condition: "not-authorized".into(),
        });
        assert!(written(&a).contains("not-authorized"));
        // the third failure or abort ends the stream
        s.on_data(
            b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>",
        );
        let a = s.on_data(b"<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
        assert!(a.contains(&SessionAction::Close));
    }

    #[test]
    fn kick_closes_with_conflict() {
        let mut s = bound_session();
        let a = s.on_core(Frame::Kick {
            sid: 7,
            condition: "conflict".into(),
        });
        assert!(written(&a).contains("<conflict"));
        assert!(a.contains(&SessionAction::Close));
    }

    fn deliver(s: &mut ClientSession, xml: &'static str) -> Vec<SessionAction> {
        s.on_core(Frame::Deliver {
            sid: 7,
            payload: Bytes::from_static(xml.as_bytes()),
        })
    }

    #[test]
    fn stream_management_counts_requests_and_checks_acks() {
        let mut s = bound_session();
        let a = s.on_data(b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>");
        assert_eq!(
            to_core(&a),
            vec![Frame::SmEnable {
                sid: 7,
                resume: true,
                max: 0
            }]
        );
        let a = s.on_core(Frame::SmEnabled {
            sid: 7,
            id: "ID".into(),
            max: 300,
        });
        assert!(
            written(&a).contains(
                "<enabled xmlns=\"urn:xmpp:sm:3\" id=\"ID\" resume=\"true\" max=\"300\"/>"
            ),
            "{}",
            written(&a)
        );
        assert!(
            a.iter()
                .any(|x| matches!(x, SessionAction::Sm(sm) if sm.id == "ID"))
        );
        deliver(&mut s, "<message/>");
        deliver(&mut s, "<message/>");
        assert!(written(&s.request_ack()).contains("<r xmlns=\"urn:xmpp:sm:3\"/>"));
        assert!(s.request_ack().is_empty());
        let a = s.on_data(b"<a xmlns='urn:xmpp:sm:3' h='2'/>");
        assert_eq!(to_core(&a), vec![Frame::Acked { sid: 7, h: 2 }]);
        let a = s.on_data(b"<r xmlns='urn:xmpp:sm:3'/>");
        assert_eq!(to_core(&a), vec![Frame::AckRequest { sid: 7 }]);
        let a = s.on_core(Frame::Handled { sid: 7, h: 4 });
        assert_eq!(written(&a), "<a xmlns=\"urn:xmpp:sm:3\" h=\"4\"/>");
        let a = s.on_data(b"<a xmlns='urn:xmpp:sm:3' h='3'/>");
        assert!(written(&a).contains("undefined-condition"));
        assert!(a.contains(&SessionAction::Close));
    }

    #[test]
    fn inactive_clients_get_messages_at_once_and_the_latest_presence_later() {
        let mut s = bound_session();
        s.on_data(b"<enable xmlns='urn:xmpp:sm:3'/>");
        s.on_core(Frame::SmEnabled {
            sid: 7,
            id: String::new(),
            max: 0,
        });
        s.on_data(b"<inactive xmlns='urn:xmpp:csi:0'/>");
        assert!(
            written(&deliver(
                &mut s,
                "<presence from='b@x/1'><show>away</show></presence>"
            ))
            .is_empty()
        );
        let a = deliver(&mut s, "<presence from='b@x/1'/>");
        assert!(written(&a).is_empty());
        assert_eq!(
            to_core(&a),
            vec![Frame::Skipped {
                sid: 7,
                seqs: vec![0]
            }]
        );
        assert_eq!(written(&deliver(&mut s, "<message/>")), "<message/>");
        let a = s.on_data(b"<active xmlns='urn:xmpp:csi:0'/>");
        assert_eq!(written(&a), "<presence from='b@x/1'/>");
    }

    #[test]
    fn resume_instead_of_bind() {
        let mut s = session();
        s.on_data(HEADER);
        s.on_data(
            b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>",
        );
        s.on_core(Frame::AuthSuccess {
            sid: 7,
            data: Bytes::new(),
            user: "a@x".into(),
        });
        let a = s.on_data(HEADER);
        assert!(written(&a).contains("urn:xmpp:sm:3"));
        let a = s.on_data(b"<resume xmlns='urn:xmpp:sm:3' previd='P' h='3'/>");
        assert_eq!(
            to_core(&a),
            vec![Frame::Resume {
                sid: 7,
                user: "a@x".into(),
                previd: "P".into(),
                h: 3
            }]
        );
        let a = s.on_core(Frame::Resumed {
            sid: 7,
            result: Ok(cm_protocol::Resumption {
                jid: "a@x/phone".into(),
                h: 9,
                available: true,
                priority: 0,
                max: 300,
            }),
        });
        assert!(written(&a).contains("<resumed xmlns=\"urn:xmpp:sm:3\" previd=\"P\" h=\"9\"/>"));
        assert!(a.contains(&SessionAction::Bound("a@x/phone".into())));
        // replayed deliveries are written and counted from the client's h
        deliver(&mut s, "<message/>");
        assert!(written(&s.request_ack()).contains("<r "));
        let a = s.on_data(b"<a xmlns='urn:xmpp:sm:3' h='4'/>");
        assert_eq!(to_core(&a), vec![Frame::Acked { sid: 7, h: 4 }]);
        // a refused resumption leaves the client free to bind
        let mut s = session();
        s.on_data(HEADER);
        s.on_data(
            b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>",
        );
        s.on_core(Frame::AuthSuccess {
            sid: 7,
            data: Bytes::new(),
            user: "a@x".into(),
        });
        s.on_data(HEADER);
        s.on_data(b"<resume xmlns='urn:xmpp:sm:3' previd='P' h='3'/>");
        let a = s.on_core(Frame::Resumed {
            sid: 7,
            result: Err("item-not-found".into()),
        });
        assert!(written(&a).contains("<failed xmlns=\"urn:xmpp:sm:3\"><item-not-found"));
        let a = s.on_data(
            b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>",
        );
        assert!(matches!(&to_core(&a)[..], [Frame::Bind { .. }]));
    }

    #[test]
    fn websocket_stanzas_declare_their_namespace() {
        let plain =
            Bytes::from_static(b"<message to=\"a@x\" fooxmlns=\"1\"><body>x</body></message>");
        let out = declare_client_ns(plain);
        assert!(
            out.starts_with(b"<message xmlns=\"jabber:client\" to="),
            "{out:?}"
        );
        let empty = declare_client_ns(Bytes::from_static(b"<presence/>"));
        assert_eq!(&empty[..], b"<presence xmlns=\"jabber:client\"/>");
        let declared = Bytes::from_static(b"<iq xmlns=\"jabber:client\" type=\"result\"/>");
        assert_eq!(declare_client_ns(declared.clone()), declared);
    }
}
