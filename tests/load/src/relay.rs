//! A UDP relay on loopback that delays every datagram by a fixed time in
//! each direction: a mobile link's latency for `longlink-bench reconnect`,
//! without network namespaces or `tc netem` (which need privileges and a
//! kernel module this tool cannot count on).
//!
//! Each client address gets its own upstream socket, so the server sees
//! one peer per client as it would without the relay. A constant delay
//! keeps each direction's order (a FIFO per direction). At most
//! [`MAX_FLOWS`] clients (idle ones are forgotten to make room) and
//! [`MAX_QUEUED`] datagrams in flight per direction; beyond that datagrams
//! are dropped, as a full link drops them. [`UdpDelay::cut`] loses the
//! network of every current client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Most client addresses relayed at once.
pub const MAX_FLOWS: usize = 1024;
/// Most datagrams waiting out their delay, per direction of a flow.
pub const MAX_QUEUED: usize = 4096;
/// Largest datagram relayed (QUIC's are at most about 1500 bytes here).
const MAX_DATAGRAM: usize = 65_535;

/// Idle this long, a flow may be forgotten to make room for a new one.
const FLOW_IDLE: Duration = Duration::from_secs(60);

/// A running relay; stops (and drops its sockets) when dropped.
pub struct UdpDelay {
    /// Where clients send to.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
    cuts: mpsc::Sender<()>,
}

impl Drop for UdpDelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl UdpDelay {
    /// Starts relaying datagrams sent to the returned relay's `addr` to
    /// `upstream` (and the answers back), each `one_way` later.
    pub async fn start(upstream: SocketAddr, one_way: Duration) -> std::io::Result<Self> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = front.local_addr()?;
        let (cuts, cut) = mpsc::channel(4);
        let task = tokio::spawn(front_loop(front, upstream, one_way, cut));
        Ok(Self { addr, task, cuts })
    }

    /// Cuts every current path, as a lost network does: what the clients
    /// and the server send on them is dropped from now on. A client's new
    /// QUIC connection (a long-header Initial packet) from the same
    /// address gets a new path.
    pub async fn cut(&self) {
        let _ = self.cuts.send(()).await;
    }
}

/// Whether `datagram` starts a QUIC connection (RFC 9000 §17.2: a long
/// header of version 1's Initial type), whatever its fixed bit: a client
/// that remembers a server's transport parameters (for 0-RTT) greases it
/// (RFC 9287) in about half its packets, Initials included.
fn is_quic_initial(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| b & 0xb0 == 0x80)
}

/// Reads the client side; one upstream socket (and task) per client.
async fn front_loop(
    front: Arc<UdpSocket>,
    upstream: SocketAddr,
    one_way: Duration,
    mut cuts: mpsc::Receiver<()>,
) {
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let received = tokio::select! {
            received = front.recv_from(&mut buf) => received,
            Some(()) = cuts.recv() => {
                for flow in flows.values_mut() {
                    flow.cut();
                }
                continue;
            }
        };
        let Ok((n, client)) = received else {
            // (an ICMP error reported on the socket: no busy loop)
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        if flows
            .get(&client)
            .is_some_and(|f| f.cut && is_quic_initial(&buf[..n]))
        {
            flows.remove(&client);
        }
        if !flows.contains_key(&client) {
            if flows.len() >= MAX_FLOWS {
                flows.retain(|_, f| f.last_seen.elapsed() < FLOW_IDLE);
            }
            if flows.len() >= MAX_FLOWS {
                continue;
            }
            match Flow::open(front.clone(), client, upstream, one_way).await {
                Ok(flow) => {
                    flows.insert(client, flow);
                }
                Err(e) => {
                    tracing::warn!(%client, "relay: no upstream socket: {e}");
                    continue;
                }
            }
        }
        if let Some(flow) = flows.get_mut(&client)
            && !flow.cut
        {
            flow.last_seen = Instant::now();
            // (a full queue drops the datagram, as a full link would)
            let _ = flow
                .to_server
                .try_send((Instant::now() + one_way, buf[..n].to_vec()));
        }
    }
}

/// One client's path through the relay.
struct Flow {
    to_server: mpsc::Sender<(Instant, Vec<u8>)>,
    tasks: [JoinHandle<()>; 3],
    last_seen: Instant,
    /// Cut: everything on it is dropped.
    cut: bool,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.cut();
    }
}

impl Flow {
    /// Drops everything on this path from now on, both ways.
    fn cut(&mut self) {
        self.cut = true;
        for t in &self.tasks {
            t.abort();
        }
    }

    async fn open(
        front: Arc<UdpSocket>,
        client: SocketAddr,
        upstream: SocketAddr,
        one_way: Duration,
    ) -> std::io::Result<Self> {
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        back.connect(upstream).await?;
        let (to_server, server_queue) = mpsc::channel(MAX_QUEUED);
        let (to_client, client_queue) = mpsc::channel::<(Instant, Vec<u8>)>(MAX_QUEUED);
        let reader = {
            let back = back.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                loop {
                    match back.recv(&mut buf).await {
                        Ok(n) => {
                            let _ =
                                to_client.try_send((Instant::now() + one_way, buf[..n].to_vec()));
                        }
                        // (ICMP errors from the server's side: keep reading)
                        Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
            })
        };
        let upward = tokio::spawn(deliver(server_queue, move |d| {
            let back = back.clone();
            async move {
                let _ = back.send(&d).await;
            }
        }));
        let downward = tokio::spawn(deliver(client_queue, move |d| {
            let front = front.clone();
            async move {
                let _ = front.send_to(&d, client).await;
            }
        }));
        Ok(Self {
            to_server,
            tasks: [reader, upward, downward],
            last_seen: Instant::now(),
            cut: false,
        })
    }
}

