//! The spine end to end: clients on QUIC, CM nodes, the core, storage.
//! Every test runs a real cluster on loopback and is bounded in time.

use std::time::Duration;

use client_sdk::{Client, ClientError, Event, MessageState};
mod support;
use support::{Cluster, DOMAIN, WAIT, bounded, jid};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_crosses_cms_and_routing_table_shows_the_cm() {
    bounded(90, async {
        let cluster = Cluster::start(3).await;
        cluster.add_user("client1", "secret");
        cluster.add_user("client3", "secret");
        let c1 = cluster.login(0, "client1", "phone").await;
        let mut c3 = cluster.login(2, "client3", "phone").await;
        cluster.wait_routes(2).await;

        let id = c1
            .send_message(&jid("client3"), "hello from CM 1")
            .await
            .unwrap();
        let m = c3.next_message(WAIT).await.unwrap();
        assert_eq!(m.body.as_deref(), Some("hello from CM 1"));
        assert_eq!(m.from, format!("{}/phone", jid("client1")));
        assert_eq!(m.id.as_deref(), Some(id.as_str()));

        assert_eq!(cluster.node_of(c3.jid()).await.as_deref(), Some("cm-3"));
        assert_eq!(cluster.node_of(c1.jid()).await.as_deref(), Some("cm-1"));
        let routes = cluster.routes().await;
        let per_node: Vec<(String, u64)> = routes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["name"].as_str().unwrap().to_owned(),
                    n["sessions"].as_u64().unwrap(),
                )
            })
            .collect();
        assert!(per_node.contains(&("cm-3".into(), 1)), "{per_node:?}");
        assert!(per_node.contains(&("cm-2".into(), 0)), "{per_node:?}");

        // ping and an unsupported IQ (never silence)
        c1.ping().await.unwrap();
        let iq = xmpp_stream::element::Element::new("iq", xmpp_stream::ns::CLIENT)
            .with_attr("type", "get")
            .with_attr("to", DOMAIN)
            .with_child(xmpp_stream::element::Element::new(
                "query",
                "urn:example:nothing",
            ));
        let r = c1.iq(iq).await.unwrap();
        assert_eq!(r.error.as_deref(), Some("service-unavailable"));

        // a message to an unknown local user bounces with service-unavailable
        c1.send_message(&jid("nobody"), "anyone?").await.unwrap();
        let mut c1 = c1;
        let m = c1.next_message(WAIT).await.unwrap();
        assert_eq!(m.kind, "error");
        assert_eq!(m.error.as_deref(), Some("service-unavailable"));
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cm_added_at_runtime_serves_new_clients() {
    bounded(90, async {
        let mut cluster = Cluster::start(3).await;
        for u in ["a", "b", "d"] {
            cluster.add_user(u, "secret");
        }
        let mut a = cluster.login(0, "a", "r").await;
        let mut b = cluster.login(1, "b", "r").await;
        let fourth = cluster.add_cm().await;
        let mut d = cluster.login(fourth, "d", "r").await;
        cluster.wait_routes(3).await;
        assert_eq!(cluster.node_of(d.jid()).await.as_deref(), Some("cm-4"));

        d.send_message(&jid("a"), "to a").await.unwrap();
        d.send_message(&jid("b"), "to b").await.unwrap();
        assert_eq!(
            a.next_message(WAIT).await.unwrap().body.as_deref(),
            Some("to a")
        );
        assert_eq!(
            b.next_message(WAIT).await.unwrap().body.as_deref(),
            Some("to b")
        );
        a.send_message(d.jid(), "back to d").await.unwrap();
        let m = d.next_message(WAIT).await.unwrap();
        assert_eq!(m.body.as_deref(), Some("back to d"));
        assert_eq!(m.from, a.jid());
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_messages_survive_a_core_restart_and_arrive_in_order() {
    bounded(90, async {
        let mut cluster = Cluster::start(2).await;
        cluster.add_user("alice", "secret");
        cluster.add_user("bob", "secret");
        let mut alice = Client::connect(
            cluster
                .options(0, "alice", "secret")
                .with_resource("phone")
                .with_message_states(),
        )
        .await
        .unwrap();
        alice.send_presence(0).await.unwrap();
        let mut sent = Vec::new();
        for i in 0..5 {
            let id = alice
                .send_message(&jid("bob"), &format!("offline {i}"))
                .await
                .unwrap();
            sent.push(id);
        }
        // The core acknowledges a message it stores offline once the store
        // is over: all five acknowledged means all five were stored.
        let mut acked = Vec::new();
        while acked.len() < sent.len() {
            let ev = tokio::time::timeout(WAIT, alice.next_event())
                .await
                .expect("the messages are acknowledged")
                .expect("the session goes on");
            match ev {
                Event::MessageState {
                    id,
                    state: MessageState::Acknowledged,
                } => acked.push(id),
                Event::MessageState {
                    state: MessageState::Failed(why),
                    ..
                } => panic!("a message failed: {why}"),
                Event::Message(m) => panic!("something came back: {m:?}"),
                _ => {}
            }
        }
        assert_eq!(acked, sent);
        cluster.stop_core().await;
        cluster.start_core().await;

        let mut bob = cluster.try_login(1, "bob", "secret", "laptop").await;
        for _ in 0..50 {
            if bob.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            bob = cluster.try_login(1, "bob", "secret", "laptop").await;
        }
        let mut bob = bob.expect("bob logs in after the restart");
        bob.send_presence(0).await.unwrap();
        for i in 0..5 {
            let m = bob.next_message(WAIT).await.unwrap();
            assert_eq!(m.body, Some(format!("offline {i}")));
            assert!(m.from.starts_with(&jid("alice")));
            assert!(m.delay.is_some(), "offline messages carry a delay stamp");
        }
        // delivered once, then removed: a second login gets nothing
        bob.disconnect().await;
        let mut again = cluster
            .try_login(1, "bob", "secret", "laptop")
            .await
            .unwrap();
        again.send_presence(0).await.unwrap();
        again.ping().await.unwrap();
        // stored messages come first at a login (none overtakes them): the
        // first one is a marker sent now
        alice.send_message(&jid("bob"), "marker").await.unwrap();
        let next = again.next_message(WAIT).await.unwrap();
        assert_eq!(next.body.as_deref(), Some("marker"));
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_touches_no_other_session() {
    bounded(90, async {
        let cluster = Cluster::start(1).await;
        cluster.add_user("alice", "secret");
        cluster.add_user("bob", "secret");

        // wrong password
        let err = cluster.try_login(0, "alice", "wrong", "r").await.err();
        assert_eq!(err, Some(ClientError::Auth("not-authorized".into())));
        // unknown user looks the same
        let err = cluster.try_login(0, "mallory", "x", "r").await.err();
        assert_eq!(err, Some(ClientError::Auth("not-authorized".into())));

        let alice = cluster.login(0, "alice", "phone").await;
        let mut bob = cluster.login(0, "bob", "phone").await;
        cluster.wait_routes(2).await;

        // forged from is replaced by the bound JID
        alice
            .send_raw(format!("<message to='{}' from='ceo@{DOMAIN}/x' type='chat' id='f1'><body>trust me</body></message>", jid("bob")).as_bytes())
            .await
            .unwrap();
        let m = bob.next_message(WAIT).await.unwrap();
        assert_eq!(m.from, alice.jid());

        // an oversized stanza ends only alice's stream
        let mut alice = alice;
        let big = format!("<message to='{}'><body>{}</body></message>", jid("bob"), "x".repeat(100 * 1024));
        let _ = alice.send_raw(big.as_bytes()).await;
        let mut saw_error = None;
        while let Ok(Some(ev)) = tokio::time::timeout(WAIT, alice.next_event()).await {
            match ev {
                Event::StreamError(c) => {
                    saw_error = Some(c);
                    break;
                }
                Event::Disconnected => break,
                _ => {}
            }
        }
        assert_eq!(saw_error.as_deref(), Some("policy-violation"));
        // bob carries on
        bob.ping().await.unwrap();

        // malformed XML from a new alice session: not-well-formed, bob unaffected
        let mut alice2 = cluster.login(0, "alice", "desk").await;
        alice2.send_raw(b"<message><body>&bogus;</body></message>").await.unwrap();
        let mut cond = None;
        while let Ok(Some(ev)) = tokio::time::timeout(WAIT, alice2.next_event()).await {
            if let Event::StreamError(c) = ev {
                cond = Some(c);
                break;
            }
        }
        assert_eq!(cond.as_deref(), Some("not-well-formed"));
        bob.ping().await.unwrap();

        // the same full JID again: the old session gets conflict
        let bob2 = cluster.login(0, "bob", "phone").await;
        let mut cond = None;
        while let Ok(Some(ev)) = tokio::time::timeout(WAIT, bob.next_event()).await {
            if let Event::StreamError(c) = ev {
                cond = Some(c);
                break;
            }
        }
        assert_eq!(cond.as_deref(), Some("conflict"));
        bob2.ping().await.unwrap();
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cm_with_a_foreign_certificate_is_refused_by_the_core() {
    bounded(90, async {
        let cluster = Cluster::start(1).await;
        let foreign = tempfile::tempdir().unwrap();
        certs::init(foreign.path(), DOMAIN, 2, false).unwrap();
        let rogue = cm_node::start(cm_node::CmConfig::new(
            "cm-2",
            DOMAIN,
            "127.0.0.1:0".parse().unwrap(),
            cluster.core.as_ref().unwrap().quic_addr,
            foreign.path().to_path_buf(),
        ))
        .await
        .unwrap();
        let mut refused = false;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let metrics = cluster.metrics().await;
            if metrics
                .lines()
                .any(|l| l.starts_with("longlink_core_link_errors_total{reason=\"handshake\"}"))
            {
                refused = true;
                break;
            }
        }
        assert!(refused, "the core logged and counted the refused handshake");
        let routes = cluster.routes().await;
        let names: Vec<&str> = routes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n["name"].as_str())
            .collect();
        assert_eq!(names, ["cm-1"]);
        rogue.shutdown().await;
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_restart_keeps_clients_connected_and_messages_flowing() {
    bounded(90, async {
        let mut cluster = Cluster::start(2).await;
        cluster.add_user("alice", "secret");
        cluster.add_user("bob", "secret");
        let mut alice = cluster.login(0, "alice", "phone").await;
        let mut bob = cluster.login(1, "bob", "phone").await;
        cluster.wait_routes(2).await;
        alice.send_message(bob.jid(), "before").await.unwrap();
        assert_eq!(
            bob.next_message(WAIT).await.unwrap().body.as_deref(),
            Some("before")
        );

        cluster.stop_core().await;
        cluster.start_core().await;
        // the CMs reconnect and re-announce: the table is rebuilt, no re-login
        cluster.wait_routes(2).await;
        assert_eq!(cluster.node_of(bob.jid()).await.as_deref(), Some("cm-2"));
        alice.send_message(bob.jid(), "after").await.unwrap();
        assert_eq!(
            bob.next_message(WAIT).await.unwrap().body.as_deref(),
            Some("after")
        );
        bob.send_message(&jid("alice"), "to bare after")
            .await
            .unwrap();
        assert_eq!(
            alice.next_message(WAIT).await.unwrap().body.as_deref(),
            Some("to bare after")
        );
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sasl_mechanism_logs_in_and_untrusted_servers_are_refused() {
    bounded(90, async {
        let cluster = Cluster::start(1).await;
        cluster.add_user("alice", "secret");
        for mech in [
            client_sdk::Mechanism::ScramSha256,
            client_sdk::Mechanism::ScramSha1,
            client_sdk::Mechanism::Plain,
        ] {
            let opts = cluster.options(0, "alice", "secret").with_mechanism(mech);
            let client = client_sdk::Client::connect(opts)
                .await
                .unwrap_or_else(|e| panic!("{} login: {e}", mech.name()));
            assert!(client.jid().starts_with(&jid("alice")));
            client.ping().await.unwrap();
            client.disconnect().await;
            let bad = cluster.options(0, "alice", "wrong").with_mechanism(mech);
            assert_eq!(
                client_sdk::Client::connect(bad).await.err(),
                Some(ClientError::Auth("not-authorized".into())),
                "{}",
                mech.name()
            );
        }
        // a client trusting another CA refuses the CM's certificate
        let other = tempfile::tempdir().unwrap();
        certs::init(other.path(), DOMAIN, 1, false).unwrap();
        let opts = cluster
            .options(0, "alice", "secret")
            .with_ca_file(other.path().join("ca.pem"));
        let err = client_sdk::Client::connect(opts).await.err();
        assert!(matches!(err, Some(ClientError::Tls(_))), "{err:?}");
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_cm_loses_only_its_routes_after_the_grace_period() {
    bounded(90, async {
        let mut cluster = Cluster::start(2).await;
        cluster.add_user("alice", "secret");
        cluster.add_user("bob", "secret");
        // without stream management: nothing waits for the phone to resume
        let _phone = cluster.login_plain(0, "alice", "phone").await;
        let mut desk = cluster.login(1, "alice", "desk").await;
        let mut bob = cluster.login(1, "bob", "r").await;
        cluster.wait_routes(3).await;
        // crash cm-1: its connections just vanish
        cluster.cms[0].take().unwrap().abort();
        cluster.wait_routes(2).await;
        assert_eq!(
            cluster.node_of(&format!("{}/phone", jid("alice"))).await,
            None
        );
        // alice's other resource learns that the phone went away
        let mut saw_unavailable = false;
        while let Ok(Some(ev)) = tokio::time::timeout(WAIT, desk.next_event()).await {
            if let Event::Presence(p) = ev
                && p.from == format!("{}/phone", jid("alice"))
                && !p.available
            {
                saw_unavailable = true;
                break;
            }
        }
        assert!(saw_unavailable);
        // everyone on cm-2 carries on; a message to alice's bare JID reaches the desk
        bob.send_message(&jid("alice"), "still here?")
            .await
            .unwrap();
        assert_eq!(
            desk.next_message(WAIT).await.unwrap().body.as_deref(),
            Some("still here?")
        );
        desk.send_message(bob.jid(), "yes").await.unwrap();
        assert_eq!(
            bob.next_message(WAIT).await.unwrap().body.as_deref(),
            Some("yes")
        );
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cm_restarted_within_the_grace_period_leaves_no_stale_routes() {
    bounded(90, async {
        let mut cluster = Cluster::start(2).await;
        for u in ["alice", "bob", "carol"] {
            cluster.add_user(u, "secret");
        }
        let _alice = cluster.login_plain(0, "alice", "phone").await;
        let carol = cluster.login(1, "carol", "r").await;
        cluster.wait_routes(2).await;
        // cm-1 crashes and a new cm-1 process is up before the grace period ends
        cluster.restart_cm(0).await;
        let mut bob = cluster.login(0, "bob", "phone").await;
        cluster.wait_routes(2).await;
        assert_eq!(
            cluster.node_of(&format!("{}/phone", jid("alice"))).await,
            None
        );
        assert_eq!(cluster.node_of(bob.jid()).await.as_deref(), Some("cm-1"));
        // a message to alice is stored, never written to whoever reuses her session
        carol
            .send_message(&jid("alice"), "for alice")
            .await
            .unwrap();
        carol.send_message(&jid("bob"), "for bob").await.unwrap();
        let m = bob.next_message(WAIT).await.unwrap();
        assert_eq!(m.body.as_deref(), Some("for bob"));
        // nothing of alice's after it either: the next one is a marker
        carol.send_message(&jid("bob"), "marker").await.unwrap();
        let m = bob.next_message(WAIT).await.unwrap();
        assert_eq!(m.body.as_deref(), Some("marker"));
        let mut alice = cluster.login(1, "alice", "laptop").await;
        let m = alice.next_message(WAIT).await.unwrap();
        assert_eq!(m.body.as_deref(), Some("for alice"));
        assert!(m.delay.is_some());
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cm_refuses_connections_beyond_its_limit() {
    bounded(90, async {
        let mut cluster = Cluster::start(0).await;
        cluster.add_cm_with(|c| c.max_clients = 1).await;
        cluster.add_user("alice", "secret");
        cluster.add_user("bob", "secret");
        let alice = cluster.login(0, "alice", "r").await;
        let err = cluster.try_login(0, "bob", "secret", "r").await.err();
        assert!(matches!(err, Some(ClientError::Unreachable(_))), "{err:?}");
        // the connection held goes on; once it is gone, there is room again
        alice.ping().await.unwrap();
        alice.disconnect().await;
        // the CM frees the slot when it has seen the connection end
        let start = std::time::Instant::now();
        loop {
            match cluster.try_login(0, "bob", "secret", "r").await {
                Ok(_) => break,
                Err(e) => assert!(start.elapsed() < WAIT, "no room after alice left: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cluster.shutdown().await;
    })
    .await;
}

/// A metric's value in Prometheus text (`name` with its labels, if any).
fn metric(text: &str, name: &str) -> Option<i64> {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Waits (bounded) until the core's metrics satisfy `ok`; returns them.
async fn wait_metrics(cluster: &Cluster, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = cluster.metrics().await;
        if ok(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {what}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_core_cm_gauges_count_registered_cms_and_follow_one_that_leaves() {
    bounded(90, async {
        let mut cluster = Cluster::start(2).await;
        // two CMs, each with its default pool of two connections
        wait_metrics(&cluster, "2 nodes, 4 connections", |m| {
            metric(m, "longlink_core_cm_nodes") == Some(2)
                && metric(m, "longlink_core_cm_connections") == Some(4)
        })
        .await;
        cluster.cms[1].take().unwrap().shutdown().await;
        wait_metrics(&cluster, "1 node, 2 connections after cm-2 left", |m| {
            metric(m, "longlink_core_cm_nodes") == Some(1)
                && metric(m, "longlink_core_cm_connections") == Some(2)
        })
        .await;
        cluster.shutdown().await;
    })
    .await;
}

/// A QUIC connection to the core with `cert_node`'s CA-signed certificate,
/// announcing itself as `hello_node`; returns how the core closed it.
async fn link_as(cluster: &Cluster, cert_node: &str, hello_node: &str) -> quinn::ConnectionError {
    let pki = certs::PkiPaths::new(cluster.pki());
    let tls = certs::cluster_client_config(
        &pki.ca_cert(),
        &pki.cm_cert(cert_node),
        &pki.cm_key(cert_node),
        cm_protocol::ALPN,
    )
    .unwrap();
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(quic)));
    let core = cluster.core.as_ref().unwrap().quic_addr;
    let conn = ep
        .connect(core, certs::CORE_SERVER_NAME)
        .unwrap()
        .await
        .expect("the TLS handshake passes: the certificate is the cluster's");
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let mut buf = bytes::BytesMut::new();
    cm_protocol::Frame::Hello {
        node: hello_node.into(),
        client_addr: "127.0.0.1:1".into(),
        conn_index: 0,
        pool_size: 1,
        instance: 7,
    }
    .encode(&mut buf);
    send.write_all(&buf).await.unwrap();
    let closed = tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("the core closes the link");
    ep.close(0u32.into(), b"");
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_signed_cm_certificate_announcing_another_node_is_refused_by_the_core() {
    bounded(90, async {
        let cluster = Cluster::start(2).await;
        wait_metrics(&cluster, "2 nodes with both their connections", |m| {
            metric(m, "longlink_core_cm_nodes") == Some(2)
                && metric(m, "longlink_core_cm_connections") == Some(4)
        })
        .await;
        // cm-1's certificate, claiming to be cm-2
        match link_as(&cluster, "cm-1", "cm-2").await {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.error_code, 2u32.into());
                assert_eq!(&close.reason[..], b"node name does not match certificate");
            }
            other => panic!("closed for another reason: {other}"),
        }
        let m = wait_metrics(&cluster, "an identity error counted", |m| {
            metric(m, "longlink_core_link_errors_total{reason=\"identity\"}") == Some(1)
        })
        .await;
        // cm-2 keeps its own two connections; nothing was registered for the impostor
        assert_eq!(metric(&m, "longlink_core_cm_connections"), Some(4));
        let routes = cluster.routes().await;
        let mut nodes: Vec<(String, u64)> = routes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["name"].as_str().unwrap().to_owned(),
                    n["connections"].as_u64().unwrap(),
                )
            })
            .collect();
        nodes.sort();
        assert_eq!(nodes, [("cm-1".to_owned(), 2), ("cm-2".to_owned(), 2)]);
        cluster.shutdown().await;
    })
    .await;
}

/// `GET`s `url` with an optional bearer token; returns status and body.
async fn get(url: String, token: Option<String>) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        let agent = ureq::Agent::new_with_config(
            ureq::config::Config::builder()
                .http_status_as_error(false)
                .build(),
        );
        let mut req = agent.get(&url);
        if let Some(t) = token {
            req = req.header("authorization", &format!("Bearer {t}"));
        }
        let mut resp = req.call().unwrap();
        let status = resp.status().as_u16();
        (status, resp.body_mut().read_to_string().unwrap_or_default())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_core_admin_routes_and_users_need_the_token_and_metrics_name_no_user() {
    bounded(90, async {
        let cluster = Cluster::start(1).await;
        cluster.add_user("alice", "secret");
        let _alice = cluster.login(0, "alice", "phone").await;
        cluster.wait_routes(1).await;
        let admin = cluster.admin_addr();
        let routes = format!("http://{admin}/routes");
        assert_eq!(get(routes.clone(), None).await.0, 401);
        assert_eq!(get(routes.clone(), Some("0".repeat(64))).await.0, 401);
        let (status, body) = get(routes, Some(cluster.admin_token())).await;
        assert_eq!(status, 200);
        assert!(body.contains(&jid("alice")), "{body}");
        // account management without the token
        let users = format!("http://{admin}/users");
        let (status, garbage) = tokio::task::spawn_blocking(move || {
            let agent = ureq::Agent::new_with_config(
                ureq::config::Config::builder()
                    .http_status_as_error(false)
                    .build(),
            );
            let status = agent
                .post(&users)
                .send_json(serde_json::json!({"username": "mallory", "password": "x"}))
                .unwrap()
                .status()
                .as_u16();
            // the token is checked before the body is read: not 400/415/422
            let garbage = agent
                .post(&users)
                .content_type("application/json")
                .send("not json")
                .unwrap()
                .status()
                .as_u16();
            (status, garbage)
        })
        .await
        .unwrap();
        assert_eq!(status, 401);
        assert_eq!(
            garbage, 401,
            "a bad body without the token is refused for the token"
        );
        // /metrics stays open, and no label names a user
        let (status, metrics) = get(format!("http://{admin}/metrics"), None).await;
        assert_eq!(status, 200);
        assert!(metrics.contains("longlink_core_sessions 1"), "{metrics}");
        assert!(
            !metrics.contains("alice") && !metrics.contains(DOMAIN),
            "{metrics}"
        );
        cluster.shutdown().await;
    })
    .await;
}
