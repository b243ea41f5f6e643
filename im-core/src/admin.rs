//! The HTTP admin endpoint (loopback by default): `/metrics` (Prometheus
//! text; open, its labels never name a user), and behind the bearer token
//! kept in `DATA_DIR/admin.token` (401 without it): `/routes` (routing
//! table as JSON: every online JID; in a cluster, the core's slots and the
//! live cores), `POST /drain` (a core of a cluster gives its slots away)
//! and account management under `/users`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use xmpp_sasl::StoredCredentials;

use crate::auth::normalize_user;
use crate::driver::Event;
use crate::metrics::Metrics;
use crate::storage::Storage;

/// State shared by the handlers.
pub struct AdminState {
    /// Metrics to render.
    pub metrics: Arc<Metrics>,
    /// Router, for routing-table snapshots.
    pub router: mpsc::Sender<Event>,
    /// Account storage.
    pub storage: Storage,
    /// Bearer token for account management.
    pub token: String,
    /// In a cluster of cores: the lease driver, for `POST /drain`.
    pub leases: Option<mpsc::Sender<crate::shards::LeaseCommand>>,
}

/// The admin HTTP routes.
pub fn routes(state: Arc<AdminState>) -> Router {
    // The token is checked before anything of the request is read (the
    // layer runs ahead of the handlers' extractors, JSON bodies included).
    let private = Router::new()
        .route("/routes", get(routes_json))
        .route("/drain", post(drain))
        .route("/users", post(add_user))
        .route("/users/{user}", axum::routing::delete(delete_user))
        .route("/users/{user}/password", put(set_password))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    Router::new()
        .route("/metrics", get(metrics))
        .merge(private)
        .with_state(state)
}

/// Lets a request through only with `Authorization: Bearer TOKEN`.
async fn require_token(
    State(s): State<Arc<AdminState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !authorized(&s, request.headers()) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    next.run(request).await
}

async fn metrics(State(s): State<Arc<AdminState>>) -> Response {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

/// How long `/routes` waits for the router: it queues behind CM frames,
/// which the router stops taking while a flood of logins is paced.
const SNAPSHOT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

async fn routes_json(State(s): State<Arc<AdminState>>) -> Response {
    let asked = async {
        let (tx, rx) = oneshot::channel();
        s.router.send(Event::Snapshot(tx)).await.ok()?;
        rx.await.ok()
    };
    match tokio::time::timeout(SNAPSHOT_WAIT, asked).await {
        Ok(Some(snapshot)) => Json(snapshot).into_response(),
        _ => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// `POST /drain`: a core of a cluster gives every slot away (before it is
/// stopped); 404 outside a cluster.
async fn drain(State(s): State<Arc<AdminState>>) -> Response {
    let Some(leases) = &s.leases else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match leases.send(crate::shards::LeaseCommand::Drain).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// Body of `POST /users` and `PUT /users/{user}/password`.
#[derive(Deserialize)]
pub struct UserBody {
    /// Username (local part); ignored for the password route.
    #[serde(default)]
    pub username: String,
    /// New password.
    pub password: String,
}

fn authorized(s: &AdminState, headers: &HeaderMap) -> bool {
    let expected = format!("Bearer {}", s.token);
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| constant_eq(v.as_bytes(), expected.as_bytes()))
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn add_user(State(s): State<Arc<AdminState>>, Json(body): Json<UserBody>) -> Response {
    let Some(user) = normalize_user(&body.username) else {
        return (StatusCode::BAD_REQUEST, "invalid username").into_response();
    };
    let creds = derive(body.password).await;
    match s.storage.call(move |db| db.add_user(&user, &creds)).await {
        Ok(true) => StatusCode::CREATED.into_response(),
        Ok(false) => (StatusCode::CONFLICT, "user exists").into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn delete_user(State(s): State<Arc<AdminState>>, Path(user): Path<String>) -> Response {
    let Some(user) = normalize_user(&user) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    match s.storage.call(move |db| db.delete_user(&user)).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn set_password(
    State(s): State<Arc<AdminState>>,
    Path(user): Path<String>,
    Json(body): Json<UserBody>,
) -> Response {
    let Some(user) = normalize_user(&user) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let creds = derive(body.password).await;
    match s
        .storage
        .call(move |db| db.set_credentials(&user, &creds))
        .await
    {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn derive(password: String) -> StoredCredentials {
    let pw = password.clone();
    tokio::task::spawn_blocking(move || {
        StoredCredentials::new(&pw, StoredCredentials::DEFAULT_ITERATIONS)
    })
    .await
    .unwrap_or_else(|_| StoredCredentials::new(&password, StoredCredentials::DEFAULT_ITERATIONS))
}
