//! Load benchmark of the balancer's data plane (run in release):
//!
//! ```sh
//! cargo run --release -p lb --example lb_bench -- [SECONDS] [SENDERS]
//! ```
//!
//! A real balancer (in this process, its own tokio runtime thread) with one
//! registered backend: an echo "CM" that unwraps each encapsulated datagram
//! and sends it back through the balancer, as a CM does. Two measurements,
//! side by side in one run:
//!
//! - **throughput**: SENDERS sockets blast 1-RTT-sized datagrams with routable
//!   CIDs at the balancer for SECONDS; the echo backend counts what arrives.
//!   Reported: datagrams forwarded per second (one direction).
//! - **latency**: one datagram at a time, round trip client → balancer →
//!   echo → balancer → client, versus client → echo → client directly;
//!   the added latency is the difference of the medians (two balancer
//!   traversals) and its half (one traversal).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lb::server::start;
use lb::settings::LbSettings;
use lb_protocol::CidEncoder;
use lb_protocol::control::{self, Answer, Registration};
use lb_protocol::encap;

const PAYLOAD: usize = 1200;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3);
    let senders: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2);
    let dir = tempfile::tempdir()?;
    certs::init(dir.path(), "bench.test", 1, false)?;
    let settings = LbSettings::local(dir.path().to_path_buf());
    let lb_config = settings.quic_lb_config()?;
    let lb = start(settings).await?;
    let lb_addr = lb.public_addrs[0];

    // The echo backend: unwraps, then sends back through the balancer (encapsulated mode)
    // or straight to the sender (direct mode, for the latency baseline).
    let echo = Arc::new(std::net::UdpSocket::bind("127.0.0.1:0")?);
    let echo_addr = echo.local_addr()?;
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (echo, received, stop, backend) = (
            echo.clone(),
            received.clone(),
            stop.clone(),
            lb.backend_addr,
        );
        echo.set_read_timeout(Some(Duration::from_millis(100)))?;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 2048];
            let mut out = Vec::with_capacity(2048);
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, from)) = echo.recv_from(&mut buf) else {
                    continue;
                };
                received.fetch_add(1, Ordering::Relaxed);
                if from == backend {
                    if let Ok((client, payload)) = encap::decode(&buf[..n])
                        && payload.first() == Some(&0x41)
                    {
                        out.clear();
                        encap::encode(client, payload, &mut out);
                        let _ = echo.send_to(&out, backend);
                    }
                } else {
                    let _ = echo.send_to(&buf[..n], from);
                }
            }
        });
    }

    // Register the echo socket as cm-1 over the real control channel.
    let (_control_ep, control_conn) = register(dir.path(), lb.control_addr, echo_addr).await?;
    while lb.backends().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cid = CidEncoder::new(lb_config, &[0, 1])?.generate();

    // Throughput: 0x40 = short header, not echoed.
    let mut datagram = vec![0x40u8];
    datagram.extend_from_slice(&cid);
    datagram.resize(PAYLOAD, 0xab);
    let forwarded_metric = |lb: &lb::server::LbHandle| -> u64 {
        lb.metrics()
            .lines()
            .find(|l| l.starts_with("longlink_lb_packets_total{backend=\"cm-1\"}"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let before = forwarded_metric(&lb);
    let cpu_before = runtime_cpu_seconds();
    let start_t = Instant::now();
    let deadline = start_t + Duration::from_secs(seconds);
    let mut threads = Vec::new();
    for _ in 0..senders {
        let datagram = datagram.clone();
        threads.push(std::thread::spawn(move || -> u64 {
            let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            let mut sent = 0u64;
            while Instant::now() < deadline {
                for _ in 0..64 {
                    if sock.send_to(&datagram, lb_addr).is_ok() {
                        sent += 1;
                    }
                }
            }
            sent
        }));
    }
    let sent: u64 = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let forwarded = forwarded_metric(&lb) - before;
    let lb_cpu = runtime_cpu_seconds() - cpu_before;
    let secs = start_t.elapsed().as_secs_f64().min(seconds as f64);
    let pps = forwarded as f64 / secs;
    let per_core = forwarded as f64 / lb_cpu.max(1e-9);
    let _ = received.load(Ordering::Relaxed);

    // Latency: 0x41 marks datagrams the echo returns.
    datagram[0] = 0x41;
    let rtt = |target: SocketAddr, n: usize| -> Result<Vec<f64>, std::io::Error> {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
        sock.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut buf = vec![0u8; 2048];
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            sock.send_to(&datagram, target)?;
            if sock.recv_from(&mut buf).is_ok() {
                samples.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        samples.sort_by(f64::total_cmp);
        Ok(samples)
    };
    let (mut via_lb, mut direct) = (Vec::new(), Vec::new());
    // Interleave rounds so both see the same machine conditions.
    for _ in 0..10 {
        via_lb.extend(rtt(lb_addr, 500)?);
        direct.extend(rtt(echo_addr, 500)?);
    }
    via_lb.sort_by(f64::total_cmp);
    direct.sort_by(f64::total_cmp);
    let median = |v: &[f64]| v.get(v.len() / 2).copied().unwrap_or(f64::NAN);
    let p99 = |v: &[f64]| v.get(v.len() * 99 / 100).copied().unwrap_or(f64::NAN);
    stop.store(true, Ordering::Relaxed);
    control_conn.close(0u32.into(), b"bench done");
    println!(
        "{{\"senders\":{senders},\"seconds\":{secs:.2},\"sent\":{sent},\"forwarded\":{forwarded},\"forwarded_per_second\":{pps:.0},\"balancer_cpu_seconds\":{lb_cpu:.2},\"forwarded_per_cpu_second\":{per_core:.0},\
         \"rtt_direct_median_us\":{:.1},\"rtt_via_lb_median_us\":{:.1},\"rtt_direct_p99_us\":{:.1},\"rtt_via_lb_p99_us\":{:.1},\
         \"added_median_us_round_trip\":{:.1},\"added_median_us_per_traversal\":{:.1}}}",
        median(&direct),
        median(&via_lb),
        p99(&direct),
        p99(&via_lb),
        median(&via_lb) - median(&direct),
        (median(&via_lb) - median(&direct)) / 2.0
    );
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| datagrams forwarded per second ({PAYLOAD} B, {senders} senders, cores shared) | {pps:.0} |"
    );
    println!(
        "| datagrams forwarded per second of balancer CPU (one core's worth) | {per_core:.0} |"
    );
    println!(
        "| round trip direct, median / p99 | {:.1} / {:.1} µs |",
        median(&direct),
        p99(&direct)
    );
    println!(
        "| round trip via balancer, median / p99 | {:.1} / {:.1} µs |",
        median(&via_lb),
        p99(&via_lb)
    );
    println!(
        "| added by the balancer, median | {:.1} µs per round trip ({:.1} µs per traversal) |",
        median(&via_lb) - median(&direct),
        (median(&via_lb) - median(&direct)) / 2.0
    );
    lb.shutdown().await;
    Ok(())
}

/// Registers `encap` as cm-1 with the balancer's control endpoint, as a CM
/// does (cm-node's `balancer_link`, which the balancer does not link), and
/// returns the connection that keeps it registered (and its endpoint).
async fn register(
    pki_dir: &std::path::Path,
    control_addr: SocketAddr,
    encap: SocketAddr,
) -> Result<(quinn::Endpoint, quinn::Connection), Box<dyn std::error::Error>> {
    let pki = certs::PkiPaths::new(pki_dir);
    let tls = certs::cluster_client_config(
        &pki.ca_cert(),
        &pki.cm_cert("cm-1"),
        &pki.cm_key("cm-1"),
        control::ALPN,
    )?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(control::transport()));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    let conn = endpoint
        .connect_with(config, control_addr, certs::LB_SERVER_NAME)?
        .await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let registration = Registration {
        node: "cm-1".into(),
        server_id: 1,
        encap,
    };
    send.write_all(&registration.to_line()).await?;
    send.finish()?;
    match Answer::from_line(&recv.read_to_end(control::MAX_ANSWER_LEN).await?) {
        Answer::Accepted => Ok((endpoint, conn)),
        Answer::Refused(why) => Err(format!("registration refused: {why}").into()),
    }
}

/// CPU seconds used so far by the balancer's data-plane threads (`lb-*`).
fn runtime_cpu_seconds() -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    let mut total = 0u64;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("lb-") {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // fields after the ")" : state is field 3; utime 14, stime 15
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
            let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
            total += utime + stime;
        }
    }
    total as f64 / tick
}
