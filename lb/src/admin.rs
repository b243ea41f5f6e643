//! The admin HTTP endpoint (keep it on loopback): `GET /metrics`
//! (OpenMetrics text), `GET /backends` (the table as JSON),
//! `POST /drain/{node}` and `POST /undrain/{node}` (204, or 404 for a node
//! not in the table).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::routing::Routing;

/// What the handlers read and change.
#[derive(Clone)]
pub(crate) struct Admin {
    /// The table (backends, drain).
    pub(crate) routing: Arc<Routing>,
    /// The metrics to render.
    pub(crate) metrics: Arc<Metrics>,
}

/// Serves the admin endpoint on `listener` until shutdown.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    admin: Admin,
    shutdown: CancellationToken,
) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/backends", get(backends))
        .route("/drain/{node}", post(drain))
        .route("/undrain/{node}", post(undrain))
        .with_state(admin);
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
}

/// One backend in the admin JSON.
#[derive(Serialize)]
struct BackendView {
    name: String,
    server_id: String,
    addr: SocketAddr,
    draining: bool,
}

async fn metrics(State(s): State<Admin>) -> Response {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn backends(State(s): State<Admin>) -> Response {
    let list: Vec<BackendView> = s
        .routing
        .backends()
        .into_iter()
        .map(|b| BackendView {
            server_id: b.server_id.iter().map(|x| format!("{x:02x}")).collect(),
            name: b.name,
            addr: b.addr,
            draining: b.draining,
        })
        .collect();
    Json(list).into_response()
}

async fn drain(State(s): State<Admin>, Path(node): Path<String>) -> StatusCode {
    set_draining(&s, &node, true)
}

async fn undrain(State(s): State<Admin>, Path(node): Path<String>) -> StatusCode {
    set_draining(&s, &node, false)
}

fn set_draining(s: &Admin, node: &str, draining: bool) -> StatusCode {
    if s.routing.set_draining(node, draining) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}
