//! `longlink-bench switch`: the load tool's floor. A trivial XMPP server
//! over plain TCP that does the least a server can: it accepts any SASL
//! PLAIN login, binds the asked resource, and copies each `<message/>`
//! unchanged to the connection bound to its `to` bare JID. The `chat`
//! scenario run against it measures the tool itself (its runtime, timers,
//! parsing, sockets and the kernel's loopback): what it reads there is the
//! floor under every figure it reports for a real server.
//!
//! Not a server to use for anything else: no TLS, no authentication, no
//! rosters, no policing beyond the framer's limits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use base64::Engine;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use xmpp_stream::element::Element;
use xmpp_stream::framer::{FrameEvent, Framer, Limits};
use xmpp_stream::{ns, stream};

/// Messages queued toward one connection before the switch drops them
/// (the floor run never comes near; a stuck reader must not grow memory).
const QUEUE: usize = 4096;

/// Bound sessions by bare JID: where a message to that JID is written.
type Routes = Arc<Mutex<HashMap<String, mpsc::Sender<Bytes>>>>;

/// Serves on `listen` until the process ends; `domain` is the XMPP domain.
pub async fn serve(listen: SocketAddr, domain: String) -> Result<()> {
    let listener = TcpListener::bind(listen).await?;
    eprintln!("switch listening on {}", listener.local_addr()?);
    serve_on(listener, domain).await
}

/// Serves on `listener` until the task ends.
pub async fn serve_on(listener: TcpListener, domain: String) -> Result<()> {
    let routes: Routes = Arc::default();
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // out of descriptors, say: the bench's next logins fail, the switch goes on
                tracing::warn!("switch: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (routes, domain) = (routes.clone(), domain.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(tcp, routes, &domain).await {
                tracing::debug!("switch connection ended: {e}");
            }
        });
    }
}

/// One client connection: negotiation, then routing its messages; its
/// route and writer go with it however it ends.
async fn connection(tcp: TcpStream, routes: Routes, domain: &str) -> Result<()> {
    tcp.set_nodelay(true)?;
    let (rd, wr) = tcp.into_split();
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
    let writer = tokio::spawn(write_queue(wr, rx));
    let mut bound: Option<String> = None;
    let result = serve_stream(rd, &tx, &routes, domain, &mut bound).await;
    if let Some(bare) = bound {
        let mut routes = routes.lock().unwrap_or_else(|e| e.into_inner());
        if routes.get(&bare).is_some_and(|t| t.same_channel(&tx)) {
            routes.remove(&bare);
        }
    }
    drop(tx);
    let _ = writer.await;
    result
}

/// Reads and answers one client's stream; `bound` is set to its bare JID
/// once it is bound.
async fn serve_stream(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    tx: &mpsc::Sender<Bytes>,
    routes: &Routes,
    domain: &str,
    bound: &mut Option<String>,
) -> Result<()> {
    let mut framer = Framer::new(Limits::default());
    let mut user: Option<String> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = rd.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        framer.push(&buf[..n]);
        while let Some(event) = framer.next_event()? {
            match event {
                FrameEvent::Open(_) => {
                    let mut out = stream::server_header(domain, "floor", None, None);
                    out.extend(match user {
                        None => stream::features_sasl(&["PLAIN"], None, false, None),
                        Some(_) => stream::features_bind(None),
                    });
                    send(tx, out).await?;
                }
                FrameEvent::Close => {
                    send(tx, stream::STREAM_CLOSE.to_vec()).await?;
                    return Ok(());
                }
                FrameEvent::Element(raw) => {
                    if raw.starts_with(b"<message") {
                        route(routes, &raw);
                        continue;
                    }
                    let el = Element::parse_in_stream(&raw)?;
                    match (el.name.as_str(), &user) {
                        ("auth", None) => {
                            let plain = base64::engine::general_purpose::STANDARD
                                .decode(el.text().trim())
                                .ok()
                                .and_then(|m| xmpp_sasl::parse_plain(&m).ok());
                            let Some(plain) = plain else {
                                send(tx, stream::sasl_failure("malformed-request", None)).await?;
                                continue;
                            };
                            user = Some(plain.username);
                            send(tx, stream::sasl_element("success", None, None)).await?;
                            framer.restart();
                        }
                        ("iq", Some(name)) if el.child("bind", ns::BIND).is_some() => {
                            let bare = format!("{name}@{domain}");
                            let resource = el
                                .child("bind", ns::BIND)
                                .and_then(|b| b.child("resource", ns::BIND))
                                .map(|r| r.text())
                                .unwrap_or_else(|| "floor".into());
                            let id = el.attr("id").unwrap_or_default().to_owned();
                            routes
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(bare.clone(), tx.clone());
                            *bound = Some(bare.clone());
                            send(tx, stream::bind_result(&id, &format!("{bare}/{resource}")))
                                .await?;
                        }
                        _ => {} // presence and the rest: nothing to do
                    }
                }
            }
        }
    }
}

/// Copies a message to the connection bound to its `to` bare JID, if any.
fn route(routes: &Routes, raw: &Bytes) {
    let Ok(el) = Element::parse_in_stream(raw) else {
        return;
    };
    let Some(to) = el.attr("to") else { return };
    let bare = to.split('/').next().unwrap_or(to);
    let target = routes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(bare)
        .cloned();
    if let Some(target) = target {
        let _ = target.try_send(raw.clone());
    }
}

async fn send(tx: &mpsc::Sender<Bytes>, bytes: Vec<u8>) -> Result<()> {
    tx.send(Bytes::from(bytes))
        .await
        .map_err(|_| anyhow::anyhow!("writer gone"))
}

/// Writes what is queued, everything ready at once in one write.
async fn write_queue(mut wr: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::Receiver<Bytes>) {
    let mut out = Vec::with_capacity(16 * 1024);
    while let Some(first) = rx.recv().await {
        out.clear();
        out.extend_from_slice(&first);
        while let Ok(more) = rx.try_recv() {
            out.extend_from_slice(&more);
        }
        if wr.write_all(&out).await.is_err() {
            return;
        }
    }
}
