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

/// Handshakes each CM completed since `before`, once `n` have completed in
/// all (a CM completes a handshake a moment after its client does) or 10 s
/// have passed (a client whose close overtook its Finished leaves its CM a
/// failed handshake instead). Completed handshakes are the connections
/// clients made; a CM's attempt count also holds attempts it refused or
/// that never completed.
async fn completed_since(cluster: &Cluster, before: &[u64], n: u64) -> Vec<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let shares = delta(&cluster.handshakes_completed(), before);
        if shares.iter().sum::<u64>() >= n {
            return shares;
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!("only {shares:?} of {n} handshakes completed on the CMs");
            return shares;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
        let before = cluster.handshakes_completed();
        assert_eq!(handshakes(&ep, cluster.lb_addr(), 400).await, 400);
        let shares = completed_since(&cluster, &before, 400).await;
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
        let before = cluster.handshakes_completed();
        let admitted_before = cluster.accepted();
        assert_eq!(handshakes(&ep, cluster.lb_addr(), 300).await, 300);
        let shares = completed_since(&cluster, &before, 300).await;
        eprintln!(
            "while cm-{} drained: handshakes completed {shares:?}, attempts not answered with a Retry {:?}",
            index + 1,
            delta(&cluster.accepted(), &admitted_before)
        );
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
            eprintln!(
                "skipped: ipv6_clients_reach_ipv4_cms_through_the_balancer needs an IPv6 loopback (::1), and this machine has none"
            );
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
        let before_cms = cluster.encap_received();
        let mut sent = 0u64;
        for i in 0..40_000usize {
            let len = (next() % 1600) as usize;
            let mut d: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if i % 3 == 0 && len > 20 {
                d[0] = 0x40; // short header, config 0
                d[1] = 0x08; // first CID octet: config 0, length 9
            }
            // (an empty datagram is read as nothing, and counted nowhere)
            if sockets[i % sockets.len()].send_to(&d, lb).await.is_ok() && !d.is_empty() {
                sent += 1;
            }
        }
        let lb_handle = cluster.lb.as_ref().unwrap();
        let value = |metrics: &str, prefix: &str| -> u64 {
            metrics
                .lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.split_whitespace().last())
                .filter_map(|v| v.parse::<u64>().ok())
                .sum()
        };
        // Every datagram the balancer read is counted, dropped or forwarded:
        // wait (bounded) until all of them are, or the count stops at what
        // the kernel let through.
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut metrics = lb_handle.metrics();
        let mut last = u64::MAX;
        loop {
            let seen = value(&metrics, "longlink_lb_drops_total")
                + value(&metrics, "longlink_lb_packets_total");
            if seen >= sent || (seen == last && tokio::time::Instant::now() >= deadline) {
                break;
            }
            last = seen;
            tokio::time::sleep(Duration::from_millis(200)).await;
            metrics = lb_handle.metrics();
        }
        let count = |reason: &str| -> u64 {
            value(
                &metrics,
                &format!("longlink_lb_drops_total{{reason=\"{reason}\"}}"),
            )
        };
        assert!(
            count("malformed") + count("unknown_version") + count("oversize") > 1000,
            "{metrics}"
        );
        assert!(count("unknown_server") > 100, "{metrics}");
        // What reached the CMs is what the balancer forwarded: a spoofed
        // connection id decrypts to a live CM's server id about 2 times in
        // 65536, so at most a handful of the 40 000 — and every one of them
        // arrived from the balancer, none straight from the senders.
        let forwarded = value(&metrics, "longlink_lb_packets_total");
        assert!(forwarded <= 16, "forwarded {forwarded}: {metrics}");
        let reached: u64 = cluster
            .encap_received()
            .iter()
            .zip(&before_cms)
            .map(|(after, before)| after - before)
            .sum();
        let seen = value(&metrics, "longlink_lb_drops_total") + forwarded;
        eprintln!(
            "sent {sent}, the balancer counted {seen}, forwarded {forwarded}, the CMs took {reached}"
        );
        assert!(
            reached <= forwarded,
            "the CMs took {reached} datagrams, the balancer forwarded {forwarded}"
        );
        // the balancer and the cluster still serve
        assert_eq!(cluster.lb_backends().len(), 2);
        let alice = cluster.login_lb("alice", "r").await;
        alice.ping().await.unwrap();
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_signed_cm_certificate_registering_as_another_node_is_refused_by_the_balancer() {
    bounded(60, async {
        let cluster = Cluster::start_with_lb(1).await;
        cluster.wait_backends(1).await;
        // cm-1's certificate (valid, signed by the cluster CA), registering as cm-2
        let config = cm_node::balancer_link::client_config(&cluster.pki(), "cm-1").unwrap();
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(config);
        let control = cluster.lb_settings().control_listen;
        let conn = ep
            .connect(control, certs::LB_SERVER_NAME)
            .unwrap()
            .await
            .expect("the TLS handshake passes: the certificate is the cluster's");
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let registration = lb_protocol::control::Registration {
            node: "cm-2".into(),
            server_id: 2,
            encap: "127.0.0.1:9".parse().unwrap(),
        };
        send.write_all(&registration.to_line()).await.unwrap();
        send.finish().unwrap();
        let answer = tokio::time::timeout(WAIT, recv.read_to_end(1024))
            .await
            .expect("the balancer answers")
            .unwrap();
        assert_eq!(
            lb_protocol::control::Answer::from_line(&answer),
            lb_protocol::control::Answer::Refused(
                "node cm-2 does not match certificate cm-1".into()
            )
        );
        assert_eq!(cluster.lb_backends(), ["cm-1"]);
        conn.close(0u32.into(), b"");
        ep.close(0u32.into(), b"");
        cluster.shutdown().await;
    })
    .await;
}

