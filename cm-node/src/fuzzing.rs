//! The CM's WebSocket framing made reachable for the fuzz targets in
//! tests/fuzz (feature `fuzzing`, not part of the API).

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::listener::ByteSource;
use crate::ws;

/// The bytes the session parses for one WebSocket text message.
pub fn ws_from_framing(text: &str) -> Bytes {
    ws::from_framing(Utf8Bytes::from(text))
}

/// Runs a client connection as the WebSocket listener does after TLS: the
/// HTTP upgrade (requiring the `xmpp` subprotocol) with the listener's
/// settings for `max_stanza_bytes`, then every message translated into the
/// byte stream the session parses, handed to `each`. Ends with the
/// connection; the error says why the upgrade or the reading failed.
pub async fn ws_read_all<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    max_stanza_bytes: usize,
    mut each: impl FnMut(Bytes),
) -> Result<(), String> {
    let ws = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        ws::require_xmpp,
        Some(ws::websocket_config(max_stanza_bytes)),
    )
    .await
    .map_err(|e| format!("upgrade: {e}"))?;
    // the sink half stays alive while reading: pongs and the close go out on it
    let (_sink, source) = ws.split();
    let mut source = ws::WsSource(source);
    while let Some(chunk) = source.next_chunk().await.map_err(|e| e.to_string())? {
        each(chunk);
    }
    Ok(())
}
