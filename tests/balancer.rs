//! The UDP load balancer end to end: QUIC-LB connection ids, Maglev for new
//! handshakes, encapsulation to the CMs, membership, drain, failures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use client_sdk::Client;
mod support;
use support::{Cluster, DOMAIN, WAIT, bounded, chat_with_moves, jid};

/// A bare QUIC client endpoint trusting the cluster CA (handshakes only).
fn raw_endpoint(cluster: &Cluster) -> quinn::Endpoint {
    let roots = certs::load_roots(&cluster.ca()).unwrap();
    let tls = certs::client_config(roots, &[b"xmpp-client"]).unwrap();
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    ep
}

/// Opens `n` QUIC connections through the balancer (at most 32 at a time).
async fn handshakes(ep: &quinn::Endpoint, lb: SocketAddr, n: usize) -> usize {
    let mut ok = 0;
    let mut pending = Vec::new();
    for i in 0..n {
        let ep = ep.clone();
        pending.push(tokio::spawn(async move {
            let conn = match ep.connect(lb, DOMAIN).ok()?.await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("handshake failed: {e}");
                    return None;
                }
            };
            conn.close(0u32.into(), b"");
            Some(())
        }));
        if pending.len() == 32 || i + 1 == n {
            for p in pending.drain(..) {
                if p.await.ok().flatten().is_some() {
                    ok += 1;
                }
            }
        }
    }
    ok
}

