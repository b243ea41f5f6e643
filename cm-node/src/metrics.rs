//! Prometheus metrics of a CM (prefix `longlink_cm`, rendered by the admin
//! endpoint's `/metrics`, see [`crate::admin`]).
//!
//! Counters are shared atomics: the drivers count what happened (the
//! actions a session reports, what they read and write, what the pool and
//! the listeners refuse); no state machine touches them. What is counted
//! per stanza or per read is resolved once per transport at start
//! ([`TransportMetrics`]), so the hot path is a plain atomic add, without a
//! label lookup or an allocation. Labels name transports and fixed reasons,
//! never a client.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::encap_socket::EncapSocket;
use crate::session::{EndReason, LoginResult, Refusal};

/// A label set of fixed names and values (no allocation to look it up).
type Labels<const N: usize> = [(&'static str, &'static str); N];

/// The transport a client session came on (the `transport` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// A QUIC stream (XEP-0467).
    Quic,
    /// TCP with STARTTLS (RFC 6120).
    StartTls,
    /// TLS from the first byte (XEP-0368).
    DirectTls,
    /// WebSocket over TLS (RFC 7395).
    WebSocket,
}

impl Transport {
    /// Every transport.
    pub const ALL: [Transport; 4] = [
        Transport::Quic,
        Transport::StartTls,
        Transport::DirectTls,
        Transport::WebSocket,
    ];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::StartTls => "starttls",
            Transport::DirectTls => "tls",
            Transport::WebSocket => "websocket",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Something the CM dropped or refused (the `reason` label of
/// `longlink_cm_drops_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A client connection refused: the CM holds `max_clients`.
    MaxClients,
    /// A client connection refused: its address holds its cap of
    /// unauthenticated connections.
    PreAuthPerAddress,
    /// A TCP client that failed STARTTLS or the TLS handshake, or was too
    /// slow for them.
    TlsFailed,
    /// A WebSocket client whose TLS handshake or HTTP upgrade failed.
    WebSocketUpgradeFailed,
    /// A frame from the core for a session whose queue was full: the
    /// session is killed, the frame bounces.
    SessionQueueFull,
    /// A frame from the core for a session that has ended (a `Deliver`
    /// bounces to the core).
    SessionGone,
    /// A frame for the core above the frame limit.
    FrameTooLarge,
    /// A stanza (ack request, SM enable) of a session fenced after a core
    /// link came back without it: the client resends it after resuming or
    /// logging in again.
    Fenced,
    /// A frame of a session that moved to another core, taken from the
    /// old core's queue (not sent: the session was re-announced on the
    /// new core; a stanza's client is told to resume).
    Moved,
    /// A frame of a session kicked while its user's slot had no known
    /// owner (it held too much or waited too long).
    NoOwner,
    /// A session whose authentication, `Bind` or `Resume` went to a core
    /// taken for dead: kicked so its client tries again at once.
    CoreDied,
    /// A client stream the session closed for what the client sent.
    Session(Refusal),
}

impl DropReason {
    /// Every reason, for docs and to export zeros from the start.
    pub fn all() -> impl Iterator<Item = DropReason> {
        [
            DropReason::MaxClients,
            DropReason::PreAuthPerAddress,
            DropReason::TlsFailed,
            DropReason::WebSocketUpgradeFailed,
            DropReason::SessionQueueFull,
            DropReason::SessionGone,
            DropReason::FrameTooLarge,
            DropReason::Fenced,
            DropReason::Moved,
            DropReason::NoOwner,
            DropReason::CoreDied,
        ]
        .into_iter()
        .chain(Refusal::ALL.into_iter().map(DropReason::Session))
    }

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::MaxClients => "max_clients",
            DropReason::PreAuthPerAddress => "pre_auth_per_address",
            DropReason::TlsFailed => "tls_failed",
            DropReason::WebSocketUpgradeFailed => "websocket_upgrade_failed",
            DropReason::SessionQueueFull => "session_queue_full",
            DropReason::SessionGone => "session_gone",
            DropReason::FrameTooLarge => "frame_too_large",
            DropReason::Fenced => "fenced",
            DropReason::Moved => "moved",
            DropReason::NoOwner => "no_owner",
            DropReason::CoreDied => "core_died",
            DropReason::Session(r) => r.name(),
        }
    }
}

