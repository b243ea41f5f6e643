//! Prometheus metrics of the core.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label set with one `reason` or `kind` label.
pub type Labels = Vec<(&'static str, String)>;

/// Every metric the core exports.
pub struct Metrics {
    registry: Registry,
    /// Stanzas received from CMs, by kind.
    pub stanzas: Family<Labels, Counter>,
    /// Deliver frames sent to CMs.
    pub delivered: Counter,
    /// Messages stored offline.
    pub offline_stored: Counter,
    /// Offline messages delivered.
    pub offline_delivered: Counter,
    /// Archive entries written (one per archive a message goes into).
    pub archived: Counter,
    /// Authentication outcomes by result.
    pub auth: Family<Labels, Counter>,
    /// In-band registrations by result.
    pub registrations: Family<Labels, Counter>,
    /// CM connections refused or dropped, by reason.
    pub link_errors: Family<Labels, Counter>,
    /// Frames dropped because a CM link was full.
    pub link_overflow: Counter,
    /// Durable writes the fence refused: this core had lost the slot of a
    /// user the write was for (in a cluster only).
    pub writes_fenced: Counter,
    /// Pooled CM connections registered (set by the link registry).
    pub cm_connections: Gauge,
    /// CM nodes with at least one registered connection (set by the link
    /// registry).
    pub cm_nodes: Gauge,
    /// Bound sessions in the routing table.
    pub sessions: Gauge,
    /// SM sessions resumed since start.
    pub sm_resumed: Gauge,
    /// Resumptions refused since start.
    pub sm_resume_failed: Gauge,
    /// Detached SM sessions expired since start.
    pub sm_expired: Gauge,
    /// SM sessions tracked, and of those detached.
    pub sm_sessions: Family<Labels, Gauge>,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("longlink_core");
        let m = Self {
            stanzas: Family::default(),
            delivered: Counter::default(),
            offline_stored: Counter::default(),
            offline_delivered: Counter::default(),
            archived: Counter::default(),
            auth: Family::default(),
            registrations: Family::default(),
            link_errors: Family::default(),
            link_overflow: Counter::default(),
            writes_fenced: Counter::default(),
            cm_connections: Gauge::default(),
            cm_nodes: Gauge::default(),
            sessions: Gauge::default(),
            sm_resumed: Gauge::default(),
            sm_resume_failed: Gauge::default(),
            sm_expired: Gauge::default(),
            sm_sessions: Family::default(),
            registry: Registry::default(),
        };
        registry.register("stanzas", "Stanzas received from CMs", m.stanzas.clone());
        registry.register(
            "delivered",
            "Stanzas sent to CMs for delivery",
            m.delivered.clone(),
        );
        registry.register(
            "offline_stored",
            "Messages stored offline",
            m.offline_stored.clone(),
        );
        registry.register(
            "registrations",
            "In-band registrations (XEP-0077) by result",
            m.registrations.clone(),
        );
        registry.register(
            "archived",
            "Archive entries written (XEP-0313)",
            m.archived.clone(),
        );
        registry.register(
            "offline_delivered",
            "Offline message batches handed to sessions",
            m.offline_delivered.clone(),
        );
        registry.register("auth", "SASL authentications by result", m.auth.clone());
        registry.register(
            "link_errors",
            "CM connections refused or failed",
            m.link_errors.clone(),
        );
        registry.register(
            "link_overflow",
            "Frames to a CM dropped because its link was full",
            m.link_overflow.clone(),
        );
        registry.register(
            "writes_fenced",
            "Durable writes refused by the fence: the core had lost the slot",
            m.writes_fenced.clone(),
        );
        registry.register(
            "cm_connections",
            "Pooled CM connections",
            m.cm_connections.clone(),
        );
        registry.register("cm_nodes", "CM nodes connected", m.cm_nodes.clone());
        registry.register(
            "sessions",
            "Sessions in the routing table",
            m.sessions.clone(),
        );
        registry.register(
            "sm_resumed",
            "Stream-management sessions resumed",
            m.sm_resumed.clone(),
        );
        registry.register(
            "sm_resume_failed",
            "Resumptions refused (unknown, forged or expired SM id)",
            m.sm_resume_failed.clone(),
        );
        registry.register(
            "sm_expired",
            "Detached SM sessions expired (unacknowledged messages stored offline)",
            m.sm_expired.clone(),
        );
        registry.register(
            "sm_sessions",
            "Stream-management sessions tracked, by state",
            m.sm_sessions.clone(),
        );
        Self { registry, ..m }
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

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One label pair.
pub fn label(key: &'static str, value: &str) -> Labels {
    vec![(key, value.to_owned())]
}
