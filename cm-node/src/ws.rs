//! XMPP over WebSocket (RFC 7395) for browser clients, over TLS: the HTTP
//! upgrade must offer the `xmpp` subprotocol; then each text message is one
//! element (`<open/>` and `<close/>` stand for the stream header and end).
//! After the framing is translated, the stream is driven by the same
//! [`crate::session::ClientSession`] as every other transport.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use xmpp_stream::element::Element;
use xmpp_stream::{ns, stream};

use crate::listener::{ByteSink, ByteSource, ListenerContext, run_session};
use crate::metrics::{DropReason, Transport};

/// Time for the TLS handshake and the HTTP upgrade.
const UPGRADE_DEADLINE: Duration = Duration::from_secs(30);

/// The WebSocket subprotocol of RFC 7395.
pub const SUBPROTOCOL: &str = "xmpp";

/// Accepts WebSocket clients until shutdown.
pub async fn run(listener: TcpListener, tls: TlsAcceptor, ctx: Arc<ListenerContext>) {
    crate::tcp::accept_loop(
        listener,
        Transport::WebSocket,
        ctx,
        move |tcp, remote, ctx, admitted| {
            let tls = tls.clone();
            async move {
                let crate::listener::Admitted {
                    open: _open,
                    mut peer,
                } = admitted;
                let config = websocket_config(ctx.settings.limits.max_stanza_bytes);
                // boxed, and unpacked before the session: see `accept_loop`
                let upgrade = Box::pin(async {
                    let tls_stream = tls.accept(tcp).await.map_err(|e| e.to_string())?;
                    let exporter = crate::admission::tls_exporter(|out, label| {
                        tls_stream
                            .get_ref()
                            .1
                            .export_keying_material(out, label, None)
                            .is_ok()
                    });
                    tokio_tungstenite::accept_hdr_async_with_config(
                        tls_stream,
                        require_xmpp,
                        Some(config),
                    )
                    .await
                    .map(|ws| (ws, exporter))
                    .map_err(|e| e.to_string())
                });
                let ws = match tokio::time::timeout(UPGRADE_DEADLINE, upgrade).await {
                    Ok(Ok((ws, exporter))) => {
                        peer.tls_exporter = exporter;
                        ws
                    }
                    Ok(Err(e)) => {
                        ctx.metrics.dropped(DropReason::WebSocketUpgradeFailed);
                        tracing::debug!(%remote, error = %e, "WebSocket upgrade failed");
                        return;
                    }
                    Err(_) => {
                        ctx.metrics.dropped(DropReason::WebSocketUpgradeFailed);
                        tracing::debug!(%remote, "WebSocket client too slow to upgrade");
                        return;
                    }
                };
                let (sink, source) = ws.split();
                run_session(
                    ctx,
                    WsSink(sink),
                    WsSource(source),
                    Transport::WebSocket,
                    peer,
                )
                .await;
            }
        },
    )
    .await
}

/// The WebSocket settings for stanzas of at most `max_stanza_bytes`.
pub(crate) fn websocket_config(max_stanza_bytes: usize) -> WebSocketConfig {
    // frames no larger than the largest stanza (plus the framing)
    let limit = max_stanza_bytes + 1024;
    // small buffers: idle connections must stay cheap
    WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit))
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * limit)
}

/// The upgrade must offer the `xmpp` subprotocol; the answer selects it.
#[allow(clippy::result_large_err)] // the signature tungstenite's callback has
pub(crate) fn require_xmpp(
    request: &Request,
    mut response: Response,
) -> Result<Response, ErrorResponse> {
    let offered = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL);
    if !offered {
        let mut refusal = ErrorResponse::new(Some("the xmpp subprotocol is required".into()));
        *refusal.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::BAD_REQUEST;
        return Err(refusal);
    }
    response.headers_mut().insert(
        "sec-websocket-protocol",
        tokio_tungstenite::tungstenite::http::HeaderValue::from_static(SUBPROTOCOL),
    );
    Ok(response)
}

/// Incoming messages, translated to the byte stream the session parses.
pub(crate) struct WsSource<S>(pub(crate) SplitStream<WebSocketStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> ByteSource for WsSource<S> {
    async fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        loop {
            match self.0.next().await {
                Some(Ok(Message::Text(text))) => return Ok(Some(from_framing(text))),
                // RFC 7395 §3.2: text only; tungstenite answers pings itself
                Some(Ok(Message::Binary(_))) => {
                    return Err(std::io::Error::other("binary WebSocket message"));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(_))) | None => return Ok(None),
                Some(Err(e)) => return Err(std::io::Error::other(e)),
            }
        }
    }
}

/// Turns `<open/>` into a stream header and `<close/>` into the stream end.
pub(crate) fn from_framing(text: Utf8Bytes) -> Bytes {
    let trimmed = text.as_str().trim_start();
    if trimmed.starts_with("<open") {
        if let Ok(open) = Element::parse(trimmed.as_bytes(), ns::CLIENT)
            && open.ns == ns::FRAMING
        {
            let mut header = format!(
                "<stream:stream xmlns='{}' xmlns:stream='{}' version='1.0'",
                ns::CLIENT,
                ns::STREAMS
            );
            for (name, value) in [("to", open.attr("to")), ("xml:lang", open.attr("xml:lang"))] {
                if let Some(v) = value {
                    let v = xmpp_stream::element::escape(v);
                    header.push_str(&format!(" {name}='{v}'"));
                }
            }
            header.push('>');
            return Bytes::from(header);
        }
    } else if trimmed.starts_with("<close")
        && Element::parse(trimmed.as_bytes(), ns::CLIENT).is_ok_and(|c| c.ns == ns::FRAMING)
    {
        return Bytes::from_static(stream::STREAM_CLOSE);
    }
    Bytes::from(text)
}

/// Outgoing parts, one text message each.
struct WsSink<S>(SplitSink<WebSocketStream<S>, Message>);

impl<S: AsyncRead + AsyncWrite + Unpin> ByteSink for WsSink<S> {
    async fn send_parts(&mut self, parts: &[Bytes]) -> std::io::Result<()> {
        for part in parts {
            let text = Utf8Bytes::try_from(part.clone())
                .map_err(|_| std::io::Error::other("not UTF-8"))?;
            self.0
                .feed(Message::Text(text))
                .await
                .map_err(std::io::Error::other)?;
        }
        self.0.flush().await.map_err(std::io::Error::other)
    }

    async fn finish(&mut self) {
        let _ = self.0.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_translates_open_and_close_and_passes_the_rest() {
        let open = from_framing(Utf8Bytes::from(
            "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='x' version='1.0' xml:lang='fr'/>",
        ));
        let open = String::from_utf8_lossy(&open).into_owned();
        assert!(open.starts_with("<stream:stream "), "{open}");
        assert!(
            open.contains("to='x'") && open.contains("xml:lang='fr'"),
            "{open}"
        );
        let close = from_framing(Utf8Bytes::from(
            "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>",
        ));
        assert_eq!(&close[..], stream::STREAM_CLOSE);
        let msg = "<message xmlns='jabber:client' to='y'><body>hi</body></message>";
        assert_eq!(&from_framing(Utf8Bytes::from(msg))[..], msg.as_bytes());
        // an <open> in another namespace is not the framing element
        let other = "<open xmlns='urn:example'/>";
        assert_eq!(&from_framing(Utf8Bytes::from(other))[..], other.as_bytes());
    }
}
