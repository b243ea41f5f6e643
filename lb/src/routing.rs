//! The live routing table and how membership changes reach it.
//!
//! [`Routing`] holds the [`Balancer`] the data-plane threads read for every
//! datagram, and the [`Membership`] state machine that decides what goes
//! in it. Every membership input (a registration, the end of a control
//! connection, a drain) goes through [`Membership`] under its lock, and the
//! [`Change`]s it returns are applied to the table before the lock is
//! released, so the table follows the state machine in order.
//! [`Routing::run_timers`] is the thin driver of its deadlines: it sleeps
//! until [`Membership::poll_timeout`] and then hands the state machine the
//! time (tokio's clock throughout, so paused time in tests moves it).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::Instant;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::balancer::{Backend, Balancer};
use crate::membership::{Change, Membership, Refused, RegistrationId};
use crate::metrics::Metrics;

/// The routing table and its membership (see the module docs).
pub(crate) struct Routing {
    table: RwLock<Balancer>,
    membership: Mutex<Membership>,
    metrics: Arc<Metrics>,
    /// Woken when an input may have moved the next deadline.
    deadline_moved: Notify,
}

impl Routing {
    /// An empty table.
    pub(crate) fn new(balancer: Balancer, metrics: Arc<Metrics>) -> Self {
        Self {
            table: RwLock::new(balancer),
            membership: Mutex::new(Membership::new()),
            metrics,
            deadline_moved: Notify::new(),
        }
    }

    /// The table, for routing a datagram; `None` if a writer panicked.
    pub(crate) fn table(&self) -> Option<RwLockReadGuard<'_, Balancer>> {
        self.table.read().ok()
    }

    /// The CMs in the table.
    pub(crate) fn backends(&self) -> Vec<Backend> {
        self.table()
            .map(|b| b.backends().to_vec())
            .unwrap_or_default()
    }

    /// A CM's registration arrived on a control connection. Returns its id
    /// and whether the CM joined draining.
    pub(crate) fn register(
        &self,
        node: &str,
        server_id: Vec<u8>,
        addr: SocketAddr,
    ) -> Result<(RegistrationId, bool), Refused> {
        let mut membership = self.membership();
        let registered = membership.register(now(), node, server_id, addr);
        let draining = membership.is_draining(node);
        self.apply(&mut membership);
        registered.map(|id| (id, draining))
    }

    /// The control connection of `registration` ended; true if the CM left
    /// the table (it had not registered again meanwhile).
    pub(crate) fn connection_ended(&self, node: &str, registration: RegistrationId) -> bool {
        let mut membership = self.membership();
        let left = membership.connection_ended(now(), node, registration);
        self.apply(&mut membership);
        left
    }

    /// Drains (or undrains) a CM; false if it is not in the table (nor, when
    /// undraining, drained while away).
    pub(crate) fn set_draining(&self, node: &str, draining: bool) -> bool {
        let mut membership = self.membership();
        let known = membership.set_draining(node, draining);
        self.apply(&mut membership);
        if known {
            tracing::info!(node, draining, "drain state changed");
        }
        known
    }

    /// Hands [`Membership`] the time at each of its deadlines, until shutdown.
    pub(crate) async fn run_timers(&self, shutdown: CancellationToken) {
        loop {
            // An input that moves the deadline after it is read below leaves
            // a permit (`notify_one`), so this wakes up at once.
            let moved = self.deadline_moved.notified();
            let deadline = self.membership().poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = moved => {}
                _ = sleep => {
                    let mut membership = self.membership();
                    membership.handle_timeout(now());
                    self.apply(&mut membership);
                }
            }
        }
    }

    fn membership(&self) -> MutexGuard<'_, Membership> {
        self.membership.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies every pending change to the table (called with the
    /// membership locked, so changes land in the order they were decided).
    /// An input that changed nothing (a refused registration, the end of a
    /// replaced one, draining an unknown node) takes no table lock and
    /// wakes no timer: only a change can move a deadline.
    fn apply(&self, membership: &mut Membership) {
        let Some(first) = membership.poll_change() else {
            return;
        };
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        let pending = std::iter::from_fn(|| membership.poll_change());
        for change in std::iter::once(first).chain(pending) {
            match change {
                Change::Join {
                    node,
                    server_id,
                    addr,
                    draining,
                } => {
                    let labels = vec![("backend", node.clone())];
                    table.upsert(Backend {
                        name: node,
                        server_id,
                        addr,
                        draining,
                        packets: self.metrics.packets.get_or_create(&labels).clone(),
                        bytes: self.metrics.bytes.get_or_create(&labels).clone(),
                    });
                    self.metrics.membership_changes.inc();
                }
                Change::Leave { node } => {
                    table.remove(&node);
                    self.metrics.membership_changes.inc();
                }
                Change::Drain { node, draining } => {
                    table.set_draining(&node, draining);
                    self.metrics.membership_changes.inc();
                }
                Change::Depart { server_id } => {
                    tracing::debug!(
                        ?server_id,
                        "CM stayed away: its clients get stateless resets"
                    );
                    table.mark_departed(&server_id);
                }
                Change::Forget { server_id } => table.forget_departed(&server_id),
            }
        }
        self.metrics.backends.set(table.backends().len() as i64);
        drop(table);
        self.deadline_moved.notify_one();
    }
}

