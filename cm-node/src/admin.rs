//! The CM's admin HTTP endpoint (keep it on loopback): `GET /metrics`
//! (OpenMetrics text of [`Metrics`], open like the core's and the
//! balancer's: its labels name transports and reasons, never a client).
//! The gauges of what the CM holds right now (connections open, bytes
//! queued toward the clients and toward the core) are read when scraped;
//! the bytes queued toward clients, a pass over every session under the
//! registry's lock, at most once a second however often it is scraped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::cores::Cores;
use crate::metrics::Metrics;
use crate::sessions::Sessions;

/// What the handler reads.
#[derive(Clone)]
pub(crate) struct Admin {
    /// The metrics to render.
    pub(crate) metrics: Arc<Metrics>,
    /// Client connections open now.
    pub(crate) open: Arc<AtomicUsize>,
    /// The session registry (bytes queued toward clients).
    pub(crate) sessions: Arc<Sessions>,
    /// The core pools (bytes queued toward the cores, pools, slots).
    pub(crate) pool: Arc<Cores>,
    /// The last count of bytes queued toward clients, and when it was made.
    pub(crate) toward_clients: Arc<Mutex<Option<(Instant, usize)>>>,
}

/// How long a count of the bytes queued toward clients is reused.
const RECOUNT_AFTER: Duration = Duration::from_secs(1);

impl Admin {
    /// The exposition, with the gauges read now.
    fn render(&self) -> String {
        let m = &self.metrics;
        m.connections.set(gauge(self.open.load(Ordering::Relaxed)));
        m.queued_toward_clients()
            .set(gauge(self.queued_toward_clients()));
        m.queued_toward_core().set(gauge(self.pool.queued_bytes()));
        m.core_pools.set(gauge(self.pool.pools()));
        m.owned_slots.set(gauge(self.pool.owned_slots()));
        m.held_for_owner_bytes.set(gauge(self.pool.held_bytes()));
        let (detached, detached_bytes) = self.pool.detached();
        m.detached_sessions.set(gauge(detached));
        m.detached_bytes.set(gauge(detached_bytes));
        m.render()
    }
}

impl Admin {
    /// Bytes queued toward clients: counted again only if the last count is
    /// older than [`RECOUNT_AFTER`], so scrapes cannot keep the registry's
    /// lock (which every frame from the core takes) busy.
    fn queued_toward_clients(&self) -> usize {
        let mut last = self
            .toward_clients
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match *last {
            Some((at, n)) if at.elapsed() < RECOUNT_AFTER => n,
            _ => {
                let n = self.sessions.queued_bytes();
                *last = Some((Instant::now(), n));
                n
            }
        }
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Serves the admin endpoint on `listener` until shutdown.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    admin: Admin,
    shutdown: CancellationToken,
) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(admin);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "admin endpoint failed");
    }
}

async fn metrics(State(s): State<Admin>) -> Response {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.render(),
    )
        .into_response()
}
