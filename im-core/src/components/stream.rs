//! One external component's stream (XEP-0114 §3) as a sans-IO state
//! machine, [`ComponentStream`]: the bytes read and the time in
//! ([`ComponentStream::handle_data`], [`ComponentStream::handle_timeout`]
//! at [`ComponentStream::poll_timeout`]), [`StreamAction`]s out
//! ([`ComponentStream::poll_action`]). The stream id comes from a
//! generator the driver seeds; no clock, no socket.
//!
//! The exchange: the component opens `<stream:stream
//! xmlns='jabber:component:accept' to='NAME'>`; the server answers with a
//! header carrying a fresh `id` and `from='NAME'` (an unknown `NAME` gets
//! `host-unknown`); the component sends `<handshake>` with the lowercase
//! hex SHA-1 of `id` followed by the shared secret, checked in constant
//! time: right, the driver is asked to register the name
//! ([`StreamAction::Authenticated`], answered by
//! [`ComponentStream::claimed`]) and the server answers `<handshake/>`;
//! wrong, `not-authorized` and the stream ends. Within
//! [`super::HANDSHAKE_TIMEOUT`] or `connection-timeout`.
//!
//! Then stanzas flow. The input is policed as a client's is at the CM: the
//! same framer and limits (64 KiB a stanza, depth, restricted XML), the
//! same strict well-formedness pass, a read budget. Every stanza must be
//! `from` a JID of the component's domain (else the stream ends with
//! `invalid-from`, as Prosody does) and have a `to` (else `bad-request`);
//! the server claims it could forge for the server's domain are cut, and
//! `from` is written back normalized. Stanzas are translated between the
//! component's namespace and `jabber:client` both ways ([`from_component`],
//! [`to_component`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cm_protocol::{Kind, RouteHeader};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use sha1::{Digest, Sha1};
use xmpp_stream::element::{Element, Node};
use xmpp_stream::framer::{FrameEvent, Framer, FramingError, Limits, StreamKind};
use xmpp_stream::pacing::TokenBucket;
use xmpp_stream::stanza::{
    StanzaKind, TopLevel, error_reply, inspect, rewrite_attrs, stamp_from, stamp_from_unforged,
};
use xmpp_stream::{StanzaCondition, StreamCondition, StreamHeader, ns, stream};

use super::ComponentConfig;

/// What every component stream of a core shares.
#[derive(Clone)]
pub struct StreamSettings {
    /// The server's domain: what its own answers come from, and the
    /// domain whose server claims a component may not make.
    pub domain: String,
    /// Secrets by component name.
    secrets: HashMap<String, String>,
    /// Framing limits (the CM's for clients: 64 KiB a stanza).
    pub limits: Limits,
    /// Sustained bytes a second read.
    pub read_rate: u64,
    /// Bytes read at once before the rate applies.
    pub read_burst: u64,
    /// Time from connecting to the end of the handshake.
    pub handshake_timeout: Duration,
}

impl StreamSettings {
    /// Settings for a core serving `domain` that accepts `components`,
    /// with the default bounds.
    pub fn new(domain: &str, components: &[ComponentConfig]) -> Self {
        Self {
            domain: domain.to_owned(),
            secrets: components
                .iter()
                .map(|c| (c.name.clone(), c.secret.clone()))
                .collect(),
            limits: Limits::default(),
            read_rate: super::READ_RATE,
            read_burst: super::READ_BURST,
            handshake_timeout: super::HANDSHAKE_TIMEOUT,
        }
    }
}

impl std::fmt::Debug for StreamSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSettings")
            .field("domain", &self.domain)
            .field("components", &self.secrets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What the driver must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamAction {
    /// Write these bytes to the component.
    Write(Bytes),
    /// The component proved it holds the secret of `name`: register it as
    /// connected, or refuse it if another connection holds the name, and
    /// say which with [`ComponentStream::claimed`]. Nothing more is read
    /// until then.
    Authenticated {
        /// The component's name.
        name: String,
    },
    /// A stanza from the component: `from` its domain, with a `to`, in
    /// `jabber:client` as the router and clients take it.
    Stanza {
        /// Its routing header (`from` as in the payload).
        header: RouteHeader,
        /// The stanza.
        payload: Bytes,
    },
    /// Close the connection after the writes before this.
    Close(Ended),
}

/// Why a component's stream ended ([`StreamAction::Close`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The component closed it with `</stream:stream>` (answered in kind).
    ByComponent,
    /// The server ended it with this stream error.
    Error(StreamCondition),
}

