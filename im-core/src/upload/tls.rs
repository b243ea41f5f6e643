//! The TLS listener under the upload server. Handshakes run in tasks of
//! their own (each bounded in time), so a slow client holds up nobody;
//! finished connections wait in a bounded queue for the HTTP server. A
//! connection holds one of [`MAX_CONNECTIONS`] places (at most
//! [`MAX_PER_ADDRESS`] for one address, an IPv6 /64; those past it are
//! dropped) from its accept to its close, and
//! is closed once it has moved no byte either way for [`IDLE_TIMEOUT`]
//! (a client that never sends its request, or trickles nothing).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Most connections open at once (handshaking or served).
pub const MAX_CONNECTIONS: usize = 1024;
/// Most connections open at once from one address.
pub const MAX_PER_ADDRESS: usize = 16;
/// Longest a handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may move nothing before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections open per address.
#[derive(Debug, Default)]
struct PerAddress(Mutex<HashMap<IpAddr, usize>>);

impl PerAddress {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<AddressPlace> {
        // (an IPv6 address counts by its /64, as one host's usually are)
        let ip = match ip {
            IpAddr::V6(v6) => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::from(o)
            }
            v4 => v4,
        };
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= MAX_PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(AddressPlace(self.clone(), ip))
    }
}

/// One connection's place among its address's.
#[derive(Debug)]
struct AddressPlace(Arc<PerAddress>, IpAddr);

impl Drop for AddressPlace {
    fn drop(&mut self) {
        let mut open = self.0.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

/// A served connection: the TLS stream, its places, its idle deadline.
pub struct Connection {
    tls: TlsStream<TcpStream>,
    idle: Pin<Box<Sleep>>,
    _places: (OwnedSemaphorePermit, AddressPlace),
}

impl Connection {
    /// `poll` on the TLS stream under the idle deadline: a ready result
    /// moves the deadline on (if `progress`), a pending one past the
    /// deadline is an error.
    fn timed<T>(
        &mut self,
        cx: &mut Context<'_>,
        progress: bool,
        poll: impl FnOnce(Pin<&mut TlsStream<TcpStream>>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match poll(Pin::new(&mut self.tls), cx) {
            Poll::Ready(r) => {
                if progress {
                    self.idle.as_mut().reset(Instant::now() + IDLE_TIMEOUT);
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "upload connection idle",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.timed(cx, true, |tls, cx| tls.poll_read(cx, buf))
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.timed(cx, true, |tls, cx| tls.poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.timed(cx, false, |tls, cx| tls.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.timed(cx, false, |tls, cx| tls.poll_shutdown(cx))
    }
}

/// Accepted, handshaken connections, for `axum::serve`.
pub struct TlsListener {
    ready: mpsc::Receiver<(Connection, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `listener` with `acceptor` until the returned listener
    /// is dropped.
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let per_address = Arc::new(PerAddress::default());
        tokio::spawn(async move {
            loop {
                // (a place is taken before accepting: past the bound,
                // connections wait in the kernel's backlog)
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "upload accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let Some(place) = per_address.take(peer.ip()) else {
                    continue; // (dropped: too many from that address)
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    let connection = Connection {
                        tls,
                        idle: Box::pin(tokio::time::sleep(IDLE_TIMEOUT)),
                        _places: (permit, place),
                    };
                    let _ = tx.send((connection, peer)).await;
                });
            }
        });
        Ok(Self { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // (the accept task ended: nothing more comes)
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_its_places_and_gets_them_back_on_close() {
        let per = Arc::new(PerAddress::default());
        let ip: IpAddr = [127, 0, 0, 1].into();
        let held: Vec<_> = (0..MAX_PER_ADDRESS)
            .map(|_| per.take(ip).unwrap())
            .collect();
        assert!(per.take(ip).is_none());
        assert!(per.take([127, 0, 0, 2].into()).is_some());
        // an IPv6 /64 counts as one address
        let v6 = |last: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, last]);
        let held6: Vec<_> = (0..MAX_PER_ADDRESS as u16)
            .map(|i| per.take(v6(i)).unwrap())
            .collect();
        assert!(per.take(v6(999)).is_none());
        drop(held6);
        drop(held);
        assert!(per.take(ip).is_some());
        assert!(per.0.lock().unwrap().is_empty(), "places are given back");
    }
}
