//! The CM's UDP socket when it sits behind the balancer: a quinn
//! [`AsyncUdpSocket`] that unwraps datagrams encapsulated by the balancer
//! (so quinn sees the real client address, and path validation works when a
//! client migrates) and wraps every outgoing datagram the same way, sending
//! it back through the balancer. Datagrams from anyone but the configured
//! balancer are dropped.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use lb_protocol::encap;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::ReadBuf;

/// The encapsulating socket (see the module docs).
pub struct EncapSocket {
    io: tokio::net::UdpSocket,
    balancer: SocketAddr,
    /// Datagrams dropped (wrong source or bad header).
    pub dropped: AtomicU64,
    /// Datagrams from the balancer handed to quinn.
    pub received: AtomicU64,
}

impl fmt::Debug for EncapSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncapSocket")
            .field("balancer", &self.balancer)
            .finish_non_exhaustive()
    }
}

impl EncapSocket {
    /// Wraps a bound socket; traffic goes to and comes from `balancer`.
    pub fn new(io: tokio::net::UdpSocket, balancer: SocketAddr) -> Self {
        Self {
            io,
            balancer,
            dropped: AtomicU64::new(0),
            received: AtomicU64::new(0),
        }
    }
}

struct Poller(Arc<EncapSocket>);

impl fmt::Debug for Poller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncapPoller")
    }
}

impl UdpPoller for Poller {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        self.0.io.poll_send_ready(cx)
    }
}

impl EncapSocket {
    /// Checks a received datagram and moves its payload to the front of
    /// `buf`; `None` (counted as dropped) if it is not from the balancer or
    /// not encapsulated.
    fn unwrap(&self, buf: &mut [u8], n: usize, from: SocketAddr) -> Option<RecvMeta> {
        let decoded = (from == self.balancer)
            .then(|| encap::decode(&buf[..n]).ok())
            .flatten();
        let Some((client, payload)) = decoded else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        self.received.fetch_add(1, Ordering::Relaxed);
        let header = n - payload.len();
        buf.copy_within(header..n, 0);
        Some(RecvMeta {
            addr: client,
            len: n - header,
            stride: n - header,
            ecn: None,
            dst_ip: None,
        })
    }
}

impl AsyncUdpSocket for EncapSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Poller(self))
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        // max_transmit_segments is 1: one datagram per transmit.
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUF.with_borrow_mut(|buf| {
            buf.clear();
            encap::encode(transmit.destination, transmit.contents, buf);
            self.io.try_send_to(buf, self.balancer).map(|_| ())
        })
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // The first datagram waits for readiness; the rest of the batch takes
        // whatever else is queued, so quinn handles a burst in one wakeup.
        let mut count = 0;
        for (buf, meta) in bufs.iter_mut().zip(meta.iter_mut()) {
            loop {
                let (n, from) = if count == 0 {
                    let mut read = ReadBuf::new(buf);
                    let from = ready!(self.io.poll_recv_from(cx, &mut read))?;
                    (read.filled().len(), from)
                } else {
                    match self.io.try_recv_from(buf) {
                        Ok(got) => got,
                        // WouldBlock, or an error the next poll reports
                        Err(_) => return Poll::Ready(Ok(count)),
                    }
                };
                if let Some(m) = self.unwrap(buf, n, from) {
                    *meta = m;
                    count += 1;
                    break;
                }
            }
        }
        Poll::Ready(Ok(count))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    fn may_fragment(&self) -> bool {
        // Keeps quinn from probing larger MTUs: the header must still fit.
        true
    }
}
