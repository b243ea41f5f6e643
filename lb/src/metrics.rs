//! Prometheus metrics of the balancer (rendered by the admin endpoint's
//! `/metrics`).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::balancer::DropReason;
use crate::data_plane::DROP_REASONS as DATA_PLANE_DROPS;

type Labels = Vec<(&'static str, String)>;

/// Every metric the balancer exports.
pub struct Metrics {
    registry: Registry,
    /// Datagrams forwarded to each CM.
    pub packets: Family<Labels, Counter>,
    /// Bytes forwarded to each CM.
    pub bytes: Family<Labels, Counter>,
    /// Datagrams dropped, by reason.
    pub drops: Family<Labels, Counter>,
    /// Datagrams returned from CMs to clients.
    pub returned: Counter,
    /// Maglev table size.
    pub table_size: Gauge,
    /// CMs in the table.
    pub backends: Gauge,
    /// Joins, leaves and drain changes.
    pub membership_changes: Counter,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("longlink_lb");
        let m = Self {
            registry: Registry::default(),
            packets: Family::default(),
            bytes: Family::default(),
            drops: Family::default(),
            returned: Counter::default(),
            table_size: Gauge::default(),
            backends: Gauge::default(),
            membership_changes: Counter::default(),
        };
        registry.register(
            "packets",
            "Datagrams forwarded to each CM",
            m.packets.clone(),
        );
        registry.register("bytes", "Bytes forwarded to each CM", m.bytes.clone());
        registry.register("drops", "Datagrams dropped by reason", m.drops.clone());
        registry.register(
            "returned",
            "Datagrams returned from CMs to clients",
            m.returned.clone(),
        );
        registry.register("table_size", "Maglev table size", m.table_size.clone());
        registry.register("backends", "CMs in the table", m.backends.clone());
        registry.register(
            "membership_changes",
            "Joins, leaves and drain changes",
            m.membership_changes.clone(),
        );
        for reason in drop_reasons() {
            let _ = m.drops.get_or_create(&vec![("reason", reason.to_owned())]);
        }
        Self { registry, ..m }
    }

    /// Counts a dropped datagram.
    pub fn dropped(&self, reason: &'static str) {
        self.drops
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
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

/// Every drop reason counted (for docs and tests): the balancer's, the data
/// plane's, and refused control connections.
pub fn drop_reasons() -> impl Iterator<Item = &'static str> {
    DropReason::ALL
        .iter()
        .map(|r| r.name())
        .chain(DATA_PLANE_DROPS)
        .chain(["control_refused"])
}
