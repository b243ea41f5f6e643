//! Forged-source QUIC Initials: Initials that claim a client's address but
//! whose sender never completes a handshake must not use up that address's
//! cap of unauthenticated connections — directly, and through a balancer
//! process (whose routing must bring a client's Initial after a Retry back
//! to the CM that sent the Retry).

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

mod support;
use support::process::Deployment;
use support::{Cluster, DOMAIN, WAIT, bounded};

/// `n` distinct client Initials (each its own connection attempt, its own
/// destination connection id), as a quinn client sends them: captured on a
/// socket that never answers, to be replayed from another address.
async fn capture_initials(ca: &std::path::Path, server_name: &str, n: usize) -> Vec<Vec<u8>> {
    let sink = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let roots = certs::load_roots(ca).unwrap();
    let tls = certs::client_config(roots, &[b"xmpp-client"]).unwrap();
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let sink_addr = sink.local_addr().unwrap();
    let mut seen = HashSet::new();
    let mut initials = Vec::new();
    let mut attempts = Vec::new();
    let mut buf = [0u8; 2048];
    // in batches, so the sink's receive buffer never overflows
    while initials.len() < n {
        let batch = (n - initials.len()).min(50);
        attempts.extend((0..batch).map(|_| ep.connect(sink_addr, server_name).unwrap()));
        let want = initials.len() + batch;
        while initials.len() < want {
            let len = tokio::time::timeout(WAIT, sink.recv(&mut buf))
                .await
                .expect("the client's Initials arrive")
                .unwrap();
            let packet = &buf[..len];
            // long header: flags, version (4), DCID length, DCID
            assert!(packet[0] & 0x80 != 0 && len >= 1200, "an Initial");
            let dcid = packet[6..6 + packet[5] as usize].to_vec();
            if seen.insert(dcid) {
                initials.push(packet.to_vec());
            }
        }
    }
    drop(attempts);
    ep.close(0u32.into(), b"");
    initials
}

/// Sends `initials` to `to` from a socket of this host that reads nothing:
/// to the server they come from a client at 127.0.0.1 that never answers,
/// as if an attacker forged that address.
fn forge(initials: &[Vec<u8>], to: SocketAddr) -> UdpSocket {
    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    for (i, initial) in initials.iter().enumerate() {
        attacker.send_to(initial, to).unwrap();
        if i % 50 == 49 {
            // paced, so the receiver's socket buffer does not overflow
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    attacker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_initials_from_an_address_hold_at_most_one_of_its_unauthenticated_slots() {
    bounded(90, async {
        let mut cluster = Cluster::start(0).await;
        cluster.add_cm_with(|c| c.pre_auth_per_address = 2).await;
        cluster.add_user("alice", "secret");
        let initials = capture_initials(&cluster.ca(), DOMAIN, 8).await;
        let _attacker = forge(&initials, cluster.cm_addr(0));
        // every attempt is either counted or answered with a Retry
        let seen = || {
            let cm = cluster.cm(0);
            cm.accepted.load(Ordering::Relaxed) + cm.retried.load(Ordering::Relaxed)
        };
        let deadline = Instant::now() + WAIT;
        while seen() < 8 {
            assert!(Instant::now() < deadline, "the CM never saw the Initials");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // one holds a slot, the rest were asked to prove the address
        assert_eq!(cluster.cm(0).retried.load(Ordering::Relaxed), 7);
        // the client at the forged address still gets in (after a Retry)
        let alice = cluster.try_login(0, "alice", "secret", "phone").await;
        let alice = alice.unwrap_or_else(|e| panic!("the forged address is locked out: {e}"));
        alice.ping().await.unwrap();
        cluster.shutdown().await;
    })
    .await;
}

/// The balancer's count of datagrams it forwarded to CMs.
fn forwarded(dep: &Deployment) -> u64 {
    let Ok(mut response) = ureq::get(&format!("http://{}/metrics", dep.lb_admin)).call() else {
        return 0;
    };
    let text = response.body_mut().read_to_string().unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("longlink_lb_packets_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_initials_through_a_balancer_process_do_not_lock_out_the_address_and_retries_route_back()
 {
    bounded(120, async {
        let mut dep = Deployment::start("example.org", 2, &["alice".to_owned()], "pw");
        dep.spawn_cm(1);
        dep.spawn_cm(2);
        dep.wait_backends(&["cm-1", "cm-2"]);
        // the deployment is up (a login, retried while it starts)
        dep.login("alice", "warmup").await.disconnect().await;
        let before = forwarded(&dep);
        // more than each CM's cap (256) for 127.0.0.1, spread by the balancer
        let count = 800;
        let initials = capture_initials(&dep.ca(), "example.org", count).await;
        let _attacker = forge(&initials, dep.lb());
        let deadline = Instant::now() + WAIT;
        while forwarded(&dep) < before + count as u64 {
            assert!(
                Instant::now() < deadline,
                "the balancer never forwarded the Initials"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // every login from the forged address gets in: after a Retry, its
        // next Initial carries the CM's connection id and goes back to it
        for i in 0..6 {
            let resource = format!("r{i}");
            let client = client_sdk::Client::connect(dep.client_options("alice", &resource))
                .await
                .unwrap_or_else(|e| panic!("login {i} from the forged address: {e}"));
            client.ping().await.unwrap();
            client.disconnect().await;
        }
    })
    .await;
}
