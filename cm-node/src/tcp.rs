//! Client XMPP over TCP (RFC 6120), for every client that does not speak
//! QUIC: STARTTLS (mandatory before anything else, `starttls.rs`) and direct
//! TLS (XEP-0368, ALPN `xmpp-client`). After TLS, the stream is driven by the
//! same [`crate::session::ClientSession`] as a QUIC stream, with the same
//! limits, SASL, stream management and routing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::listener::{Admitted, ByteSource, ListenerContext, Reader, Writer, admit, run_session};
use crate::metrics::{DropReason, Transport};
use crate::starttls::{StartTls, Step};

/// Time for the TCP and TLS preliminaries (header, STARTTLS, handshake).
const TLS_DEADLINE: Duration = Duration::from_secs(30);

/// Which TCP flavour a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpMode {
    /// Plain TCP, STARTTLS required (port 5222 style).
    StartTls,
    /// TLS from the first byte (XEP-0368, port 5223 style).
    DirectTls,
}

/// Accepts TCP connections of `transport` until shutdown: counts each
/// against `max_clients` and the per-address cap on unauthenticated
/// connections, tunes the socket ([`tune`]) and runs `serve` on its own
/// task (the TCP and WebSocket listeners share this). `serve`'s future is
/// the task's whole future, so it should hold nothing across the session it
/// does not need: the handshake boxed, its result unpacked before the
/// session starts (a task keeps room for the largest state of its future for
/// as long as it lives).
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    transport: Transport,
    ctx: Arc<ListenerContext>,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr, Arc<ListenerContext>, Admitted) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, remote) = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admitted = match admit(&ctx, remote.ip()) {
            Ok(a) => a,
            Err(why) => {
                tracing::warn!(%remote, max = ctx.max_clients, "client refused: {why}");
                continue;
            }
        };
        ctx.metrics.transport(transport).accepted.inc();
        tune(&stream);
        ctx.tasks
            .spawn(serve(stream, remote, ctx.clone(), admitted));
    }
}

/// Accepts TCP clients (STARTTLS or direct TLS) until shutdown.
pub async fn run(
    listener: TcpListener,
    tls: TlsAcceptor,
    mode: TcpMode,
    ctx: Arc<ListenerContext>,
) {
    let transport = match mode {
        TcpMode::StartTls => Transport::StartTls,
        TcpMode::DirectTls => Transport::DirectTls,
    };
    accept_loop(
        listener,
        transport,
        ctx,
        move |stream, remote, ctx, admitted| {
            let tls = tls.clone();
            async move {
                let Admitted {
                    open: _open,
                    mut peer,
                } = admitted;
                let secured = Box::pin(secure(stream, &tls, mode, &ctx.settings.domain));
                let tls_stream = match tokio::time::timeout(TLS_DEADLINE, secured).await {
                    Ok(Ok(tls_stream)) => tls_stream,
                    Ok(Err(e)) => {
                        ctx.metrics.dropped(DropReason::TlsFailed);
                        tracing::debug!(%remote, error = %e, "TCP client gave up before TLS");
                        return;
                    }
                    Err(_) => {
                        ctx.metrics.dropped(DropReason::TlsFailed);
                        tracing::debug!(%remote, "TCP client too slow to start TLS");
                        return;
                    }
                };
                peer.tls_exporter = crate::admission::tls_exporter(|out, label| {
                    tls_stream
                        .get_ref()
                        .1
                        .export_keying_material(out, label, None)
                        .is_ok()
                });
                let (read, write) = tokio::io::split(tls_stream);
                run_session(ctx, Writer(write), Reader(read), transport, peer).await;
            }
        },
    )
    .await
}

/// TCP keep-alive probes after 30 s of silence (every 10 s, 3 tries) and
/// a 60 s limit on unacknowledged data: a client that vanished (a laptop
/// off Wi-Fi) is noticed within about a minute, as QUIC's idle timeout
/// does for phones. No Nagle delay.
pub fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let sock = socket2::SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    if let Err(e) = sock.set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "TCP keep-alive not set");
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = sock.set_tcp_user_timeout(Some(Duration::from_secs(60))) {
        tracing::debug!(error = %e, "TCP user timeout not set");
    }
}

/// Runs STARTTLS (if plain) and the TLS handshake.
async fn secure(
    mut stream: TcpStream,
    tls: &TlsAcceptor,
    mode: TcpMode,
    domain: &str,
) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
    if mode == TcpMode::StartTls {
        let mut negotiation = StartTls::new(domain, SmallRng::seed_from_u64(rand::random()));
        negotiate(&mut stream, &mut negotiation).await?;
    }
    tls.accept(stream).await
}

/// Feeds the plain stream to the STARTTLS negotiation until it says TLS.
async fn negotiate(stream: &mut TcpStream, negotiation: &mut StartTls) -> std::io::Result<()> {
    let mut reader = Reader(&mut *stream);
    loop {
        let Some(chunk) = reader.next_chunk().await? else {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        };
        for step in negotiation.on_data(&chunk) {
            match step {
                Step::Write(bytes) => reader.0.write_all(&bytes).await?,
                Step::StartTls => return Ok(()),
                Step::Close => {
                    let _ = reader.0.shutdown().await;
                    return Err(std::io::Error::other("refused before TLS"));
                }
            }
        }
    }
}
