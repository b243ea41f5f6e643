//! The upload service's HTTP side: `PUT` of a granted slot (checked
//! against its signature, streamed to a temporary file, synced, then
//! renamed into place), `GET` and `HEAD` of stored files (with an S3
//! store: a redirect to a presigned GET of the object), `OPTIONS` for
//! browsers' preflight. Every answer carries CORS headers (web clients
//! upload from another origin), and files are served so that a browser
//! never runs them (`nosniff`, a `default-src 'none'` policy, and as
//! attachments unless an image, audio, video or plain text).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::put;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::slots::{PutTarget, Slots};

/// The name of the file beside each upload that keeps its content type.
const TYPE_FILE: &str = ".type";
/// How the part files of PUTs under way begin (a stored name never
/// begins with a dot).
pub const PART_PREFIX: &str = ".part-";

/// The routes of the upload server.
pub fn routes(slots: Arc<Slots>) -> Router {
    Router::new()
        .route(
            "/upload/{user}/{slot}/{name}",
            put(put_file)
                .get(get_file)
                .head(get_file)
                .options(preflight),
        )
        .layer(axum::middleware::map_response(cors))
        .with_state(slots)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn status(code: StatusCode) -> Response<Body> {
    code.into_response()
}

/// CORS (for web clients) on every answer.
async fn cors(mut response: Response<Body>) -> Response<Body> {
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, PUT, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    response
}

async fn preflight() -> Response<Body> {
    status(StatusCode::NO_CONTENT)
}

async fn put_file(
    State(slots): State<Arc<Slots>>,
    Path((user, slot, name)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response<Body> {
    let text = |h| headers.get(h).and_then(|v: &HeaderValue| v.to_str().ok());
    let Some(size) = text(header::CONTENT_LENGTH).and_then(|l| l.parse::<u64>().ok()) else {
        return status(StatusCode::LENGTH_REQUIRED);
    };
    let content_type = text(header::CONTENT_TYPE);
    let Some(target) = slots.check_put(
        (&user, &slot, &name),
        size,
        content_type,
        text(header::AUTHORIZATION),
        now(),
    ) else {
        return refused(StatusCode::FORBIDDEN, size, body).await;
    };
    if tokio::fs::try_exists(&target.file).await.unwrap_or(true) {
        return refused(StatusCode::CONFLICT, size, body).await;
    }
    let content_type = super::slots::clean_type(content_type).unwrap_or_default();
    // (held until this handler ends, or is dropped with its connection)
    let hold = match slots.hold(&target) {
        Ok(hold) => hold,
        Err(super::slots::NoHold::Busy) => return refused(StatusCode::CONFLICT, size, body).await,
        Err(super::slots::NoHold::Unknown) => {
            return refused(StatusCode::FORBIDDEN, size, body).await;
        }
    };
    match store(&target, size, &content_type, body).await {
        Ok(()) => {
            hold.stored();
            status(StatusCode::CREATED)
        }
        Err(code) => status(code),
    }
}

/// Most bytes of a refused PUT's body read before answering: a small one
/// is read (and dropped), so that its client, still sending, gets the
/// answer instead of a broken connection; a larger one is cut off.
const DRAIN_BYTES: u64 = 1024 * 1024;

/// Answers a refused PUT with `code`, after reading its body if small.
async fn refused(code: StatusCode, size: u64, body: Body) -> Response<Body> {
    if size <= DRAIN_BYTES {
        let mut stream = body.into_data_stream();
        let mut read = 0u64;
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len() as u64;
            if read > DRAIN_BYTES {
                break;
            }
        }
    }
    status(code)
}

/// A part file, removed when dropped (a PUT that failed, or whose client
/// went away) unless it was published.
struct Part(std::path::PathBuf);

impl Drop for Part {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes `body` (exactly `size` bytes) to a part file of its own, synced,
/// then links it under the file's name, which fails if another PUT to the
/// slot got there first: a stored file is never replaced.
async fn store(
    target: &PutTarget,
    size: u64,
    content_type: &str,
    body: Body,
) -> Result<(), StatusCode> {
    let failed = |e: std::io::Error| {
        tracing::warn!(error = %e, file = %target.file.display(), "storing an upload failed");
        StatusCode::INTERNAL_SERVER_ERROR
    };
    tokio::fs::create_dir_all(&target.slot_dir)
        .await
        .map_err(failed)?;
    let part = Part(
        target
            .slot_dir
            .join(format!("{PART_PREFIX}{:016x}", rand::random::<u64>())),
    );
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&part.0)
        .await
        .map_err(failed)?;
    let mut written = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| StatusCode::BAD_REQUEST)?;
        written += chunk.len() as u64;
        if written > size {
            return Err(StatusCode::PAYLOAD_TOO_LARGE);
        }
        file.write_all(&chunk).await.map_err(failed)?;
    }
    if written != size {
        return Err(StatusCode::BAD_REQUEST);
    }
    file.sync_all().await.map_err(failed)?;
    drop(file);
    tokio::fs::write(target.slot_dir.join(TYPE_FILE), content_type)
        .await
        .map_err(failed)?;
    match tokio::fs::hard_link(&part.0, &target.file).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(StatusCode::CONFLICT);
        }
        Err(e) => return Err(failed(e)),
    }
    // (the part goes with `part`; the link made durable)
    if let Ok(dir) = tokio::fs::File::open(&target.slot_dir).await {
        let _ = dir.sync_all().await;
    }
    Ok(())
}