/// Where the stream stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for the component's stream header.
    Header,
    /// Header answered with stream id `id`; waiting for the handshake.
    Handshake { name: String, id: String },
    /// Handshake right; waiting for the driver's word on the name.
    Claiming { name: String },
    /// Stanzas flow.
    Ready { name: String },
    /// Over.
    Closed,
}

/// One component's stream (see the module docs).
pub struct ComponentStream {
    settings: Arc<StreamSettings>,
    framer: Framer,
    state: State,
    /// Whether the server's stream header was written.
    opened: bool,
    rng: StdRng,
    read_budget: TokenBucket,
    /// Reading waits until then (the read budget is spent).
    read_paused_until: Option<Instant>,
    /// The handshake must be done by then.
    handshake_deadline: Option<Instant>,
    out: std::collections::VecDeque<StreamAction>,
}

impl ComponentStream {
    /// A stream accepted at `now`; `seed` (random, from the driver) makes
    /// its stream id.
    pub fn new(settings: Arc<StreamSettings>, seed: u64, now: Instant) -> Self {
        Self {
            framer: Framer::for_stream(StreamKind::ComponentAccept, settings.limits),
            read_budget: TokenBucket::new(settings.read_rate, settings.read_burst, now),
            handshake_deadline: Some(now + settings.handshake_timeout),
            settings,
            state: State::Header,
            opened: false,
            rng: StdRng::seed_from_u64(seed),
            read_paused_until: None,
            out: Default::default(),
        }
    }

    /// The component's name once its handshake is right.
    pub fn name(&self) -> Option<&str> {
        match &self.state {
            State::Claiming { name } | State::Ready { name } => Some(name),
            _ => None,
        }
    }

    /// Bytes read from the component at `now`.
    pub fn handle_data(&mut self, data: &[u8], now: Instant) {
        if self.state == State::Closed {
            return;
        }
        let wait = self.read_budget.take(data.len(), now);
        if !wait.is_zero() {
            self.read_paused_until = Some(now + wait);
        }
        self.framer.push(data);
        self.process();
    }

    /// The driver's answer to [`StreamAction::Authenticated`]: the name is
    /// this connection's now (`true`), or another connection holds it and
    /// this one is refused with `conflict`.
    pub fn claimed(&mut self, ok: bool) {
        let State::Claiming { name } = &self.state else {
            return;
        };
        if !ok {
            return self.fail(
                StreamCondition::Conflict,
                "another connection is this component already",
            );
        }
        self.state = State::Ready { name: name.clone() };
        self.handshake_deadline = None;
        self.write(Bytes::from_static(b"<handshake/>"));
        // what the component sent right after its handshake
        self.process();
    }

