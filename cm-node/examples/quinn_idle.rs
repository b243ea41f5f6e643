//! `quinn_idle` (`cargo run --release -p cm-node --example quinn_idle`): what quinn alone needs per idle server-side connection on
//! this machine, the yardstick for longlink's idle-memory goal.
//!
//! The tool starts itself again as a bare quinn server (a child process, so
//! its memory is its own): it accepts connections, takes one bidirectional
//! stream each and echoes it in one task per connection, as the least a
//! server can do. The parent opens N connections with one stream each,
//! writes a few bytes, lets the server settle and reports the server's RSS
//! growth per connection; then every connection must make a round trip
//! (settle under the client's 30 s idle timeout: the default transport
//! sends no keep-alives). Once with quinn's default transport settings and
//! once with the CM's settings for idle phones
//! (`cm_node::idle_phone_transport`). A third server, `proto`, drives
//! quinn-proto itself with the phone settings from one thread owning the
//! endpoint and every connection (no task, channel or waker per
//! connection): the floor a CM-specific quinn-proto driver could reach.
//! JSON lines on stdout, a line each on stderr.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;

#[derive(Parser)]
#[command(name = "quinn-idle", about = "RSS per idle quinn server connection")]
struct Cli {
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Seconds to let the server settle before reading its memory.
    #[arg(long, default_value_t = 5)]
    settle: u64,
    /// (internal) run as the server with these settings: default or phone.
    #[arg(long, hide = true)]
    serve: Option<String>,
    /// (internal) the server's certificate and key (DER), for --serve.
    #[arg(long, hide = true)]
    dir: Option<std::path::PathBuf>,
}

/// Resident memory of process `pid` in KiB, from /proc.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn transport(kind: &str) -> quinn::TransportConfig {
    match kind {
        "phone" => cm_node::idle_phone_transport(Duration::from_secs(25), Duration::from_secs(90)),
        _ => quinn::TransportConfig::default(),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if let (Some(kind), Some(dir)) = (&cli.serve, &cli.dir) {
        if kind == "proto" {
            return tokio::task::block_in_place(|| proto_server::serve(dir));
        }
        return serve(kind, dir).await;
    }
    let dir = tempfile::tempdir()?;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    std::fs::write(dir.path().join("cert.der"), cert.cert.der())?;
    std::fs::write(dir.path().join("key.der"), cert.signing_key.serialize_der())?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone())?;
    let client = quinn::ClientConfig::with_root_certificates(Arc::new(roots))?;
    for kind in ["default", "phone", "proto"] {
        measure(&cli, kind, dir.path(), &client).await?;
    }
    Ok(())
}

async fn measure(
    cli: &Cli,
    kind: &str,
    dir: &std::path::Path,
    client: &quinn::ClientConfig,
) -> Result<()> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--serve", kind, "--dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the server")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("server stdout")?).read_line(&mut line)?;
    let server: SocketAddr = line.trim().parse().context("server address")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(child.id()).unwrap_or(0);
    let mut endpoint = quinn::Endpoint::client(([127, 0, 0, 1], 0).into())?;
    endpoint.set_default_client_config(client.clone());
    let mut held = Vec::with_capacity(cli.connections);
    for _ in 0..cli.connections {
        let conn = endpoint.connect(server, "localhost")?.await?;
        let (mut send, recv) = conn.open_bi().await?;
        send.write_all(b"hello").await?;
        held.push((conn, send, recv));
    }
    tokio::time::sleep(Duration::from_secs(cli.settle)).await;
    let after = rss_kib(child.id()).unwrap_or(0);
    // every connection must still be up, or the figure is for fewer: each
    // makes a round trip after the reading (the server echoes)
    let mut alive = 0;
    for (_, send, recv) in &mut held {
        let trip = async {
            send.write_all(b"ping").await?;
            let mut back = [0u8; 9];
            recv.read_exact(&mut back).await?;
            anyhow::ensure!(&back == b"helloping", "echo {back:?}");
            anyhow::Ok(())
        };
        if tokio::time::timeout(Duration::from_secs(5), trip)
            .await
            .is_ok_and(|r| r.is_ok())
        {
            alive += 1;
        }
    }
    anyhow::ensure!(
        alive == cli.connections,
        "{kind} server: only {alive} of {} connections answered after the reading",
        cli.connections
    );
    let per = after.saturating_sub(before) as f64 / cli.connections as f64;
    println!(
        "{}",
        serde_json::json!({
            "scenario": "quinn-idle", "transport": kind,
            "connections": cli.connections, "kib_per_connection": per,
        })
    );
    eprintln!(
        "quinn alone, {kind} server: {} connections, server grew {} KiB → {per:.1} KiB per connection",
        cli.connections,
        after.saturating_sub(before)
    );
    drop(held);
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

/// The server's certificate and key, as the parent wrote them to `dir`.
fn cert_and_key(
    dir: &std::path::Path,
) -> Result<(
    rustls::pki_types::CertificateDer<'static>,
    rustls::pki_types::PrivateKeyDer<'static>,
)> {
    let cert = rustls::pki_types::CertificateDer::from(std::fs::read(dir.join("cert.der"))?);
    let key = rustls::pki_types::PrivateKeyDer::try_from(std::fs::read(dir.join("key.der"))?)
        .map_err(|e| anyhow::anyhow!("key: {e}"))?;
    Ok((cert, key))
}

