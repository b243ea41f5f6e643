//! The admin HTTP endpoint (keep it on loopback): `GET /metrics`
//! (OpenMetrics text; open: its labels name CMs and drop reasons, never a
//! client), and behind the bearer token of [`admin_token`]: `GET /backends`
//! (the table as JSON), `POST /drain/{node}` and `POST /undrain/{node}`
//! (204, or 404 for a node not in the table; undraining a drained node
//! that is away removes its mark, 204). Without the right
//! `Authorization: Bearer TOKEN` header they answer 401.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
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
    /// The bearer token every route but `/metrics` needs.
    pub(crate) token: Arc<str>,
}

/// Reads the admin token from `path`, or creates it (32 random bytes in
/// hex, mode 0600) if the file does not exist (see
/// [`certs::secret::hex_secret`]).
pub fn admin_token(path: &std::path::Path) -> Result<String, std::io::Error> {
    certs::secret::hex_secret(path)
}

/// Whether `headers` carry `Authorization: Bearer TOKEN` (compared in
/// constant time).
fn authorized(token: &str, headers: &HeaderMap) -> bool {
    let expected = format!("Bearer {token}");
    headers
        .get("authorization")
        .is_some_and(|v| constant_eq(v.as_bytes(), expected.as_bytes()))
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

async fn backends(State(s): State<Admin>, headers: HeaderMap) -> Response {
    if !authorized(&s.token, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
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

async fn drain(State(s): State<Admin>, headers: HeaderMap, Path(node): Path<String>) -> StatusCode {
    set_draining(&s, &headers, &node, true)
}

async fn undrain(
    State(s): State<Admin>,
    headers: HeaderMap,
    Path(node): Path<String>,
) -> StatusCode {
    set_draining(&s, &headers, &node, false)
}

fn set_draining(s: &Admin, headers: &HeaderMap, node: &str, draining: bool) -> StatusCode {
    if !authorized(&s.token, headers) {
        return StatusCode::UNAUTHORIZED;
    }
    if s.routing.set_draining(node, draining) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}