fn delta(after: &[u64], before: &[u64]) -> Vec<u64> {
    after
        .iter()
        .enumerate()
        .map(|(i, a)| a - before.get(i).copied().unwrap_or(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_spread_evenly_over_the_cms() {
    bounded(120, async {
        let cluster = Cluster::start_with_lb(3).await;
        cluster.wait_backends(3).await;
        let ep = raw_endpoint(&cluster);
        let before = cluster.accepted();
        assert_eq!(handshakes(&ep, cluster.lb_addr(), 3000).await, 3000);
        let shares = delta(&cluster.accepted(), &before);
        assert_eq!(shares.iter().sum::<u64>(), 3000);
        for s in &shares {
            assert!(
                (900..=1100).contains(s),
                "each CM within ±10% of a third: {shares:?}"
            );
        }
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_changes_port_or_address_stays_on_its_cm() {
    bounded(120, async {
        let cluster = Cluster::start_with_lb(3).await;
        cluster.add_user("alice", "secret");
        cluster.add_user("bob", "secret");
        cluster.wait_backends(3).await;
        let mut alice = cluster.login_lb("alice", "phone").await;
        let mut bob = cluster.login_lb("bob", "phone").await;
        cluster.wait_routes(2).await;
        let node = cluster.node_of(alice.jid()).await;
        let first_port = alice.local_addr().unwrap().port();
        chat_with_moves(&mut alice, &mut bob, 200, 50, |a, i| {
            if i == 100 {
                // Wi-Fi to cellular: another local address
                a.rebind_to("127.0.0.2:0".parse().unwrap()).unwrap();
            } else {
                a.network_changed().unwrap();
            }
        })
        .await;
        assert_ne!(alice.local_addr().unwrap().port(), first_port);
        assert_eq!(alice.local_addr().unwrap().ip().to_string(), "127.0.0.2");
        // same session, same CM: no re-login happened
        assert_eq!(cluster.node_of(alice.jid()).await, node);
        cluster.wait_routes(2).await;
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_cm_takes_new_connections_and_a_drained_one_none() {
    bounded(120, async {
        let mut cluster = Cluster::start_with_lb(3).await;
        for u in ["a", "b", "c"] {
            cluster.add_user(u, "secret");
        }
        cluster.wait_backends(3).await;
        let mut a = cluster.login_lb("a", "r").await;
        let mut b = cluster.login_lb("b", "r").await;
        cluster.wait_routes(2).await;
        let a_node = cluster.node_of(a.jid()).await;
        let b_node = cluster.node_of(b.jid()).await;

        cluster.add_cm().await;
        cluster.wait_backends(4).await;
        let ep = raw_endpoint(&cluster);
        let before = cluster.accepted();
        assert_eq!(handshakes(&ep, cluster.lb_addr(), 400).await, 400);
        let shares = delta(&cluster.accepted(), &before);
        assert!(
            shares[3] > 50,
            "the new CM takes new connections: {shares:?}"
        );
        // existing sessions did not move and still talk
        a.send_message(b.jid(), "still there").await.unwrap();
        assert_eq!(
            b.next_message(WAIT).await.unwrap().body.as_deref(),
            Some("still there")
        );
        assert_eq!(cluster.node_of(a.jid()).await, a_node);
        assert_eq!(cluster.node_of(b.jid()).await, b_node);

        // drain a's CM: no new connections there, a keeps chatting
        let drained = a_node.clone().unwrap();
        let index: usize = drained.trim_start_matches("cm-").parse::<usize>().unwrap() - 1;
        assert!(cluster.lb.as_ref().unwrap().set_draining(&drained, true));
        let before = cluster.accepted();
        assert_eq!(handshakes(&ep, cluster.lb_addr(), 300).await, 300);
        let shares = delta(&cluster.accepted(), &before);
        assert_eq!(
            shares[index], 0,
            "a drained CM gets no new connections: {shares:?}"
        );
        b.send_message(a.jid(), "drained but alive").await.unwrap();
        assert_eq!(
            a.next_message(WAIT).await.unwrap().body.as_deref(),
            Some("drained but alive")
        );
        let mut c = cluster.login_lb("c", "r").await;
        assert_ne!(cluster.node_of(c.jid()).await, a_node);
        a.send_message(c.jid(), "hi c").await.unwrap();
        assert_eq!(
            c.next_message(WAIT).await.unwrap().body.as_deref(),
            Some("hi c")
        );
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_cm_affects_only_its_clients_and_leaves_the_table() {
    bounded(120, async {
        let mut cluster = Cluster::start_with_lb(3).await;
        cluster.wait_backends(3).await;
        let victim = 1;
        cluster.cms[victim].take().unwrap().abort();
        let started = tokio::time::Instant::now();
        cluster.wait_backends(2).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "left within about 2 s"
        );
        let ep = raw_endpoint(&cluster);
        let before = cluster.accepted();
        assert_eq!(
            handshakes(&ep, cluster.lb_addr(), 300).await,
            300,
            "every new connection lands on a live CM"
        );
        let shares = delta(&cluster.accepted(), &before);
        assert_eq!(shares[victim], 0);
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_reach_ipv4_cms_through_the_balancer() {
    bounded(120, async {
        let cluster = Cluster::start_with_lb(2).await;
        let Some(v6) = cluster.lb_addr_v6() else {
            eprintln!("no IPv6 loopback here; nothing to test");
            return cluster.shutdown().await;
        };
        cluster.add_user("alice", "secret");
        cluster.add_user("bob", "secret");
        cluster.wait_backends(2).await;
        let mut opts = cluster.options_lb("alice", "secret").with_resource("v6");
        opts.server = v6;
        let alice = Client::connect(opts).await.expect("login over IPv6");
        alice.send_presence(0).await.unwrap();
        let mut bob = cluster.login_lb("bob", "v4").await;
        alice.send_message(bob.jid(), "over v6").await.unwrap();
        assert_eq!(
            bob.next_message(WAIT).await.unwrap().body.as_deref(),
            Some("over v6")
        );
        alice.ping().await.unwrap();
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn established_connections_survive_a_balancer_restart() {
    bounded(120, async {
        let mut cluster = Cluster::start_with_lb(2).await;
        cluster.add_user("alice", "secret");
        cluster.add_user("bob", "secret");
        cluster.wait_backends(2).await;
        let mut alice = cluster.login_lb("alice", "r").await;
        let mut bob = cluster.login_lb("bob", "r").await;
        cluster.wait_routes(2).await;
        alice.send_message(bob.jid(), "before").await.unwrap();
        assert_eq!(
            bob.next_message(WAIT).await.unwrap().body.as_deref(),
            Some("before")
        );
        cluster.stop_lb().await;
        cluster.start_lb().await;
        cluster.wait_backends(2).await;
        alice.send_message(bob.jid(), "after").await.unwrap();
        assert_eq!(
            bob.next_message(WAIT).await.unwrap().body.as_deref(),
            Some("after")
        );
        bob.send_message(&jid("alice"), "back").await.unwrap();
        assert_eq!(
            alice.next_message(WAIT).await.unwrap().body.as_deref(),
            Some("back")
        );
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_spoofed_datagrams_are_dropped_and_counted() {
    bounded(120, async {
        let cluster = Cluster::start_with_lb(2).await;
        cluster.add_user("alice", "secret");
        cluster.wait_backends(2).await;
        let lb = cluster.lb_addr();
        let mut rng_state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng_state ^= rng_state << 13;
            rng_state ^= rng_state >> 7;
            rng_state ^= rng_state << 17;
            rng_state
        };
        // many sources, random sizes and contents, spoofed short headers
        let mut sockets = Vec::new();
        for _ in 0..64 {
            sockets.push(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        }
        for i in 0..40_000usize {
            let len = (next() % 1600) as usize;
            let mut d: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if i % 3 == 0 && len > 20 {
                d[0] = 0x40; // short header, config 0
                d[1] = 0x08; // first CID octet: config 0, length 9
            }
            let _ = sockets[i % sockets.len()].send_to(&d, lb).await;
        }
        // the balancer counts them as it reads them: wait for the counts
        let start = std::time::Instant::now();
        loop {
            let metrics = cluster.lb.as_ref().unwrap().metrics();
            let count = |reason: &str| -> u64 {
                metrics
                    .lines()
                    .find(|l| {
                        l.starts_with(&format!("longlink_lb_drops_total{{reason=\"{reason}\"}}"))
                    })
                    .and_then(|l| l.split_whitespace().last())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            if count("malformed") + count("unknown_version") + count("oversize") > 1000
                && count("unknown_server") > 100
            {
                break;
            }
            assert!(start.elapsed() < WAIT, "{metrics}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // the balancer and the cluster still serve
        assert_eq!(cluster.lb_backends().len(), 2);
        let alice = cluster.login_lb("alice", "r").await;
        alice.ping().await.unwrap();
        cluster.shutdown().await;
    })
    .await;
}
