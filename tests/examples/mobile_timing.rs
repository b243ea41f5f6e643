//! Measures what a phone feels (not a test; prints medians):
//! - from `network_changed()` (QUIC migration to a new socket) to the first
//!   message delivered in each direction;
//! - a reconnection that resumes the session (QUIC handshake, SASL, XEP-0198
//!   `<resume/>`) through the balancer, with and without a TLS session
//!   ticket from an earlier connection (tickets are valid on every CM);
//! - bare QUIC handshakes through the balancer, full and resumed.
//!
//! Runs an in-process cluster (core, balancer, two CMs) on loopback.
//! Usage: cargo run --release -p longlink --example mobile_timing [ROUNDS]

use std::sync::Arc;
use std::time::{Duration, Instant};

use client_sdk::{Client, Event};
#[allow(dead_code)]
#[path = "../support/cluster.rs"]
mod cluster;

use cluster::{Cluster, DOMAIN};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|r| r.parse().ok())
        .unwrap_or(50);
    let cluster = Cluster::start_with_lb(2).await;
    cluster.add_user("alice", "secret");
    cluster.add_user("bob", "secret");
    cluster.wait_backends(2).await;
    let mut alice = cluster.login_lb("alice", "phone").await;
    let mut bob = cluster.login_lb("bob", "desk").await;

    // 1. migration: network_changed() to the first delivered message
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let start = Instant::now();
        alice.network_changed().expect("rebind");
        alice
            .send_message(bob.jid(), &format!("up {i}"))
            .await
            .unwrap();
        bob.next_message(Duration::from_secs(10)).await.unwrap();
        up.push(start.elapsed());
        let start = Instant::now();
        alice.network_changed().expect("rebind");
        bob.send_message(alice.jid(), &format!("down {i}"))
            .await
            .unwrap();
        alice.next_message(Duration::from_secs(10)).await.unwrap();
        down.push(start.elapsed());
    }

    // 2. reconnect + resume: abort the session and resume it from its saved id, as an app restart does
    let mut resume = Vec::new();
    for _ in 0..rounds {
        alice.ping().await.unwrap();
        let (id, h) = alice.resumption().expect("resumable");
        alice.abort();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let start = Instant::now();
        alice = Client::connect(
            cluster
                .options_lb("alice", "secret")
                .with_previous_session(&id, h),
        )
        .await
        .unwrap();
        resume.push(start.elapsed());
        assert!(alice.was_resumed());
    }
    while let Ok(Some(ev)) =
        tokio::time::timeout(Duration::from_millis(10), alice.next_event()).await
    {
        if let Event::Disconnected = ev {
            break;
        }
    }

    // 3. bare QUIC handshakes through the balancer: fresh config vs one
    //    whose session cache holds tickets from earlier handshakes
    let roots = certs::load_roots(&cluster.ca()).unwrap();
    let config = || {
        let tls = certs::client_config(roots.clone(), &[b"xmpp-client"]).unwrap();
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        quinn::ClientConfig::new(Arc::new(quic))
    };
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let shared = config();
    let (mut full, mut resumed) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let start = Instant::now();
        let c = ep
            .connect_with(config(), cluster.lb_addr(), DOMAIN)
            .unwrap()
            .await
            .unwrap();
        full.push(start.elapsed());
        c.close(0u32.into(), b"");
        let start = Instant::now();
        let c = ep
            .connect_with(shared.clone(), cluster.lb_addr(), DOMAIN)
            .unwrap()
            .await
            .unwrap();
        resumed.push(start.elapsed());
        // let the ticket arrive before closing
        tokio::time::sleep(Duration::from_millis(5)).await;
        c.close(0u32.into(), b"");
    }

    println!("rounds: {rounds} (medians, loopback, debug or release as built)");
    println!(
        "network_changed() -> first message delivered, client to server to peer: {}",
        ms(median(up))
    );
    println!(
        "network_changed() -> first message delivered, peer to client:           {}",
        ms(median(down))
    );
    println!(
        "reconnect + SASL + <resume/> through the balancer (new endpoint):      {}",
        ms(median(resume))
    );
    println!(
        "QUIC handshake through the balancer, full:                             {}",
        ms(median(full))
    );
    println!(
        "QUIC handshake through the balancer, with a session ticket:            {}",
        ms(median(resumed))
    );
    cluster.shutdown().await;
}