/// A TCP relay on loopback that delays every byte by a fixed time in each
/// direction (each read is passed on as one chunk, in order, `one_way`
/// later); stops when dropped.
pub struct TcpDelay {
    /// Where clients connect to.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for TcpDelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TcpDelay {
    /// Starts relaying connections made to the returned relay's `addr` to
    /// `upstream`.
    pub async fn start(upstream: SocketAddr, one_way: Duration) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let mut pipes = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                pipes.spawn(pipe(client_read, server_write, one_way));
                pipes.spawn(pipe(server_read, client_write, one_way));
                // (ended pipes are reaped as new connections come)
                while pipes.try_join_next().is_some() {}
            }
        });
        Ok(Self { addr, task })
    }
}

/// Copies `from` to `to`, each chunk `one_way` after it was read; ends
/// (closing `to`'s side) when `from` ends.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    one_way: Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (chunks, queue) = mpsc::channel::<(Instant, Vec<u8>)>(MAX_QUEUED);
    let writer = tokio::spawn(async move {
        let mut queue = queue;
        while let Some((due, chunk)) = queue.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0
            || chunks
                .send((Instant::now() + one_way, buf[..n].to_vec()))
                .await
                .is_err()
        {
            break;
        }
    }
    drop(chunks);
    let _ = writer.await;
}

/// Sends each queued datagram when its time comes, in order.
async fn deliver<F, Fut>(mut queue: mpsc::Receiver<(Instant, Vec<u8>)>, send: F)
where
    F: Fn(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    while let Some((due, datagram)) = queue.recv().await {
        tokio::time::sleep_until(due).await;
        send(datagram).await;
    }
}

/// The relay's own round trip: the median time of `n` datagrams echoed by
/// a trivial UDP echo on loopback through a relay of `one_way` (the floor
/// every figure measured through the relay stands on).
pub async fn floor(one_way: Duration, n: usize) -> std::io::Result<Duration> {
    let echo = UdpSocket::bind("127.0.0.1:0").await?;
    let echo_addr = echo.local_addr()?;
    let echoing = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((len, from)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..len], from).await;
        }
    });
    let relay = UdpDelay::start(echo_addr, one_way).await?;
    let client = UdpSocket::bind("127.0.0.1:0").await?;
    client.connect(relay.addr).await?;
    let mut times = Vec::with_capacity(n.max(1));
    let mut buf = [0u8; 64];
    for i in 0..n.max(1) {
        let start = Instant::now();
        client.send(&(i as u64).to_be_bytes()).await?;
        tokio::time::timeout(one_way * 4 + Duration::from_secs(1), client.recv(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("echo lost"))??;
        times.push(start.elapsed());
    }
    echoing.abort();
    times.sort();
    Ok(times[times.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn datagrams_arrive_in_order_and_no_sooner_than_the_delay_each_way() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let relay = UdpDelay::start(server.local_addr().unwrap(), Duration::from_millis(20))
            .await
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(relay.addr).await.unwrap();
        let sent = Instant::now();
        for i in 0u8..50 {
            client.send(&[i]).await.unwrap();
        }
        let mut buf = [0u8; 8];
        let mut from = None;
        for i in 0u8..50 {
            let (n, addr) = server.recv_from(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], &[i], "in order");
            from = Some(addr);
        }
        assert!(sent.elapsed() >= Duration::from_millis(20));
        // the answer goes back through the same flow, delayed again
        let back = Instant::now();
        server.send_to(b"pong", from.unwrap()).await.unwrap();
        let n = client.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"pong");
        assert!(back.elapsed() >= Duration::from_millis(20));
    }

    #[tokio::test]
    async fn a_cut_path_drops_both_ways_until_a_new_quic_initial_opens_another() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let relay = UdpDelay::start(server.local_addr().unwrap(), Duration::from_millis(1))
            .await
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(relay.addr).await.unwrap();
        let mut buf = [0u8; 8];
        client.send(&[0x40, 1]).await.unwrap();
        let (_, old_path) = server.recv_from(&mut buf).await.unwrap();
        relay.cut().await;
        // a short-header packet and a Handshake on the cut path: dropped;
        // then an Initial with its fixed bit greased (RFC 9287)
        client.send(&[0x40, 2]).await.unwrap();
        client.send(&[0xe0, 2]).await.unwrap();
        client.send(&[0x83, 3]).await.unwrap();
        let (n, new_path) = server.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &[0x83, 3], "only the Initial passed");
        assert_ne!(new_path, old_path, "on a new path");
        // the old path's answers are dropped, the new one's arrive
        server.send_to(b"old", old_path).await.unwrap();
        server.send_to(b"new", new_path).await.unwrap();
        let n = client.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"new");
    }

    #[tokio::test]
    async fn tcp_bytes_arrive_in_order_no_sooner_than_the_delay_and_the_end_passes_on() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = TcpDelay::start(server.local_addr().unwrap(), Duration::from_millis(20))
            .await
            .unwrap();
        let mut client = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
        let (mut upstream, _) = server.accept().await.unwrap();
        let sent = Instant::now();
        for i in 0u8..50 {
            client.write_all(&[i]).await.unwrap();
        }
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, (0u8..50).collect::<Vec<_>>());
        assert!(sent.elapsed() >= Duration::from_millis(20));
        let back = Instant::now();
        upstream.write_all(b"pong").await.unwrap();
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        assert!(back.elapsed() >= Duration::from_millis(20));
    }

    #[tokio::test]
    async fn the_floor_is_at_least_the_two_delays() {
        let floor = floor(Duration::from_millis(10), 3).await.unwrap();
        assert!(floor >= Duration::from_millis(20), "{floor:?}");
    }
}