/// The drivers' clock: tokio's, as the `std` instant [`Membership`] takes.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use lb_protocol::{CidEncoder, LbConfig};

    use super::*;
    use crate::balancer::{Decision, DropReason};
    use crate::membership::DEPARTED_GRACE;

    fn config() -> LbConfig {
        LbConfig::new(0, 2, 6, Some([7u8; 16])).unwrap()
    }

    fn short(cid: &[u8]) -> Vec<u8> {
        let mut p = vec![0x40];
        p.extend_from_slice(cid);
        p.extend_from_slice(&[0xaa; 40]);
        p
    }

    fn route(routing: &Routing, datagram: &[u8]) -> Decision {
        routing.table().unwrap().route(datagram)
    }

    fn routing(metrics: &Arc<Metrics>) -> Routing {
        Routing::new(
            Balancer::new(vec![config()], 65_537).unwrap(),
            metrics.clone(),
        )
    }

    /// Whether an input woke the timer task (a permit is waiting).
    async fn timer_woken(routing: &Routing) -> bool {
        tokio::time::timeout(Duration::ZERO, routing.deadline_moved.notified())
            .await
            .is_ok()
    }

    // Paused time: the driver must take the time from tokio's clock, or
    // the deadline never passes for the state machine.
    #[tokio::test(start_paused = true)]
    async fn the_driver_hands_a_departed_cms_clients_to_the_maglev_pick_exactly_after_the_grace() {
        let wall_clock = std::time::Instant::now();
        let metrics = Arc::new(Metrics::new());
        let routing = Arc::new(routing(&metrics));
        let shutdown = CancellationToken::new();
        let timers = tokio::spawn({
            let (routing, shutdown) = (routing.clone(), shutdown.clone());
            async move { routing.run_timers(shutdown).await }
        });
        let a = SocketAddr::from(([127, 0, 0, 1], 9001));
        let b = SocketAddr::from(([127, 0, 0, 1], 9002));
        let r1 = routing.register("cm-1", vec![0, 1], a).unwrap().0;
        routing.register("cm-2", vec![0, 2], b).unwrap();
        assert_eq!(metrics.backends.get(), 2);
        let cid = CidEncoder::new(config(), &[0, 1]).unwrap().generate();
        assert_eq!(
            route(&routing, &short(&cid)),
            Decision::Forward { index: 0, addr: a }
        );

        assert!(routing.connection_ended("cm-1", r1));
        assert_eq!(metrics.backends.get(), 1);
        let dropped = Decision::Drop(DropReason::UnknownServer);
        assert_eq!(route(&routing, &short(&cid)), dropped);
        // the driver was asleep with no deadline: the leave must wake it
        tokio::time::sleep(DEPARTED_GRACE - Duration::from_millis(1)).await;
        assert_eq!(route(&routing, &short(&cid)), dropped);
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(
            route(&routing, &short(&cid)),
            Decision::Forward { index: 0, addr: b }
        );
        // on tokio's clock, not after spinning until the wall clock caught up
        assert!(wall_clock.elapsed() < DEPARTED_GRACE);

        shutdown.cancel();
        timers.await.unwrap();
    }

    #[tokio::test]
    async fn an_input_that_changes_nothing_leaves_the_table_and_the_timer_alone() {
        let metrics = Arc::new(Metrics::new());
        let routing = routing(&metrics);
        let addr = SocketAddr::from(([127, 0, 0, 1], 9001));
        let (old, _) = routing.register("cm-1", vec![0, 1], addr).unwrap();
        assert!(timer_woken(&routing).await);
        assert!(!timer_woken(&routing).await);
        // a refused registration
        assert!(routing.register("cm-2", vec![0, 1], addr).is_err());
        assert!(!timer_woken(&routing).await);
        // the end of a replaced registration
        routing.register("cm-1", vec![0, 1], addr).unwrap();
        assert!(timer_woken(&routing).await);
        assert!(!routing.connection_ended("cm-1", old));
        assert!(!timer_woken(&routing).await);
        // draining a node that is not registered
        assert!(!routing.set_draining("cm-9", true));
        assert!(!timer_woken(&routing).await);
        assert_eq!(metrics.membership_changes.get(), 2);
    }

    #[test]
    fn drains_and_refusals_through_the_driver_reach_the_table_and_metrics() {
        let metrics = Arc::new(Metrics::new());
        let routing = Routing::new(
            Balancer::new(vec![config()], 65_537).unwrap(),
            metrics.clone(),
        );
        assert!(!routing.set_draining("cm-1", true));
        let addr = SocketAddr::from(([127, 0, 0, 1], 9001));
        let (_, draining) = routing.register("cm-1", vec![0, 1], addr).unwrap();
        assert!(!draining, "a drain of an unknown name is not remembered");
        assert!(routing.set_draining("cm-1", true));
        assert!(routing.backends()[0].draining);
        assert!(routing.set_draining("cm-1", false));
        assert!(!routing.backends()[0].draining);
        assert_eq!(metrics.membership_changes.get(), 3);
        assert_eq!(
            routing.register("cm-2", vec![0, 1], addr).unwrap_err(),
            Refused::ServerIdTaken { by: "cm-1".into() }
        );
        assert_eq!(routing.backends().len(), 1);
        assert_eq!(metrics.membership_changes.get(), 3);
    }
}