/// How a client stream ended, as far as the driver saw it (the `reason`
/// label of `longlink_cm_stream_ends_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The session ended it (see [`EndReason`]).
    Session(EndReason),
    /// The client's transport ended or failed without a stream close.
    Disconnected,
    /// A write to the client failed or took too long.
    WriteFailed,
    /// The pool to the core is gone (the CM is stopping).
    PoolClosed,
}

impl StreamEnd {
    /// The label value: a stream error's condition (`policy-violation`
    /// ...), or `client_closed`, `disconnected`, `write_failed`,
    /// `pool_closed`.
    pub fn name(self) -> &'static str {
        match self {
            StreamEnd::Session(EndReason::ClientClosed) => "client_closed",
            StreamEnd::Session(EndReason::StreamError { condition, .. }) => condition.name(),
            StreamEnd::Disconnected => "disconnected",
            StreamEnd::WriteFailed => "write_failed",
            StreamEnd::PoolClosed => "pool_closed",
        }
    }
}

/// What is counted per transport on the hot path (resolved at start).
#[derive(Clone, Debug, Default)]
pub struct TransportMetrics {
    /// Sessions open, not bound yet.
    pub negotiating: Gauge,
    /// Sessions bound (or resumed).
    pub bound: Gauge,
    /// Client connections accepted (QUIC: handshakes started; each may
    /// carry streams).
    pub accepted: Counter,
    /// Bytes read from clients (XMPP stream bytes, after TLS/QUIC).
    pub bytes_in: Counter,
    /// Bytes written to clients.
    pub bytes_out: Counter,
    /// Stanzas from clients relayed to the core.
    pub stanzas_in: Counter,
    /// Stanzas from the core handed to sessions for their clients.
    pub stanzas_out: Counter,
    /// Times a stream spent its read budget and reading paused.
    pub read_throttles: Counter,
}