async fn get_file(
    State(slots): State<Arc<Slots>>,
    Path((user, slot, name)): Path<(String, String, String)>,
    method: axum::http::Method,
) -> Response<Body> {
    if let super::slots::Store::S3(s3) = slots.store() {
        let head = method == axum::http::Method::HEAD;
        return redirect(s3, slots.key(&user, &slot, &name), head);
    }
    let Some(target) = slots.target(&user, &slot, &name) else {
        return status(StatusCode::NOT_FOUND);
    };
    let Ok(file) = tokio::fs::File::open(&target.file).await else {
        return status(StatusCode::NOT_FOUND);
    };
    let Ok(meta) = file.metadata().await else {
        return status(StatusCode::NOT_FOUND);
    };
    let content_type = tokio::fs::read_to_string(target.slot_dir.join(TYPE_FILE))
        .await
        .ok()
        .and_then(|t| super::slots::clean_type(Some(&t)))
        .unwrap_or_else(|| super::slots::DEFAULT_TYPE.to_owned());
    let inline = ["image/", "audio/", "video/", "text/plain"]
        .iter()
        .any(|p| content_type.starts_with(p));
    let body = match method {
        axum::http::Method::HEAD => Body::empty(),
        _ => Body::from_stream(tokio_util::io::ReaderStream::new(file)),
    };
    let mut response = Response::new(body);
    let h = response.headers_mut();
    let value = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
    h.insert(header::CONTENT_TYPE, value(&content_type));
    h.insert(header::CONTENT_LENGTH, value(&meta.len().to_string()));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static(if inline { "inline" } else { "attachment" }),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=86400"),
    );
    response
}

/// A file in an S3 bucket: a redirect to a presigned GET (or HEAD) of
/// its object (whether it exists is the bucket's to say).
fn redirect(s3: &super::s3::S3Store, key: Option<String>, head: bool) -> Response<Body> {
    let Some(key) = key else {
        return status(StatusCode::NOT_FOUND);
    };
    let url = s3.presign_get(&key, head, super::s3::GET_VALID);
    let Ok(location) = HeaderValue::from_str(&url) else {
        return status(StatusCode::INTERNAL_SERVER_ERROR);
    };
    let mut response = status(StatusCode::FOUND);
    let h = response.headers_mut();
    h.insert(header::LOCATION, location);
    // (a cached redirect must not outlive its signature)
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=600"),
    );
    response
}