async fn serve(kind: &str, dir: &std::path::Path) -> Result<()> {
    let (cert, key) = cert_and_key(dir)?;
    let mut config = quinn::ServerConfig::with_single_cert(vec![cert], key)?;
    config.transport_config(Arc::new(transport(kind)));
    let endpoint = quinn::Endpoint::server(config, ([127, 0, 0, 1], 0).into())?;
    println!("{}", endpoint.local_addr()?);
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            let Ok((mut send, mut recv)) = conn.accept_bi().await else {
                return;
            };
            // echo: the parent's check that the connection is alive
            while let Ok(Some(chunk)) = recv.read_chunk(4096, true).await {
                if send.write_all(&chunk.bytes).await.is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}

/// quinn-proto driven by one thread that owns the endpoint and every
/// connection: a datagram in, its connection's events and transmits out;
/// timers from each connection's `poll_timeout`. Enough to hold idle
/// connections with one stream each (what is read is dropped), not a
/// server.
mod proto_server {
    use std::collections::HashMap;
    use std::io::Write;
    use std::net::UdpSocket;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use anyhow::Result;
    use bytes::BytesMut;
    use quinn_proto::{
        Connection, ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig, Event,
        ServerConfig, StreamEvent, Transmit,
    };

    /// Serves until killed.
    pub fn serve(dir: &std::path::Path) -> Result<()> {
        let (cert, key) = super::cert_and_key(dir)?;
        let mut config = ServerConfig::with_single_cert(vec![cert], key)?;
        config.transport_config(Arc::new(super::transport("phone")));
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        println!("{}", socket.local_addr()?);
        std::io::stdout().flush()?;
        eprintln!(
            "(a quinn-proto Connection is {} bytes inline)",
            std::mem::size_of::<Connection>()
        );
        let mut server = Server {
            socket,
            endpoint: Endpoint::new(
                Arc::new(EndpointConfig::default()),
                Some(Arc::new(config)),
                false,
                None,
            ),
            conns: HashMap::new(),
            out: Vec::new(),
        };
        let mut datagram = vec![0u8; 65_536];
        loop {
            let now = Instant::now();
            let next = server
                .conns
                .values_mut()
                .filter_map(|c| c.poll_timeout())
                .min();
            let wait = next.map_or(Duration::from_secs(1), |t| t.saturating_duration_since(now));
            server
                .socket
                .set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
            let mut touched = Vec::new();
            if let Ok((n, from)) = server.socket.recv_from(&mut datagram) {
                let data = BytesMut::from(&datagram[..n]);
                touched.extend(server.datagram(from, data));
            }
            let now = Instant::now();
            for (ch, c) in &mut server.conns {
                if c.poll_timeout().is_some_and(|t| t <= now) {
                    c.handle_timeout(now);
                    touched.push(*ch);
                }
            }
            for ch in touched {
                server.drive(ch);
            }
        }
    }

    /// Reads what stream `id` has and writes it back (the parent's check
    /// that the connection is alive).
    fn echo(conn: &mut Connection, id: quinn_proto::StreamId) {
        let mut data = Vec::new();
        if let Ok(mut chunks) = conn.recv_stream(id).read(true) {
            while let Ok(Some(chunk)) = chunks.next(usize::MAX) {
                data.extend_from_slice(&chunk.bytes);
            }
            let _ = chunks.finalize();
        }
        if !data.is_empty() {
            let _ = conn.send_stream(id).write(&data);
        }
    }

    /// The endpoint, its connections and the socket they share.
    struct Server {
        socket: UdpSocket,
        endpoint: Endpoint,
        /// Boxed: a `Connection` is several KiB, and a map keeps room for
        /// more entries than it holds.
        conns: HashMap<ConnectionHandle, Box<Connection>>,
        out: Vec<u8>,
    }

    impl Server {
        /// Hands a datagram to the endpoint; the connection it concerns.
        fn datagram(
            &mut self,
            from: std::net::SocketAddr,
            data: BytesMut,
        ) -> Option<ConnectionHandle> {
            let now = Instant::now();
            self.out.clear();
            match self
                .endpoint
                .handle(now, from, None, None, data, &mut self.out)?
            {
                DatagramEvent::NewConnection(incoming) => {
                    self.out.clear();
                    match self.endpoint.accept(incoming, now, &mut self.out, None) {
                        Ok((ch, conn)) => {
                            self.conns.insert(ch, Box::new(conn));
                            Some(ch)
                        }
                        Err(e) => {
                            if let Some(t) = e.response {
                                self.send(&t);
                            }
                            None
                        }
                    }
                }
                DatagramEvent::ConnectionEvent(ch, event) => {
                    self.conns.get_mut(&ch)?.handle_event(event);
                    Some(ch)
                }
                DatagramEvent::Response(t) => {
                    self.send(&t);
                    None
                }
            }
        }

        /// Carries out what connection `ch` has to do now.
        fn drive(&mut self, ch: ConnectionHandle) {
            let Some(conn) = self.conns.get_mut(&ch) else {
                return;
            };
            while let Some(event) = conn.poll_endpoint_events() {
                if let Some(back) = self.endpoint.handle_event(ch, event) {
                    conn.handle_event(back);
                }
            }
            while let Some(event) = conn.poll() {
                match event {
                    // a new stream's first data comes with Opened only
                    Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                        while let Some(id) = conn.streams().accept(Dir::Bi) {
                            echo(conn, id);
                        }
                    }
                    Event::Stream(StreamEvent::Readable { id }) => echo(conn, id),
                    _ => {}
                }
            }
            let mut buf = Vec::new();
            while let Some(t) = conn.poll_transmit(Instant::now(), 1, &mut buf) {
                let _ = self.socket.send_to(&buf[..t.size], t.destination);
                buf.clear();
            }
            if conn.is_drained() {
                self.conns.remove(&ch);
            }
        }

        /// Sends a response the endpoint made.
        fn send(&self, t: &Transmit) {
            let _ = self.socket.send_to(&self.out[..t.size], t.destination);
        }
    }
}