/// Every metric a CM exports.
pub struct Metrics {
    registry: Registry,
    transports: [TransportMetrics; 4],
    /// Sessions by transport and state.
    sessions: Family<Labels<2>, Gauge>,
    /// Client connections accepted, by transport.
    accepted: Family<Labels<1>, Counter>,
    /// Client bytes, by transport and direction.
    bytes: Family<Labels<2>, Counter>,
    /// Client stanzas, by transport and direction.
    stanzas: Family<Labels<2>, Counter>,
    /// Read pauses, by transport.
    read_throttles: Family<Labels<1>, Counter>,
    /// SASL outcomes, by transport and result.
    logins: Family<Labels<2>, Counter>,
    /// Client stream ends, by transport and reason.
    stream_ends: Family<Labels<2>, Counter>,
    /// Drops and refusals, by reason.
    drops: Family<Labels<1>, Counter>,
    /// Client connections open now (set when scraped).
    pub connections: Gauge,
    /// Bytes of frames queued, toward clients and toward the core.
    queued: Family<Labels<1>, Gauge>,
    /// Frames to and from the core.
    core_frames: Family<Labels<1>, Counter>,
    /// Pooled core connections up (welcomed).
    pub core_links: Gauge,
    /// Pooled core connections lost or failed to come up.
    pub core_link_failures: Counter,
    /// Core pools (one per core the CM dials; set when scraped).
    pub core_pools: Gauge,
    /// Shard slots whose owning core is known (0 with a single core; set
    /// when scraped).
    pub owned_slots: Gauge,
    /// Bytes of session frames held while their user's slot has no known
    /// owner (set when scraped).
    pub held_for_owner_bytes: Gauge,
    /// Sessions that closed resumably, remembered for their slots' next
    /// owners (set when scraped).
    pub detached_sessions: Gauge,
    /// Bytes those remembered sessions count (set when scraped).
    pub detached_bytes: Gauge,
    /// QUIC handshakes that completed (the client's Finished arrived).
    pub quic_handshakes_completed: Counter,
    /// QUIC handshakes that failed.
    pub quic_handshakes_failed: Counter,
    /// QUIC connection attempts answered with a Retry.
    pub quic_retries: Counter,
    /// Client QUIC path changes (migrations) seen.
    pub quic_path_changes: Counter,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("longlink_cm");
        let sessions = Family::<Labels<2>, Gauge>::default();
        let accepted = Family::<Labels<1>, Counter>::default();
        let bytes = Family::<Labels<2>, Counter>::default();
        let stanzas = Family::<Labels<2>, Counter>::default();
        let read_throttles = Family::<Labels<1>, Counter>::default();
        let transports = Transport::ALL.map(|t| {
            let name = t.name();
            let dir = |d: &'static str| [("transport", name), ("direction", d)];
            TransportMetrics {
                negotiating: sessions
                    .get_or_create_owned(&[("transport", name), ("state", "negotiating")]),
                bound: sessions.get_or_create_owned(&[("transport", name), ("state", "bound")]),
                accepted: accepted.get_or_create_owned(&[("transport", name)]),
                bytes_in: bytes.get_or_create_owned(&dir("in")),
                bytes_out: bytes.get_or_create_owned(&dir("out")),
                stanzas_in: stanzas.get_or_create_owned(&dir("in")),
                stanzas_out: stanzas.get_or_create_owned(&dir("out")),
                read_throttles: read_throttles.get_or_create_owned(&[("transport", name)]),
            }
        });
        let m = Self {
            registry: Registry::default(),
            transports,
            sessions,
            accepted,
            bytes,
            stanzas,
            read_throttles,
            logins: Family::default(),
            stream_ends: Family::default(),
            drops: Family::default(),
            connections: Gauge::default(),
            queued: Family::default(),
            core_frames: Family::default(),
            core_links: Gauge::default(),
            core_link_failures: Counter::default(),
            core_pools: Gauge::default(),
            owned_slots: Gauge::default(),
            held_for_owner_bytes: Gauge::default(),
            detached_sessions: Gauge::default(),
            detached_bytes: Gauge::default(),
            quic_handshakes_completed: Counter::default(),
            quic_handshakes_failed: Counter::default(),
            quic_retries: Counter::default(),
            quic_path_changes: Counter::default(),
        };
        registry.register(
            "sessions",
            "Client sessions open, by transport and state (negotiating, bound)",
            m.sessions.clone(),
        );
        registry.register(
            "connections",
            "Client connections open (every transport)",
            m.connections.clone(),
        );
        registry.register(
            "connections_accepted",
            "Client connections accepted, by transport",
            m.accepted.clone(),
        );
        registry.register(
            "client_bytes",
            "XMPP stream bytes from (in) and to (out) clients, by transport",
            m.bytes.clone(),
        );
        registry.register(
            "stanzas",
            "Stanzas from clients to the core (in) and from the core to clients (out), by transport",
            m.stanzas.clone(),
        );
        registry.register(
            "read_throttles",
            "Times a client stream spent its read budget and reading paused, by transport",
            m.read_throttles.clone(),
        );
        registry.register(
            "logins",
            "SASL authentications by transport and result",
            m.logins.clone(),
        );
        registry.register(
            "stream_ends",
            "Client streams ended, by transport and reason (stream error condition, client_closed, disconnected, write_failed, pool_closed)",
            m.stream_ends.clone(),
        );
        registry.register(
            "drops",
            "Connections, frames and streams the CM dropped or refused, by reason",
            m.drops.clone(),
        );
        registry.register(
            "queued_bytes",
            "Bytes of frames queued toward clients and toward the core",
            m.queued.clone(),
        );
        registry.register(
            "core_frames",
            "Frames sent to (out) and received from (in) the core",
            m.core_frames.clone(),
        );
        registry.register(
            "core_links",
            "Pooled connections to the core that are up",
            m.core_links.clone(),
        );
        registry.register(
            "core_link_failures",
            "Pooled connections to the core lost or failed to come up",
            m.core_link_failures.clone(),
        );
        registry.register(
            "core_pools",
            "Core pools: one per core this CM dials (the configured one and those SlotOwners name)",
            m.core_pools.clone(),
        );
        registry.register(
            "owned_slots",
            "Shard slots whose owning core is known (0 with a single core)",
            m.owned_slots.clone(),
        );
        registry.register(
            "held_for_owner_bytes",
            "Bytes of session frames held while their user's slot has no known owner",
            m.held_for_owner_bytes.clone(),
        );
        registry.register(
            "detached_sessions",
            "Sessions that closed resumably, remembered for their slots' next owners",
            m.detached_sessions.clone(),
        );
        registry.register(
            "detached_bytes",
            "Bytes of the sessions remembered for their slots' next owners",
            m.detached_bytes.clone(),
        );
        registry.register(
            "quic_handshakes_completed",
            "Client QUIC handshakes that completed",
            m.quic_handshakes_completed.clone(),
        );
        registry.register(
            "quic_handshakes_failed",
            "Client QUIC handshakes that failed",
            m.quic_handshakes_failed.clone(),
        );
        registry.register(
            "quic_retries",
            "Client QUIC connection attempts answered with a Retry",
            m.quic_retries.clone(),
        );
        registry.register(
            "quic_path_changes",
            "Client QUIC path changes (migrations) seen on stream reads",
            m.quic_path_changes.clone(),
        );
        for reason in DropReason::all() {
            let _ = m.drops.get_or_create(&[("reason", reason.name())]);
        }
        for toward in ["clients", "core"] {
            let _ = m.queued.get_or_create(&[("toward", toward)]);
        }
        for direction in ["in", "out"] {
            let _ = m.core_frames.get_or_create(&[("direction", direction)]);
        }
        Self { registry, ..m }
    }

    /// Behind a balancer: also exports what the encapsulating `socket`
    /// took and dropped (its own counters, read when scraped).
    pub fn with_encap_socket(mut self, socket: Arc<EncapSocket>) -> Self {
        self.registry
            .register_collector(Box::new(EncapCollector(socket)));
        self
    }

    /// The hot-path metrics of `transport`.
    pub fn transport(&self, transport: Transport) -> &TransportMetrics {
        &self.transports[transport.index()]
    }

    /// Counts a SASL outcome.
    pub fn login(&self, transport: Transport, result: LoginResult) {
        self.logins
            .get_or_create(&[("transport", transport.name()), ("result", result.name())])
            .inc();
    }

    /// Counts a client stream's end.
    pub fn stream_ended(&self, transport: Transport, end: StreamEnd) {
        self.stream_ends
            .get_or_create(&[("transport", transport.name()), ("reason", end.name())])
            .inc();
    }

    /// Counts something dropped or refused.
    pub fn dropped(&self, reason: DropReason) {
        self.drops.get_or_create(&[("reason", reason.name())]).inc();
    }

    /// The gauge of bytes queued toward the clients (every session's queue).
    pub fn queued_toward_clients(&self) -> Gauge {
        self.queued.get_or_create_owned(&[("toward", "clients")])
    }

    /// The gauge of bytes queued toward the core (every pool connection's
    /// queue).
    pub fn queued_toward_core(&self) -> Gauge {
        self.queued.get_or_create_owned(&[("toward", "core")])
    }

    /// The counter of frames sent to the core.
    pub fn frames_to_core(&self) -> Counter {
        self.core_frames
            .get_or_create_owned(&[("direction", "out")])
    }

    /// The counter of frames received from the core.
    pub fn frames_from_core(&self) -> Counter {
        self.core_frames.get_or_create_owned(&[("direction", "in")])
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Exports an [`EncapSocket`]'s counters.
#[derive(Debug)]
struct EncapCollector(Arc<EncapSocket>);

impl Collector for EncapCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counters = [
            (
                "encap_datagrams_received",
                "Datagrams from the balancer handed to QUIC",
                &self.0.received,
            ),
            (
                "encap_datagrams_dropped",
                "Datagrams on the balancer socket dropped (not from the balancer, or a bad header)",
                &self.0.dropped,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value.load(Ordering::Relaxed));
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use xmpp_stream::StreamCondition;

    use super::*;

    fn value(text: &str, name: &str) -> Option<f64> {
        text.lines().find_map(|line| {
            let (n, v) = line.rsplit_once(' ')?;
            (n == name).then(|| v.parse().ok()).flatten()
        })
    }

    #[test]
    fn every_transport_state_and_drop_reason_is_exported_from_the_start() {
        let text = Metrics::new().render();
        for t in ["quic", "starttls", "tls", "websocket"] {
            for state in ["negotiating", "bound"] {
                let name = format!("longlink_cm_sessions{{transport=\"{t}\",state=\"{state}\"}}");
                assert_eq!(value(&text, &name), Some(0.0), "{name}: {text}");
            }
            let name = format!("longlink_cm_stanzas_total{{transport=\"{t}\",direction=\"in\"}}");
            assert_eq!(value(&text, &name), Some(0.0), "{name}: {text}");
        }
        for reason in DropReason::all() {
            let name = format!("longlink_cm_drops_total{{reason=\"{}\"}}", reason.name());
            assert_eq!(value(&text, &name), Some(0.0), "{name}: {text}");
        }
        let reasons: Vec<_> = DropReason::all().map(DropReason::name).collect();
        let mut unique = reasons.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), reasons.len(), "{reasons:?}");
    }

    #[tokio::test]
    async fn an_encapsulating_sockets_counts_are_read_when_scraped() {
        let io = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let socket = Arc::new(EncapSocket::new(io, "127.0.0.1:9".parse().unwrap()));
        let m = Metrics::new().with_encap_socket(socket.clone());
        let received = "longlink_cm_encap_datagrams_received_total";
        let dropped = "longlink_cm_encap_datagrams_dropped_total";
        assert_eq!(value(&m.render(), received), Some(0.0));
        socket.received.fetch_add(5, Ordering::Relaxed);
        socket.dropped.fetch_add(2, Ordering::Relaxed);
        let text = m.render();
        assert_eq!(value(&text, received), Some(5.0), "{text}");
        assert_eq!(value(&text, dropped), Some(2.0), "{text}");
        // without a balancer there is nothing to export
        assert_eq!(value(&Metrics::new().render(), received), None);
    }

    #[test]
    fn the_hot_path_handles_are_the_exported_series() {
        let m = Metrics::new();
        let quic = m.transport(Transport::Quic);
        quic.stanzas_in.inc_by(3);
        quic.bound.inc();
        m.transport(Transport::WebSocket).bytes_out.inc_by(42);
        m.login(Transport::StartTls, LoginResult::Failed);
        m.stream_ended(
            Transport::Quic,
            StreamEnd::Session(EndReason::StreamError {
                condition: StreamCondition::PolicyViolation,
                refusal: Some(Refusal::StanzaLimits),
            }),
        );
        m.stream_ended(Transport::Quic, StreamEnd::Disconnected);
        m.dropped(DropReason::Session(Refusal::StanzaLimits));
        m.queued_toward_core().inc_by(7);
        let text = m.render();
        let expect = [
            (
                "longlink_cm_stanzas_total{transport=\"quic\",direction=\"in\"}",
                3.0,
            ),
            (
                "longlink_cm_sessions{transport=\"quic\",state=\"bound\"}",
                1.0,
            ),
            (
                "longlink_cm_client_bytes_total{transport=\"websocket\",direction=\"out\"}",
                42.0,
            ),
            (
                "longlink_cm_logins_total{transport=\"starttls\",result=\"failed\"}",
                1.0,
            ),
            (
                "longlink_cm_stream_ends_total{transport=\"quic\",reason=\"policy-violation\"}",
                1.0,
            ),
            (
                "longlink_cm_stream_ends_total{transport=\"quic\",reason=\"disconnected\"}",
                1.0,
            ),
            ("longlink_cm_drops_total{reason=\"stanza_limits\"}", 1.0),
            ("longlink_cm_queued_bytes{toward=\"core\"}", 7.0),
        ];
        for (name, v) in expect {
            assert_eq!(value(&text, name), Some(v), "{name}: {text}");
        }
    }
}
