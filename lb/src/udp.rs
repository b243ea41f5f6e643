//! Batched UDP I/O for the data plane: [`UdpIo`] (a socket with quinn-udp's
//! `recvmmsg`/GRO and GSO), [`recv_batches`] (the receive loop) and
//! [`Outbox`] (datagrams to one destination gathered into one GSO send).

use std::io::IoSliceMut;
use std::net::SocketAddr;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio_util::sync::CancellationToken;

use crate::server::LbError;

/// How long a data-plane thread waits for its socket at a time (it checks
/// for shutdown in between).
const WAIT_MS: libc::c_int = 100;

/// How many waits for send-buffer room before a datagram is dropped.
const SEND_WAITS: usize = 10;

/// Largest GSO send (and the receive buffer for a GRO batch).
const MAX_SEND: usize = 64 * 1024;

/// A UDP socket with quinn-udp's batched I/O state, used from the
/// data-plane threads. The socket is non-blocking: a thread waits in
/// `poll(2)` until it is readable (with a timeout, to notice shutdown), then
/// takes whatever is queued in one `recvmmsg`. A full send buffer makes the
/// thread wait for room, which is the backpressure UDP has. (A blocking
/// socket would not do: `recvmmsg` without `MSG_WAITFORONE`, as quinn-udp
/// calls it, waits for a whole batch, which held every datagram for the
/// read timeout when traffic was light.)
pub(crate) struct UdpIo {
    sock: std::net::UdpSocket,
    state: UdpSocketState,
    /// The bound address.
    pub(crate) addr: SocketAddr,
}

impl UdpIo {
    /// Binds `addr` with 4 MiB socket buffers.
    pub(crate) fn bind(addr: SocketAddr) -> Result<Self, LbError> {
        let sock = std::net::UdpSocket::bind(addr).map_err(LbError::io(format!("bind {addr}")))?;
        let state = UdpSocketState::new((&sock).into()).map_err(LbError::io("socket options"))?;
        let _ = state.set_recv_buffer_size((&sock).into(), 4 << 20);
        let _ = state.set_send_buffer_size((&sock).into(), 4 << 20);
        // quinn-udp has made the socket non-blocking; see `wait`.
        let addr = sock.local_addr().map_err(LbError::io("local address"))?;
        Ok(Self { sock, state, addr })
    }

    /// Most datagrams one GSO send may carry.
    pub(crate) fn max_gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Sends `contents` to `to` (as GSO segments of `segment_size` if set),
    /// waiting a little for send-buffer room; false if it was dropped.
    pub(crate) fn send(
        &self,
        to: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> bool {
        let t = Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        };
        for _ in 0..SEND_WAITS {
            match self.state.send((&self.sock).into(), &t) {
                Ok(()) => return true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.wait(libc::POLLOUT);
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// Waits until the socket is ready for `events` or [`WAIT_MS`] pass;
    /// true if it is ready.
    fn wait(&self, events: libc::c_short) -> bool {
        use std::os::fd::AsRawFd;
        let mut fd = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: `fd` is one valid pollfd for an open socket, and the
        // count passed is 1.
        unsafe { libc::poll(&mut fd, 1, WAIT_MS) > 0 }
    }
}

/// Receives batches on `io` (recvmmsg, GRO buffers split by stride), calling
/// `each(datagram, source)` per datagram and `done()` after each batch, until
/// shutdown.
pub(crate) fn recv_batches(
    io: &UdpIo,
    shutdown: &CancellationToken,
    mut each: impl FnMut(&[u8], SocketAddr),
    mut done: impl FnMut(),
) {
    let batch = quinn_udp::BATCH_SIZE.max(1);
    let seg = io.state.gro_segments().max(1);
    let mut bufs: Vec<Vec<u8>> = (0..batch)
        .map(|_| vec![0u8; (seg * 1600).clamp(1600, MAX_SEND)])
        .collect();
    let mut metas = vec![RecvMeta::default(); batch];
    while !shutdown.is_cancelled() {
        if !io.wait(libc::POLLIN) {
            continue; // timeout: check for shutdown
        }
        let mut slices: Vec<IoSliceMut<'_>> = bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let n = match io.state.recv((&io.sock).into(), &mut slices, &mut metas) {
            Ok(n) => n,
            Err(_) => continue, // another thread took it, or a transient error
        };
        drop(slices);
        for (buf, meta) in bufs.iter().zip(&metas).take(n) {
            let stride = if meta.stride == 0 {
                meta.len
            } else {
                meta.stride
            };
            for datagram in buf[..meta.len].chunks(stride.max(1)) {
                each(datagram, meta.addr);
            }
        }
        done();
    }
}

/// Datagrams for one destination gathered into one GSO send when they have
/// the same size (the last may be shorter), flushed at the end of each
/// receive batch.
pub(crate) struct Outbox {
    buf: Vec<u8>,
    dest: Option<SocketAddr>,
    segment: usize,
    count: usize,
    max_segments: usize,
    closed: bool,
}

impl Outbox {
    /// An empty outbox sending at most `max_segments` datagrams at once.
    pub(crate) fn new(max_segments: usize) -> Self {
        Self {
            buf: Vec::with_capacity(MAX_SEND),
            dest: None,
            segment: 0,
            count: 0,
            max_segments: max_segments.max(1),
            closed: false,
        }
    }

    /// Queues one datagram written by `write`; returns false if sending failed.
    pub(crate) fn push(
        &mut self,
        io: &UdpIo,
        dest: SocketAddr,
        len: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> bool {
        let mut ok = true;
        let fits = self.dest == Some(dest)
            && !self.closed
            && self.count < self.max_segments
            && len <= self.segment
            && self.buf.len() + len <= MAX_SEND - 1024;
        if !fits {
            ok = self.flush(io);
            self.dest = Some(dest);
            self.segment = len;
        }
        write(&mut self.buf);
        self.count += 1;
        // A shorter datagram must be the last of a GSO batch.
        self.closed = len < self.segment;
        ok
    }

    /// Sends what is queued; returns false if sending failed.
    pub(crate) fn flush(&mut self, io: &UdpIo) -> bool {
        let ok = match self.dest {
            Some(dest) if self.count > 0 => {
                let seg = (self.count > 1).then_some(self.segment);
                io.send(dest, &self.buf, seg)
            }
            _ => true,
        };
        self.buf.clear();
        self.count = 0;
        self.dest = None;
        self.closed = false;
        ok
    }
}
