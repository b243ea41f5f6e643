//! The router's tokio driver: feeds events to the sans-IO [`Router`] and
//! carries out its actions (frames to CM links, offline storage).

use std::sync::Arc;

use bytes::Bytes;
use cm_protocol::Frame;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use xmpp_stream::StanzaCondition;
use xmpp_stream::stanza::{append_child, delay_element, inspect};

use crate::links::{Links, NodeInfo, SendError};
use crate::metrics::{Metrics, label};
use crate::router::{Action, Bounce, Input, Router};
use crate::routing::{NodeId, RouteRow, SessionAddr};
use crate::storage::{Storage, StorageError, Stored};

/// Events for the router task.
pub enum Event {
    /// An input for the router.
    Router(Input),
    /// Storing an offline message failed.
    OfflineFailed(Bounce, StanzaCondition),
    /// The admin endpoint wants the routing table.
    Snapshot(oneshot::Sender<RoutesSnapshot>),
}

/// The routing table as the admin endpoint shows it.
#[derive(Clone, Debug, Serialize)]
pub struct RoutesSnapshot {
    /// CM nodes with their session counts.
    pub nodes: Vec<NodeRoutes>,
    /// Every route.
    pub routes: Vec<RouteRow>,
}

/// One node in a [`RoutesSnapshot`].
#[derive(Clone, Debug, Serialize)]
pub struct NodeRoutes {
    /// Node.
    #[serde(flatten)]
    pub info: NodeInfo,
    /// Sessions routed to it.
    pub sessions: usize,
}

/// Router input queue length: readers wait beyond it.
pub const ROUTER_QUEUE: usize = 64 * 1024;

/// Shared pieces the driver uses.
pub struct Driver {
    /// The router.
    pub router: Router,
    /// Node registry.
    pub links: Arc<Links>,
    /// Storage.
    pub storage: Storage,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Own sender, for storage completions.
    pub events: mpsc::Sender<Event>,
    /// Domain (for delay stamps).
    pub domain: String,
}

impl Driver {
    /// Runs until shutdown.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Event>, shutdown: CancellationToken) {
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                e = rx.recv() => match e { Some(e) => e, None => return },
            };
            let actions = match event {
                Event::Router(input) => self.router.handle(input),
                Event::OfflineFailed(bounce, cond) => self.router.offline_failed(bounce, cond),
                Event::Snapshot(tx) => {
                    let _ = tx.send(self.snapshot());
                    continue;
                }
            };
            for action in actions {
                self.execute(action);
            }
            self.metrics.sessions.set(self.router.table().len() as i64);
        }
    }

    fn snapshot(&self) -> RoutesSnapshot {
        let counts = self.router.table().counts();
        let nodes = self
            .links
            .nodes()
            .into_iter()
            .map(|info| NodeRoutes {
                sessions: counts.get(&info.id).copied().unwrap_or(0),
                info,
            })
            .collect();
        RoutesSnapshot {
            nodes,
            routes: self.router.table().rows(),
        }
    }

    fn execute(&mut self, action: Action) {
        match action {
            Action::Send { node, frame } => self.send(node, frame),
            Action::StoreOffline {
                user,
                payload,
                bounce,
            } => {
                self.metrics.offline_stored.inc();
                let storage = self.storage.clone();
                let events = self.events.clone();
                tokio::spawn(async move {
                    let stamp = now_stamp();
                    let result = storage
                        .call(move |db| db.store_offline(&user, &stamp, &payload))
                        .await;
                    let cond = match result {
                        Ok(Stored::Stored) => return,
                        Ok(Stored::NoSuchUser) => StanzaCondition::ServiceUnavailable,
                        Err(StorageError::QuotaExceeded) => StanzaCondition::ResourceConstraint,
                        Err(e) => {
                            tracing::error!(error = %e, "storing an offline message failed");
                            StanzaCondition::InternalServerError
                        }
                    };
                    if !bounce.sender.is_empty() {
                        let _ = events.send(Event::OfflineFailed(bounce, cond)).await;
                    }
                });
            }
            Action::FlushOffline { user, to } => self.flush_offline(user, to),
        }
    }

    fn send(&mut self, node: NodeId, frame: Frame) {
        let sid = match &frame {
            Frame::Deliver { sid, .. }
            | Frame::Kick { sid, .. }
            | Frame::BindResult { sid, .. } => *sid,
            _ => 0,
        };
        if matches!(frame, Frame::Deliver { .. }) {
            self.metrics.delivered.inc();
        }
        let Err((reason, frame)) = self.links.send(node, sid, frame) else {
            return;
        };
        match reason {
            SendError::Full => {
                self.metrics.link_overflow.inc();
                tracing::warn!(node, "CM link full");
            }
            SendError::NoLink => {
                self.metrics
                    .link_errors
                    .get_or_create(&label("reason", "no-link"))
                    .inc();
            }
        }
        // A message that cannot reach its session is stored, never dropped.
        if let Frame::Deliver { payload, .. } = *frame
            && let Some(user) = self.offline_target(node, sid, &payload)
        {
            let bounce = Bounce {
                sender: String::new(),
                to: String::new(),
                id: None,
            };
            self.execute(Action::StoreOffline {
                user,
                payload,
                bounce,
            });
        }
    }

    /// The local user to store an undeliverable chat or normal message for.
    fn offline_target(&self, node: NodeId, sid: u64, payload: &Bytes) -> Option<String> {
        let top = inspect(payload).ok()?;
        let storable = top.stanza_kind() == Some(xmpp_stream::StanzaKind::Message)
            && matches!(top.attr("type").unwrap_or("normal"), "normal" | "chat");
        if !storable {
            return None;
        }
        let jid = self.router.table().jid_of(node, sid)?;
        jid.split('@').next().map(str::to_owned)
    }

    fn flush_offline(&self, user: String, (node, sid): SessionAddr) {
        let storage = self.storage.clone();
        let links = self.links.clone();
        let metrics = self.metrics.clone();
        let domain = self.domain.clone();
        tokio::spawn(async move {
            let name = user.clone();
            let msgs = match storage.call(move |db| db.offline(&name)).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(error = %e, "loading offline messages failed");
                    return;
                }
            };
            let Some(last) = msgs.last().map(|m| m.id) else {
                return;
            };
            for m in &msgs {
                let payload = match inspect(&m.payload) {
                    Ok(top) => append_child(&m.payload, &top, &delay_element(&domain, &m.stamp)),
                    Err(_) => Bytes::clone(&m.payload),
                };
                if links
                    .send(node, sid, Frame::Deliver { sid, payload })
                    .is_err()
                {
                    // Keep them stored; they go out at the next login.
                    return;
                }
                metrics.offline_delivered.inc();
            }
            if let Err(e) = storage.call(move |db| db.remove_offline(&user, last)).await {
                tracing::error!(error = %e, "removing delivered offline messages failed");
            }
        });
    }
}

/// The current time as an XEP-0082 timestamp.
pub fn now_stamp() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}
