//! The data plane: one thread per public socket (client → CM) and one for
//! the backend socket (CM → client), each receiving in batches
//! ([`recv_batches`]), asking the routing table, and sending each forwarded
//! datagram encapsulated (client → CM, gathered into GSO sends per CM) or
//! decapsulated (CM → client).

use std::cell::RefCell;
use std::sync::Arc;

use lb_protocol::encap;
use tokio_util::sync::CancellationToken;

use crate::balancer::Decision;
use crate::metrics::Metrics;
use crate::routing::Routing;
use crate::server::LbError;
use crate::udp::{Outbox, UdpIo, recv_batches};

/// Drop reasons the data plane counts besides the balancer's
/// [`DropReason`](crate::balancer::DropReason)s.
pub const DROP_REASONS: [&str; 4] = [
    "send_busy",
    "foreign_return",
    "bad_encapsulation",
    "no_public_socket",
];

/// The data plane's sockets and what its threads share.
pub(crate) struct DataPlane {
    /// The table each datagram is routed by.
    pub(crate) routing: Arc<Routing>,
    /// Per-CM traffic and drops.
    pub(crate) metrics: Arc<Metrics>,
    /// Client-facing sockets.
    pub(crate) public: Vec<UdpIo>,
    /// The socket CMs exchange encapsulated datagrams with.
    pub(crate) backend: UdpIo,
}

impl DataPlane {
    /// Starts the threads; they stop at `shutdown`.
    pub(crate) fn start(self: &Arc<Self>, shutdown: &CancellationToken) -> Result<(), LbError> {
        for i in 0..self.public.len() {
            let (plane, stop) = (self.clone(), shutdown.clone());
            spawn_thread(format!("lb-client-{i}"), move || {
                plane.client_loop(i, &stop)
            })?;
        }
        let (plane, stop) = (self.clone(), shutdown.clone());
        spawn_thread("lb-backend".into(), move || plane.backend_loop(&stop))
    }

    /// Client → CM: route, encapsulate, send.
    fn client_loop(&self, index: usize, shutdown: &CancellationToken) {
        let io = &self.public[index];
        let outbox = RefCell::new(Outbox::new(self.backend.max_gso_segments()));
        recv_batches(
            io,
            shutdown,
            |datagram, from| {
                let Some(balancer) = self.routing.table() else {
                    return;
                };
                match balancer.route(datagram) {
                    Decision::Forward { index, addr } => {
                        let len = encap::header_len(&from) + datagram.len();
                        let sent = outbox.borrow_mut().push(&self.backend, addr, len, |buf| {
                            encap::encode(from, datagram, buf);
                        });
                        if !sent {
                            self.metrics.dropped("send_busy");
                        }
                        let backend = &balancer.backends()[index];
                        backend.packets.inc();
                        backend.bytes.inc_by(datagram.len() as u64);
                    }
                    Decision::Drop(reason) => self.metrics.dropped(reason.name()),
                }
            },
            || {
                if !outbox.borrow_mut().flush(&self.backend) {
                    self.metrics.dropped("send_busy");
                }
            },
        );
    }

    /// CM → client: accept only registered CMs, decapsulate, send from the
    /// public socket of the client's address family.
    fn backend_loop(&self, shutdown: &CancellationToken) {
        recv_batches(
            &self.backend,
            shutdown,
            |datagram, from| {
                let known = self
                    .routing
                    .table()
                    .map(|b| b.is_backend_addr(&from))
                    .unwrap_or(false);
                if !known {
                    self.metrics.dropped("foreign_return");
                    return;
                }
                let Ok((client, payload)) = encap::decode(datagram) else {
                    self.metrics.dropped("bad_encapsulation");
                    return;
                };
                let Some(public) = self
                    .public
                    .iter()
                    .find(|p| p.addr.is_ipv4() == client.is_ipv4())
                else {
                    self.metrics.dropped("no_public_socket");
                    return;
                };
                if public.send(client, payload, None) {
                    self.metrics.returned.inc();
                } else {
                    self.metrics.dropped("send_busy");
                }
            },
            || {},
        );
    }
}

fn spawn_thread(name: String, f: impl FnOnce() + Send + 'static) -> Result<(), LbError> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map(|_| ())
        .map_err(LbError::io(format!("start thread {name}")))
}
