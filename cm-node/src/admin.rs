//! The CM's admin HTTP endpoint (keep it on loopback): `GET /metrics`
//! (OpenMetrics text of [`Metrics`], open like the core's and the
//! balancer's: its labels name transports and reasons, never a client).
//! The gauges of what the CM holds right now (connections open, bytes
//! queued toward the clients and toward the core) are read when scraped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::pool::Pool;
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
    /// The pool (bytes queued toward the core).
    pub(crate) pool: Arc<Pool>,
}

impl Admin {
    /// The exposition, with the gauges read now.
    fn render(&self) -> String {
        let m = &self.metrics;
        m.connections.set(gauge(self.open.load(Ordering::Relaxed)));
        m.queued_toward_clients()
            .set(gauge(self.sessions.queued_bytes()));
        m.queued_toward_core().set(gauge(self.pool.queued_bytes()));
        m.render()
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
