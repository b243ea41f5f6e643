//! A CM's `/metrics` end to end: a QUIC client and a STARTTLS client log
//! in (and one login is refused), exchange stanzas, the CM refuses one
//! stanza, and the QUIC client moves to another socket; the CM's admin
//! endpoint counts each of these by transport.

use std::time::Duration;

use client_sdk::Mechanism;
use client_sdk::transport::{Dialer, Transport};
mod support;
use support::{Cluster, DOMAIN, WAIT, bounded, metric_value};

/// The value of `name` in `text`, 0 if it is not exported yet.
fn value(text: &str, name: &str) -> f64 {
    metric_value(text, name).unwrap_or(0.0)
}

/// Waits (bounded) until CM 0's metric `name` is `want`; returns the text.
async fn wait_for(cluster: &Cluster, name: &str, want: f64) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = cluster.cm_metrics(0).await;
        if value(&text, name) == want {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never became {want}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn series(name: &str, transport: &str, labels: &str) -> String {
    format!("longlink_cm_{name}{{transport=\"{transport}\",{labels}}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cm_counts_sessions_logins_stanzas_refusals_and_migrations_by_transport() {
    bounded(120, async {
        let mut cluster = Cluster::start(0).await;
        cluster
            .add_cm_with(|c| {
                c.tcp_listen = Some("127.0.0.1:0".parse().unwrap());
                c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
            })
            .await;
        cluster.add_user("alice", "secret");
        cluster.add_user("bob", "secret");

        // a login refused over QUIC, then alice over QUIC
        let refused = cluster.try_login(0, "alice", "wrong", "r").await;
        assert!(refused.is_err(), "a wrong password is refused");
        let mut alice = cluster.login(0, "alice", "phone").await;
        // bob over STARTTLS, by hand: every byte he sends is known
        let roots = client_sdk::load_roots(&cluster.ca()).unwrap();
        let tcp = cluster.cm(0).tcp_addr.expect("a STARTTLS listener");
        let dialer = Dialer::new(tcp, DOMAIN, Transport::Starttls, roots).unwrap();
        let mut bob = dialer.connect(None).await.expect("STARTTLS").io;
        bob.authenticate("bob", "secret", Mechanism::ScramSha256)
            .await
            .expect("bob authenticates");
        bob.open(DOMAIN).await.unwrap();
        let features = bob.element().await.unwrap();
        let bob_jid = bob.bind(&features, Some("desk")).await.expect("bound");
        bob.write(b"<presence/>").await.unwrap();

        // one bound session on each transport, none negotiating (the
        // refused login's stream ends on its own)
        wait_for(
            &cluster,
            &series("sessions", "quic", "state=\"negotiating\""),
            0.0,
        )
        .await;
        let before = cluster.cm_metrics(0).await;
        for t in ["quic", "starttls"] {
            let bound = series("sessions", t, "state=\"bound\"");
            assert_eq!(value(&before, &bound), 1.0, "{bound}: {before}");
            let accepted = format!("longlink_cm_connections_accepted_total{{transport=\"{t}\"}}");
            let want = if t == "quic" { 2.0 } else { 1.0 };
            assert_eq!(value(&before, &accepted), want, "{accepted}: {before}");
        }
        let logins = |text: &str, t: &str, result: &str| {
            value(
                text,
                &series("logins_total", t, &format!("result=\"{result}\"")),
            )
        };
        assert_eq!(logins(&before, "quic", "ok"), 1.0, "{before}");
        assert_eq!(logins(&before, "quic", "failed"), 1.0, "{before}");
        assert_eq!(logins(&before, "starttls", "ok"), 1.0, "{before}");
        assert_eq!(logins(&before, "starttls", "failed"), 0.0, "{before}");

        // three stanzas from alice to bob, two back
        for i in 0..3 {
            alice
                .send_message(&bob_jid, &format!("a{i}"))
                .await
                .unwrap();
        }
        let mut received = 0;
        while received < 3 {
            let el = bob.element().await.expect("bob reads");
            if el.name == "message" {
                received += 1;
            }
        }
        let mut sent_by_bob = 0;
        for i in 0..2 {
            let stanza = format!(
                "<message to='{}' type='chat' id='b{i}'><body>b{i}</body></message>",
                alice.jid()
            );
            bob.write(stanza.as_bytes()).await.unwrap();
            sent_by_bob += stanza.len();
        }
        for _ in 0..2 {
            alice.next_message(WAIT).await.expect("alice reads");
        }
        let after = cluster.cm_metrics(0).await;
        let delta = |name: String| value(&after, &name) - value(&before, &name);
        let stanzas = |t: &str, d: &str| series("stanzas_total", t, &format!("direction=\"{d}\""));
        let bytes =
            |t: &str, d: &str| series("client_bytes_total", t, &format!("direction=\"{d}\""));
        assert_eq!(delta(stanzas("quic", "in")), 3.0, "{after}");
        assert_eq!(delta(stanzas("starttls", "out")), 3.0, "{after}");
        assert_eq!(delta(stanzas("starttls", "in")), 2.0, "{after}");
        assert_eq!(delta(stanzas("quic", "out")), 2.0, "{after}");
        assert_eq!(
            delta(bytes("starttls", "in")),
            sent_by_bob as f64,
            "{after}"
        );
        assert!(delta(bytes("starttls", "out")) > 0.0, "{after}");
        assert!(delta(bytes("quic", "in")) > 0.0, "{after}");
        assert!(delta(bytes("quic", "out")) > 0.0, "{after}");
        let frames = |d: &str| format!("longlink_cm_core_frames_total{{direction=\"{d}\"}}");
        assert!(delta(frames("out")) >= 5.0, "{after}");
        assert!(delta(frames("in")) >= 5.0, "{after}");
        assert_eq!(value(&after, "longlink_cm_core_links"), 2.0, "{after}");

        // one stanza the CM refuses: bob's, above max_stanza_bytes
        let max_stanza_bytes =
            cm_node::CmConfig::new("cm-1", DOMAIN, tcp, tcp, "".into()).max_stanza_bytes;
        let body = "x".repeat(max_stanza_bytes + 1);
        let big = format!(
            "<message to='{}'><body>{body}</body></message>",
            alice.jid()
        );
        let _ = bob.write(big.as_bytes()).await; // the CM may close mid-write
        let error = loop {
            match bob.element().await {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert!(
            format!("{error:?}").contains("policy-violation"),
            "{error:?}"
        );
        let refused = wait_for(
            &cluster,
            &series("sessions", "starttls", "state=\"bound\""),
            0.0,
        )
        .await;
        assert_eq!(
            value(
                &refused,
                "longlink_cm_drops_total{reason=\"stanza_limits\"}"
            ),
            1.0,
            "{refused}"
        );
        let ends = series(
            "stream_ends_total",
            "starttls",
            "reason=\"policy-violation\"",
        );
        assert_eq!(value(&refused, &ends), 1.0, "{refused}");
        assert_eq!(delta(stanzas("starttls", "in")), 2.0, "not relayed");

        // alice's phone changes networks; her next stanza shows the new path
        assert_eq!(
            value(&refused, "longlink_cm_quic_path_changes_total"),
            0.0,
            "{refused}"
        );
        alice.network_changed().expect("rebind");
        alice.send_message(&bob_jid, "moved").await.unwrap();
        alice.ping().await.expect("alice is still connected");
        let moved = wait_for(&cluster, "longlink_cm_quic_path_changes_total", 1.0).await;
        assert_eq!(
            value(&moved, &series("sessions", "quic", "state=\"bound\"")),
            1.0,
            "{moved}"
        );
        // nothing waits in a queue once at rest (a frame on its way, such
        // as an acknowledgement, may be counted at the first look)
        for toward in ["clients", "core"] {
            let name = format!("longlink_cm_queued_bytes{{toward=\"{toward}\"}}");
            wait_for(&cluster, &name, 0.0).await;
        }
        // labels name transports and reasons, never a user or the domain
        assert!(
            !moved.contains("alice") && !moved.contains(DOMAIN),
            "{moved}"
        );
        alice.disconnect().await;
        cluster.shutdown().await;
    })
    .await;
}