    /// Timers due at `now`: reading resumes once the budget allows; a
    /// handshake not done by its deadline ends the stream.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.read_paused_until.is_some_and(|t| t <= now) {
            self.read_paused_until = None;
        }
        if self.handshake_deadline.is_some_and(|t| t <= now) {
            self.handshake_deadline = None;
            self.fail(StreamCondition::ConnectionTimeout, "handshake in time");
        }
    }

    /// When [`ComponentStream::handle_timeout`] is due next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        [self.handshake_deadline, self.read_paused_until]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether to read from the component now (not while the read budget
    /// is spent, nor once the stream is over).
    pub fn wants_read(&self) -> bool {
        self.read_paused_until.is_none() && self.state != State::Closed
    }

    /// Ends the stream with a stream error (the server shuts down, the
    /// component does not read).
    pub fn close(&mut self, condition: StreamCondition, text: &str) {
        if self.state != State::Closed {
            self.fail(condition, text);
        }
    }

    /// The next action, in order.
    pub fn poll_action(&mut self) -> Option<StreamAction> {
        self.out.pop_front()
    }

    /// Runs the framer over what it holds, while the state lets it.
    fn process(&mut self) {
        while matches!(
            self.state,
            State::Header | State::Handshake { .. } | State::Ready { .. }
        ) {
            match self.framer.next_event() {
                Ok(None) => break,
                Ok(Some(FrameEvent::Open(header))) => self.on_open(header),
                Ok(Some(FrameEvent::Element(raw))) => self.on_element(raw),
                Ok(Some(FrameEvent::Close)) => {
                    self.write(Bytes::from_static(stream::STREAM_CLOSE));
                    self.end(Ended::ByComponent);
                }
                Err(e) => self.fail(e.condition, &e.text),
            }
        }
    }

    fn on_open(&mut self, header: StreamHeader) {
        if self.state != State::Header {
            return self.fail(StreamCondition::NotWellFormed, "a second stream header");
        }
        let id = self.stream_id();
        let name = header
            .to
            .as_deref()
            .and_then(|to| jid::Jid::new(to).ok())
            .filter(|j| j.node().is_none() && j.resource().is_none())
            .map(|j| j.domain().as_str().to_owned())
            .filter(|name| self.settings.secrets.contains_key(name));
        let Some(name) = name else {
            tracing::info!(
                to = header.to,
                "a component asked for a name not configured"
            );
            return self.fail(StreamCondition::HostUnknown, "no such component");
        };
        self.write(Bytes::from(stream::component_header(&id, Some(&name))));
        self.opened = true;
        self.state = State::Handshake { name, id };
    }

    fn on_element(&mut self, raw: Bytes) {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Handshake { name, id } => self.on_handshake(raw, name, id),
            State::Ready { name } => {
                self.state = State::Ready { name: name.clone() };
                self.on_stanza(raw, &name);
            }
            other => self.state = other,
        }
    }

    /// The component's first element after the header: its handshake.
    fn on_handshake(&mut self, raw: Bytes, name: String, id: String) {
        let top = match inspect(&raw) {
            Ok(top) => top,
            Err(e) => return self.fail(e.condition, &e.text),
        };
        let is_handshake = top.name == "handshake"
            && !top.qname.contains(':')
            && (top.ns == ns::CLIENT || top.ns == ns::COMPONENT_ACCEPT);
        if !is_handshake {
            return self.fail(StreamCondition::NotAuthorized, "handshake first");
        }
        let given = Element::parse(&raw, ns::COMPONENT_ACCEPT)
            .ok()
            .and_then(|el| decode_hex_digest(el.text().trim()));
        let secret = self.settings.secrets.get(&name).map_or("", String::as_str);
        let expected: [u8; 20] = Sha1::new()
            .chain_update(id.as_bytes())
            .chain_update(secret.as_bytes())
            .finalize()
            .into();
        if !given.is_some_and(|given| same(&given, &expected)) {
            tracing::warn!(component = name, "a component's handshake was wrong");
            return self.fail(StreamCondition::NotAuthorized, "handshake failed");
        }
        self.state = State::Claiming { name: name.clone() };
        self.out.push_back(StreamAction::Authenticated { name });
    }

    /// A stanza from the authenticated component `name`.
    fn on_stanza(&mut self, raw: Bytes, name: &str) {
        let raw = match from_component(raw) {
            Ok(raw) => raw,
            Err(e) => return self.fail(e.condition, &e.text),
        };
        let top = match inspect(&raw) {
            Ok(top) => top,
            Err(e) => return self.fail(e.condition, &e.text),
        };
        let Some(kind) = top.stanza_kind() else {
            return self.fail(
                StreamCondition::UnsupportedStanzaType,
                "only message, presence and iq after the handshake",
            );
        };
        let from = top
            .attr("from")
            .and_then(|f| jid::Jid::new(f).ok())
            .filter(|f| f.domain().as_str() == name);
        let Some(from) = from else {
            return self.fail(
                StreamCondition::InvalidFrom,
                "stanzas must come from the component's domain",
            );
        };
        let from = from.to_string();
        let stanza_type = top.attr("type").map(str::to_owned);
        let Some(to) = top.attr("to").map(str::to_owned) else {
            if !matches!(stanza_type.as_deref(), Some("error" | "result")) {
                let reply = error_reply(
                    kind,
                    top.attr("id"),
                    &self.settings.domain,
                    &from,
                    StanzaCondition::BadRequest,
                    Some("a component's stanzas need a 'to'"),
                );
                self.write(to_component(reply));
            }
            return;
        };
        let payload = match kind {
            StanzaKind::Iq => stamp_from(&raw, &top, &from),
            _ => stamp_from_unforged(&raw, &top, &from, &self.settings.domain),
        };
        let header = RouteHeader {
            kind: match kind {
                StanzaKind::Message => Kind::Message,
                StanzaKind::Presence => Kind::Presence,
                StanzaKind::Iq => Kind::Iq,
            },
            stanza_type,
            to: Some(to),
            id: top.attr("id").map(str::to_owned),
            from,
        };
        self.out.push_back(StreamAction::Stanza { header, payload });
    }

    /// A fresh stream id: 128 random bits, hex.
    fn stream_id(&mut self) -> String {
        let mut id = [0u8; 16];
        self.rng.fill_bytes(&mut id);
        id.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn write(&mut self, bytes: Bytes) {
        self.out.push_back(StreamAction::Write(bytes));
    }

    /// Ends the stream with a stream error (opening it first if the server
    /// had not: RFC 6120 §4.9.1.1).
    fn fail(&mut self, condition: StreamCondition, text: &str) {
        tracing::debug!(%condition, text, "ending a component's stream");
        if !self.opened {
            let id = self.stream_id();
            self.write(Bytes::from(stream::component_header(&id, None)));
            self.opened = true;
        }
        self.write(Bytes::from(stream::stream_error(condition, Some(text))));
        self.end(Ended::Error(condition));
    }

    fn end(&mut self, why: Ended) {
        self.state = State::Closed;
        self.out.push_back(StreamAction::Close(why));
    }
}

