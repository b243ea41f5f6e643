//! Resource bounds against abusive clients, end to end: QUIC connections
//! that never open a stream, unauthenticated connections per address,
//! sessions per account.

use std::sync::Arc;
use std::time::{Duration, Instant};

use client_sdk::ClientError;
mod support;
use support::{Cluster, DOMAIN, WAIT, bounded};
use tokio::io::AsyncReadExt;

/// A bare QUIC client endpoint trusting the cluster CA (handshakes only).
fn raw_endpoint(cluster: &Cluster) -> quinn::Endpoint {
    let roots = certs::load_roots(&cluster.ca()).unwrap();
    let tls = certs::client_config(roots, &[b"xmpp-client"]).unwrap();
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    ep
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_connection_that_never_opens_a_stream_is_closed_after_the_stream_wait() {
    bounded(60, async {
        let mut cluster = Cluster::start(0).await;
        cluster.add_cm_with(|c| c.stream_wait_ms = 500).await;
        let ep = raw_endpoint(&cluster);
        let started = Instant::now();
        let conn = ep
            .connect(cluster.cm_addr(0), DOMAIN)
            .unwrap()
            .await
            .expect("handshake");
        // keep-alives (25 s) would hold it up to the idle timeout (90 s)
        let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed())
            .await
            .expect("the CM closes a connection that opens no stream");
        match closed {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(&close.reason[..], b"no stream")
            }
            other => panic!("closed by {other:?}"),
        }
        assert!(started.elapsed() >= Duration::from_millis(500));
        ep.close(0u32.into(), b"");
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_connection_whose_streams_never_authenticate_is_closed_after_the_auth_wait() {
    bounded(60, async {
        let mut cluster = Cluster::start(0).await;
        cluster.add_cm_with(|c| c.auth_wait_ms = 1000).await;
        let ep = raw_endpoint(&cluster);
        let conn = ep
            .connect(cluster.cm_addr(0), DOMAIN)
            .unwrap()
            .await
            .expect("handshake");
        // a stream that sends its header and then nothing: its own
        // negotiation deadline is 60 s, and another could follow it
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let header = format!(
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='{DOMAIN}' version='1.0'>"
        );
        send.write_all(header.as_bytes()).await.unwrap();
        let mut first = [0u8; 16];
        recv.read_exact(&mut first).await.expect("the CM answers");
        let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed())
            .await
            .expect("the CM closes a connection that does not authenticate");
        match closed {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(&close.reason[..], b"not authenticated")
            }
            other => panic!("closed by {other:?}"),
        }
        ep.close(0u32.into(), b"");
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_unauthenticated_connection_from_an_address_at_its_cap_is_refused_while_authenticated_ones_go_on()
 {
    bounded(90, async {
        let mut cluster = Cluster::start(0).await;
        cluster
            .add_cm_with(|c| {
                c.pre_auth_per_address = 2;
                c.tcp_listen = Some("127.0.0.1:0".parse().unwrap());
            })
            .await;
        cluster.add_user("alice", "secret");
        cluster.add_user("bob", "secret");
        // authenticated connections do not count
        let alice = cluster.login(0, "alice", "phone").await;
        let carol_like = cluster.try_login(0, "alice", "secret", "desk").await;
        assert!(carol_like.is_ok(), "{:?}", carol_like.err());
        // two connections from 127.0.0.1 that never authenticate: the cap
        let ep = raw_endpoint(&cluster);
        let mut held = Vec::new();
        for _ in 0..2 {
            let conn = ep.connect(cluster.cm_addr(0), DOMAIN).unwrap().await;
            held.push(conn.expect("below the cap"));
        }
        // the third is refused, on QUIC ...
        let third = ep.connect(cluster.cm_addr(0), DOMAIN).unwrap().await;
        assert!(third.is_err(), "a third unauthenticated connection");
        let err = cluster.try_login(0, "bob", "secret", "r").await.err();
        assert!(matches!(err, Some(ClientError::Unreachable(_))), "{err:?}");
        // ... and on TCP: closed before a byte
        let tcp_addr = cluster.cm(0).tcp_addr.expect("tcp listener");
        let mut tcp = tokio::net::TcpStream::connect(tcp_addr).await.unwrap();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .expect("closed at once");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        // the authenticated session is unaffected
        alice.ping().await.unwrap();
        // once one of them is gone, there is room again
        held.pop().unwrap().close(0u32.into(), b"");
        let deadline = Instant::now() + WAIT;
        let bob = loop {
            match cluster.try_login(0, "bob", "secret", "r").await {
                Ok(bob) => break bob,
                Err(e) if Instant::now() > deadline => panic!("bob never got in: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        bob.ping().await.unwrap();
        drop(held);
        ep.close(0u32.into(), b"");
        cluster.shutdown().await;
    })
    .await;
}