/// Whether the balancer's table has `name`, draining.
fn draining(cluster: &Cluster, name: &str) -> bool {
    cluster
        .lb
        .as_ref()
        .unwrap()
        .backends()
        .iter()
        .any(|b| b.name == name && b.draining)
}

/// An admin request to the balancer, with an optional bearer token;
/// returns status and body.
async fn admin(method: &'static str, url: String, token: Option<String>) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        let agent = ureq::Agent::new_with_config(
            ureq::config::Config::builder()
                .http_status_as_error(false)
                .build(),
        );
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut resp = match method {
            "GET" => {
                let mut req = agent.get(&url);
                if let Some(a) = &auth {
                    req = req.header("authorization", a);
                }
                req.call()
            }
            _ => {
                let mut req = agent.post(&url);
                if let Some(a) = &auth {
                    req = req.header("authorization", a);
                }
                req.send_empty()
            }
        }
        .unwrap();
        let status = resp.status().as_u16();
        (status, resp.body_mut().read_to_string().unwrap_or_default())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_admin_needs_the_token_and_drains_only_known_cms() {
    bounded(60, async {
        let mut cluster = Cluster::start_with_lb(2).await;
        cluster.add_user("alice", "secret");
        cluster.wait_backends(2).await;
        let _alice = cluster.login_lb("alice", "r").await;
        let base = format!("http://{}", cluster.lb_settings().admin_listen);
        let token = cluster.lb_token();
        let wrong = Some("0".repeat(token.len()));
        // without the token, or with a wrong one: 401, and nothing changes
        for t in [None, wrong.clone()] {
            assert_eq!(
                admin("GET", format!("{base}/backends"), t.clone()).await.0,
                401
            );
            assert_eq!(
                admin("POST", format!("{base}/drain/cm-1"), t.clone())
                    .await
                    .0,
                401
            );
            assert!(!draining(&cluster, "cm-1"));
        }
        let (status, body) = admin("GET", format!("{base}/backends"), Some(token.clone())).await;
        assert_eq!(status, 200);
        assert!(
            body.contains("\"cm-1\"") && body.contains("\"cm-2\""),
            "{body}"
        );
        // a name not in the table: 404, and it does not join drained later
        assert_eq!(
            admin("POST", format!("{base}/drain/cm-3"), Some(token.clone()))
                .await
                .0,
            404
        );
        assert_eq!(
            admin("POST", format!("{base}/drain/cm-1"), Some(token.clone()))
                .await
                .0,
            204
        );
        assert!(draining(&cluster, "cm-1"));
        assert_eq!(
            admin("POST", format!("{base}/undrain/cm-1"), wrong).await.0,
            401
        );
        assert!(draining(&cluster, "cm-1"));
        assert_eq!(
            admin("POST", format!("{base}/undrain/cm-1"), Some(token))
                .await
                .0,
            204
        );
        assert!(!draining(&cluster, "cm-1"));
        // /metrics is open and names CMs, never a client
        let (status, metrics) = admin("GET", format!("{base}/metrics"), None).await;
        assert_eq!(status, 200);
        assert!(metrics.contains("backend=\"cm-1\""), "{metrics}");
        assert!(
            !metrics.contains("alice") && !metrics.contains(DOMAIN),
            "{metrics}"
        );
        cluster.add_cm().await;
        cluster.wait_backends(3).await;
        assert!(!draining(&cluster, "cm-3"));
        cluster.shutdown().await;
    })
    .await;
}