/// Whether two digests are equal, in time independent of where they differ.
fn same(a: &[u8; 20], b: &[u8; 20]) -> bool {
    a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// The 20 bytes 40 hex digits (either case) stand for.
fn decode_hex_digest(hex: &str) -> Option<[u8; 20]> {
    let hex = hex.as_bytes();
    if hex.len() != 40 {
        return None;
    }
    let mut out = [0u8; 20];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

/// A stanza read from a component's stream, in `jabber:client` terms: in
/// that stream unprefixed elements without a declaration are in
/// `jabber:component:accept`, which [`inspect`] reads as `jabber:client`
/// (what they stand for), so most stanzas are taken as they came; one
/// that names `jabber:component:accept` itself is rewritten with that
/// namespace as `jabber:client`.
pub fn from_component(raw: Bytes) -> Result<Bytes, FramingError> {
    if !contains(&raw, ns::COMPONENT_ACCEPT.as_bytes()) {
        return Ok(raw);
    }
    let mut el = Element::parse(&raw, ns::COMPONENT_ACCEPT)?;
    as_client(&mut el);
    Ok(Bytes::from(el.to_bytes(ns::CLIENT)))
}

/// Moves `el` and its descendants from the component namespace to
/// `jabber:client`.
fn as_client(el: &mut Element) {
    if el.ns == ns::COMPONENT_ACCEPT {
        el.ns = ns::CLIENT.to_owned();
    }
    for child in &mut el.children {
        if let Node::Element(child) = child {
            as_client(child);
        }
    }
}

/// A `jabber:client` stanza for a component's stream: its unprefixed
/// elements without a declaration stand for themselves there too, so it
/// goes as it is, unless its top element declares `jabber:client` itself:
/// that declaration is dropped, so the stanza is in the stream's namespace.
pub fn to_component(payload: Bytes) -> Bytes {
    if !contains(&payload, ns::CLIENT.as_bytes()) {
        return payload;
    }
    match inspect(&payload) {
        Ok(top) if declares_client(&payload, &top) => rewrite_attrs(&payload, &top, &[]),
        _ => payload,
    }
}

/// Whether an unprefixed top element declares `jabber:client` in its
/// start tag.
fn declares_client(raw: &[u8], top: &TopLevel) -> bool {
    !top.qname.contains(':')
        && top.ns == ns::CLIENT
        && raw
            .get(..top.start_len)
            .is_some_and(|start| contains(start, ns::CLIENT.as_bytes()))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "push.example.org";
    const SECRET: &str = "s3cret-s3cret-s3cret";
    const OPEN: &str = "<stream:stream xmlns='jabber:component:accept' \
        xmlns:stream='http://etherx.jabber.org/streams' to='push.example.org'>";

    fn settings() -> Arc<StreamSettings> {
        Arc::new(StreamSettings::new(
            "example.org",
            &[ComponentConfig::new(NAME, SECRET)],
        ))
    }

    fn t0() -> Instant {
        static T0: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
        *T0
    }

    fn actions(s: &mut ComponentStream) -> Vec<StreamAction> {
        std::iter::from_fn(|| s.poll_action()).collect()
    }

    fn written(acts: &[StreamAction]) -> String {
        acts.iter()
            .filter_map(|a| match a {
                StreamAction::Write(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            })
            .collect()
    }

    fn closed_with(acts: &[StreamAction]) -> Option<Ended> {
        match acts.last() {
            Some(StreamAction::Close(why)) => Some(*why),
            _ => None,
        }
    }

    /// The stream id the server's header gave.
    fn stream_id(header: &str) -> String {
        let at = header.find("id=\"").expect("an id") + 4;
        header[at..].split('"').next().expect("closed").to_owned()
    }

    fn handshake(id: &str, secret: &str) -> String {
        let digest = Sha1::digest(format!("{id}{secret}").as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("<handshake>{hex}</handshake>")
    }

    /// A stream through its header: the stream and its id.
    fn opened() -> (ComponentStream, String) {
        let mut s = ComponentStream::new(settings(), 7, t0());
        s.handle_data(OPEN.as_bytes(), t0());
        let acts = actions(&mut s);
        let header = written(&acts);
        assert!(
            header.contains("jabber:component:accept")
                && header.contains("from=\"push.example.org\""),
            "{header}"
        );
        (s, stream_id(&header))
    }

    /// A stream past its handshake, the name claimed.
    fn ready() -> ComponentStream {
        let (mut s, id) = opened();
        s.handle_data(handshake(&id, SECRET).as_bytes(), t0());
        assert_eq!(
            actions(&mut s),
            [StreamAction::Authenticated { name: NAME.into() }]
        );
        s.claimed(true);
        assert_eq!(written(&actions(&mut s)), "<handshake/>");
        s
    }

    fn stanzas(acts: &[StreamAction]) -> Vec<(RouteHeader, String)> {
        acts.iter()
            .filter_map(|a| match a {
                StreamAction::Stanza { header, payload } => Some((
                    header.clone(),
                    String::from_utf8_lossy(payload).into_owned(),
                )),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_component_with_the_right_handshake_is_connected_and_its_stanzas_flow() {
        let mut s = ready();
        assert_eq!(s.name(), Some(NAME));
        assert_eq!(s.poll_timeout(), None, "no deadline once connected");
        s.handle_data(
            b"<message from='x@push.example.org' to='alice@example.org/phone' id='m1' type='chat'><body>hi</body></message>",
            t0(),
        );
        let got = stanzas(&actions(&mut s));
        let [(header, payload)] = &got[..] else {
            panic!("{got:?}")
        };
        assert_eq!(header.kind, Kind::Message);
        assert_eq!(header.from, "x@push.example.org");
        assert_eq!(header.to.as_deref(), Some("alice@example.org/phone"));
        assert_eq!(header.id.as_deref(), Some("m1"));
        assert_eq!(header.stanza_type.as_deref(), Some("chat"));
        let el = Element::parse(payload.as_bytes(), ns::CLIENT).expect("a stanza");
        assert_eq!(
            el.child("body", ns::CLIENT).map(|b| b.text()).as_deref(),
            Some("hi")
        );
        // the domain itself may send too, and the header's from is normalized
        s.handle_data(
            b"<iq from='PUSH.example.org' to='alice@example.org/phone' id='q' type='get'><ping xmlns='urn:xmpp:ping'/></iq>",
            t0(),
        );
        let got = stanzas(&actions(&mut s));
        assert_eq!(got[0].0.from, "push.example.org");
        assert!(
            got[0].1.contains("from=\"push.example.org\""),
            "{}",
            got[0].1
        );
        // the component closes: answered in kind
        s.handle_data(b"</stream:stream>", t0());
        let acts = actions(&mut s);
        assert_eq!(written(&acts), "</stream:stream>");
        assert_eq!(closed_with(&acts), Some(Ended::ByComponent));
    }

    #[test]
    fn a_wrong_handshake_is_not_authorized() {
        let (mut s, id) = opened();
        s.handle_data(handshake(&id, "not-the-secret-at-all").as_bytes(), t0());
        let acts = actions(&mut s);
        assert!(written(&acts).contains("<not-authorized"), "{acts:?}");
        assert_eq!(
            closed_with(&acts),
            Some(Ended::Error(StreamCondition::NotAuthorized))
        );
        // nor is a digest that is not one, nor a stanza before the handshake
        for bad in [
            "<handshake>nothex</handshake>".to_owned(),
            "<handshake/>".to_owned(),
            "<message to='a@example.org' from='push.example.org'/>".to_owned(),
        ] {
            let (mut s, _) = opened();
            s.handle_data(bad.as_bytes(), t0());
            let acts = actions(&mut s);
            assert_eq!(
                closed_with(&acts),
                Some(Ended::Error(StreamCondition::NotAuthorized)),
                "{bad}"
            );
            assert_eq!(s.name(), None);
        }
    }

    #[test]
    fn the_digest_may_be_written_in_capitals_and_the_handshake_namespace_declared() {
        let (mut s, id) = opened();
        let upper = handshake(&id, SECRET)
            .to_uppercase()
            .replace("HANDSHAKE", "handshake");
        let declared = upper.replace("<handshake>", "<handshake xmlns='jabber:component:accept'>");
        s.handle_data(declared.as_bytes(), t0());
        assert_eq!(
            actions(&mut s),
            [StreamAction::Authenticated { name: NAME.into() }]
        );
    }

    #[test]
    fn an_unknown_component_name_is_host_unknown() {
        for open in [
            OPEN.replace("push.example.org", "other.example.org"),
            OPEN.replace(" to='push.example.org'", ""),
            OPEN.replace("push.example.org", "x@push.example.org"),
        ] {
            let mut s = ComponentStream::new(settings(), 7, t0());
            s.handle_data(open.as_bytes(), t0());
            let acts = actions(&mut s);
            let out = written(&acts);
            assert!(out.starts_with("<?xml"), "a header first: {out}");
            assert!(!out.contains("from="), "the name is not echoed: {out}");
            assert!(out.contains("<host-unknown"), "{out}");
            assert_eq!(
                closed_with(&acts),
                Some(Ended::Error(StreamCondition::HostUnknown))
            );
        }
    }

    #[test]
    fn a_second_connection_for_a_connected_name_is_refused_with_conflict() {
        let (mut s, id) = opened();
        // pipelined after the handshake: not read before the claim's answer
        let input = format!(
            "{}<message from='push.example.org' to='a@example.org'/>",
            handshake(&id, SECRET)
        );
        s.handle_data(input.as_bytes(), t0());
        assert_eq!(
            actions(&mut s),
            [StreamAction::Authenticated { name: NAME.into() }]
        );
        s.claimed(false);
        let acts = actions(&mut s);
        assert!(written(&acts).contains("<conflict"), "{acts:?}");
        assert!(stanzas(&acts).is_empty());
        assert_eq!(
            closed_with(&acts),
            Some(Ended::Error(StreamCondition::Conflict))
        );
    }

    #[test]
    fn a_stanza_claimed_after_the_handshake_is_read_once_the_name_is_claimed() {
        let (mut s, id) = opened();
        let input = format!(
            "{}<message from='push.example.org' to='a@example.org'/>",
            handshake(&id, SECRET)
        );
        s.handle_data(input.as_bytes(), t0());
        actions(&mut s);
        s.claimed(true);
        let acts = actions(&mut s);
        assert_eq!(written(&acts), "<handshake/>");
        assert_eq!(stanzas(&acts).len(), 1);
    }

    #[test]
    fn a_component_sending_from_outside_its_domain_ends_with_invalid_from() {
        for bad in [
            "<message from='alice@example.org' to='bob@example.org'/>",
            "<message from='example.org' to='bob@example.org'/>",
            "<message from='x@other.push.example.org' to='bob@example.org'/>",
            "<message to='bob@example.org'/>",
            "<presence from='@@' to='bob@example.org'/>",
        ] {
            let mut s = ready();
            s.handle_data(bad.as_bytes(), t0());
            let acts = actions(&mut s);
            assert!(stanzas(&acts).is_empty(), "{bad}");
            assert!(written(&acts).contains("<invalid-from"), "{bad}");
            assert_eq!(
                closed_with(&acts),
                Some(Ended::Error(StreamCondition::InvalidFrom)),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_stanza_without_to_is_answered_bad_request_and_the_stream_goes_on() {
        let mut s = ready();
        s.handle_data(
            b"<iq from='push.example.org' id='q1' type='get'><ping xmlns='urn:xmpp:ping'/></iq>",
            t0(),
        );
        let acts = actions(&mut s);
        assert!(stanzas(&acts).is_empty());
        let out = written(&acts);
        assert!(
            out.contains("<bad-request") && out.contains("id=\"q1\""),
            "{out}"
        );
        assert_eq!(closed_with(&acts), None);
        // (an error or a result without one is dropped, unanswered)
        s.handle_data(b"<iq from='push.example.org' id='q2' type='result'/>", t0());
        assert!(actions(&mut s).is_empty());
    }

    #[test]
    fn garbage_oversized_and_restricted_input_ends_the_component_stream() {
        let cases: [(&[u8], StreamCondition); 5] = [
            (b"<message from='push.example.org' to='a@example.org'><body>&bogus;</body></message>", StreamCondition::NotWellFormed),
            (b"hello", StreamCondition::NotWellFormed),
            (b"<!-- a comment -->", StreamCondition::RestrictedXml),
            (b"<r xmlns='urn:xmpp:sm:3'/>", StreamCondition::UnsupportedStanzaType),
            (b"<message from='push.example.org' to='a@example.org'><body>a\x01b</body></message>", StreamCondition::NotWellFormed),
        ];
        for (bad, condition) in cases {
            let mut s = ready();
            s.handle_data(bad, t0());
            let acts = actions(&mut s);
            assert_eq!(
                closed_with(&acts),
                Some(Ended::Error(condition)),
                "{}",
                String::from_utf8_lossy(bad)
            );
            assert!(stanzas(&acts).is_empty());
        }
        // one byte over 64 KiB, fed in pieces
        let mut s = ready();
        s.handle_data(
            b"<message from='push.example.org' to='a@example.org'><body>",
            t0(),
        );
        let big = vec![b'a'; 64 * 1024];
        s.handle_data(&big, t0());
        let acts = actions(&mut s);
        assert_eq!(
            closed_with(&acts),
            Some(Ended::Error(StreamCondition::PolicyViolation))
        );
        assert!(!s.wants_read());
        // a client's stream header on the component port
        let mut s = ComponentStream::new(settings(), 7, t0());
        s.handle_data(
            b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.org' version='1.0'>",
            t0(),
        );
        let acts = actions(&mut s);
        assert!(written(&acts).starts_with("<?xml"));
        assert_eq!(
            closed_with(&acts),
            Some(Ended::Error(StreamCondition::InvalidNamespace))
        );
    }

    #[test]
    fn a_handshake_not_done_in_ten_seconds_times_out() {
        let (mut s, _) = opened();
        let deadline = t0() + Duration::from_secs(10);
        assert_eq!(s.poll_timeout(), Some(deadline));
        s.handle_timeout(deadline - Duration::from_millis(1));
        assert!(actions(&mut s).is_empty());
        s.handle_timeout(deadline);
        let acts = actions(&mut s);
        assert!(written(&acts).contains("<connection-timeout"));
        assert_eq!(
            closed_with(&acts),
            Some(Ended::Error(StreamCondition::ConnectionTimeout))
        );
        assert_eq!(s.poll_timeout(), None);
        // a connection that never even sends its header: a header first
        let mut s = ComponentStream::new(settings(), 7, t0());
        s.handle_timeout(deadline);
        let out = written(&actions(&mut s));
        assert!(
            out.starts_with("<?xml") && out.contains("<connection-timeout"),
            "{out}"
        );
    }

    #[test]
    fn a_component_over_its_read_budget_is_not_read_until_it_refills() {
        let mut settings = (*settings()).clone();
        settings.read_rate = 1000;
        settings.read_burst = 1000;
        let mut s = ComponentStream::new(Arc::new(settings), 7, t0());
        s.handle_data(&[b' '; 1500], t0());
        assert!(!s.wants_read());
        let resume = s.poll_timeout().expect("a resumption time");
        assert_eq!(resume, t0() + Duration::from_millis(500));
        s.handle_timeout(resume);
        assert!(s.wants_read());
    }

    #[test]
    fn server_claims_for_the_servers_domain_are_cut_and_the_component_namespace_is_translated() {
        let mut s = ready();
        s.handle_data(
            concat!(
                "<message xmlns='jabber:component:accept' from='push.example.org' to='a@example.org'>",
                "<body>hi</body>",
                "<stanza-id xmlns='urn:xmpp:sid:0' by='a@example.org' id='forged'/>",
                "<stanza-id xmlns='urn:xmpp:sid:0' by='push.example.org' id='kept'/>",
                "<sent xmlns='urn:xmpp:carbons:2'/>",
                "</message>"
            )
            .as_bytes(),
            t0(),
        );
        let got = stanzas(&actions(&mut s));
        let [(_, payload)] = &got[..] else {
            panic!("{got:?}")
        };
        assert!(!payload.contains("jabber:component:accept"), "{payload}");
        let el = Element::parse(payload.as_bytes(), ns::CLIENT).expect("a stanza");
        assert_eq!(el.ns, ns::CLIENT);
        assert_eq!(
            el.child("body", ns::CLIENT).map(|b| b.text()).as_deref(),
            Some("hi")
        );
        assert!(
            !payload.contains("forged") && !payload.contains("carbons"),
            "{payload}"
        );
        assert!(payload.contains("kept"), "{payload}");
    }

    #[test]
    fn a_client_stanza_goes_to_a_component_in_the_components_namespace() {
        let plain = Bytes::from_static(
            b"<message from='a@example.org/r' to='push.example.org'><body>x</body></message>",
        );
        assert_eq!(to_component(plain.clone()), plain);
        let declared = Bytes::from_static(
            b"<message xmlns='jabber:client' from='a@example.org/r' to='push.example.org'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'/></forwarded></message>",
        );
        let out = to_component(declared);
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("<message from="), "{text}");
        // what is explicitly jabber:client inside stays so
        assert!(text.contains("<message xmlns='jabber:client'/>"), "{text}");
        let el = Element::parse(&out, ns::COMPONENT_ACCEPT).expect("parses");
        assert_eq!(el.ns, ns::COMPONENT_ACCEPT);
    }
}
