//! SASL2 (XEP-0388) with Bind2 (XEP-0386) and inline XEP-0198 resumption,
//! end to end (in-process cluster, real QUIC, TLS and TCP on loopback):
//! the exact wire a third-party client sees on every transport, and the
//! SDK's logins with it — fresh, resumed inline after a lost connection,
//! falling back to Bind2 when the resumption fails, retrying after a wrong
//! password — and its SASL1 path (forced, and against a server that does
//! not offer SASL2). See docs/design/sasl2-fast.md.

mod support;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use client_sdk::transport::{Dialer, Transport};
use client_sdk::{Carbon, Client, ClientError};
use xmpp_stream::element::Element;
use xmpp_stream::framer::FrameEvent;
use xmpp_stream::ns;

use support::{Cluster, DOMAIN, WAIT, bounded, jid};

/// A cluster whose CM listens on QUIC, STARTTLS and direct TLS.
async fn tcp_cluster() -> Cluster {
    let mut cluster = Cluster::start(0).await;
    cluster
        .add_cm_with(|c| {
            c.tcp_listen = Some("127.0.0.1:0".parse().unwrap());
            c.tls_listen = Some("127.0.0.1:0".parse().unwrap());
        })
        .await;
    cluster
}

/// A SASL2 PLAIN `<authenticate/>` for `user` with a Bind2 request (tag
/// `raw`, SM enable, carbons).
fn authenticate(user: &str, password: &str) -> String {
    let response = B64.encode(format!("\0{user}\0{password}"));
    format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'>\
         <initial-response>{response}</initial-response>\
         <user-agent id='d4565fa7-4d72-4749-b3d3-740edbf87770'><software>raw</software></user-agent>\
         <bind xmlns='urn:xmpp:bind:0'><tag>raw</tag>\
         <enable xmlns='urn:xmpp:sm:3' resume='true'/><enable xmlns='urn:xmpp:carbons:2'/></bind>\
         </authenticate>"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_sasl2_on_starttls_tls_and_quic_binds_tag_with_sm_and_carbons_in_one_success_without_restart()
 {
    bounded(120, async {
        let cluster = tcp_cluster().await;
        cluster.add_user("raw", "secret");
        cluster.add_user("bob", "secret");
        let mut bob = cluster.login(0, "bob", "phone").await;
        let cm = cluster.cm(0);
        let roots = client_sdk::load_roots(&cluster.ca()).expect("roots");
        for (transport, addr) in [
            (Transport::Starttls, cm.tcp_addr.unwrap()),
            (Transport::Tls, cm.tls_addr.unwrap()),
            (Transport::Quic, cluster.cm_addr(0)),
        ] {
            let dialer = Dialer::new(addr, DOMAIN, transport, roots.clone()).expect("dialer");
            let endpoint = match transport {
                Transport::Quic => Some(dialer.endpoint().expect("endpoint")),
                _ => None,
            };
            let mut io = dialer
                .connect(endpoint.as_ref())
                .await
                .expect("connects")
                .io;
            // (connect opened the stream: the features come next)
            let features = io.element().await.expect("features");
            let sasl2 = features
                .child("authentication", ns::SASL2)
                .unwrap_or_else(|| panic!("{transport:?}: SASL2 offered: {features:?}"));
            let mechanisms: Vec<String> = sasl2
                .elements()
                .filter(|e| e.name == "mechanism")
                .map(Element::text)
                .collect();
            assert!(mechanisms.iter().any(|m| m == "PLAIN"), "{mechanisms:?}");
            let inline = sasl2.child("inline", ns::SASL2).expect("inline");
            assert!(inline.child("sm", ns::SM).is_some());
            assert!(inline.child("bind", ns::BIND2).is_some());
            assert!(
                features.child("mechanisms", ns::SASL).is_some(),
                "SASL1 stays"
            );

            // a wrong password: a SASL2 failure, and the stream stays usable
            io.write(authenticate("raw", "wrong").as_bytes())
                .await
                .unwrap();
            let failure = io.element().await.expect("failure");
            assert_eq!(
                (failure.name.as_str(), failure.ns.as_str()),
                ("failure", ns::SASL2)
            );
            assert!(
                failure.child("not-authorized", ns::SASL).is_some(),
                "{failure:?}"
            );

            io.write(authenticate("raw", "secret").as_bytes())
                .await
                .unwrap();
            let success = io.element().await.expect("success");
            assert_eq!(
                (success.name.as_str(), success.ns.as_str()),
                ("success", ns::SASL2),
                "{success:?}"
            );
            let id = success
                .child("authorization-identifier", ns::SASL2)
                .expect("<authorization-identifier>")
                .text();
            assert!(id.starts_with(&format!("{}/raw/", jid("raw"))), "{id}");
            let bound = success.child("bound", ns::BIND2).expect("<bound/>");
            let enabled = bound.child("enabled", ns::SM).expect("SM enabled inline");
            assert_eq!(enabled.attr("resume"), Some("true"));
            assert!(enabled.attr("id").is_some_and(|i| !i.is_empty()));
            // no stream restart: the next thing is the features, not a header
            match io.next().await.expect("features") {
                FrameEvent::Element(raw) => {
                    let f = Element::parse_in_stream(&raw).unwrap();
                    assert_eq!(f.name, "features");
                    assert!(f.child("bind", ns::BIND).is_none(), "bound already: {f:?}");
                }
                other => panic!("{transport:?}: {other:?}"),
            }
            // bound: available, and carbons are on (a copy of what bob
            // gets from another resource of raw)
            io.write(b"<presence/>").await.unwrap();
            let other = cluster.login(0, "raw", "desk").await;
            other.send_message(bob.jid(), "via desk").await.unwrap();
            assert_eq!(
                bob.next_message(WAIT).await.unwrap().body.as_deref(),
                Some("via desk")
            );
            let carbon = loop {
                let el = io.element().await.expect("carbon");
                // (skipping bob's receipt for the previous transport's
                // "via desk": that desk was gone, so it waited offline
                // for raw's next available session)
                if el.name == "message" && el.child("received", ns::RECEIPTS).is_none() {
                    break el;
                }
            };
            assert!(carbon.child("sent", ns::CARBONS).is_some(), "{carbon:?}");
            // SM counts: the carbon is acknowledged
            io.write(b"<r xmlns='urn:xmpp:sm:3'/>").await.unwrap();
            let a = loop {
                let el = io.element().await.expect("a");
                if el.name == "a" {
                    break el;
                }
            };
            assert!(a.attr("h").is_some());
            other.disconnect().await;
            io.write(b"</stream:stream>").await.unwrap();
        }
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_logs_in_with_sasl2_bind2_and_resumes_inline_after_a_lost_connection_with_what_it_missed()
 {
    bounded(120, async {
        let cluster = Cluster::start(2).await;
        cluster.add_user("alice", "secret");
        cluster.add_user("bob", "secret");
        let mut bob = cluster.login(1, "bob", "desk").await;
        // no resource asked for: Bind2 with the SDK's tag
        let alice = Client::connect(cluster.options(0, "alice", "secret").with_tag("app"))
            .await
            .unwrap();
        assert!(alice.used_sasl2());
        assert!(
            alice.jid().starts_with(&format!("{}/app/", jid("alice"))),
            "{}",
            alice.jid()
        );
        alice.send_presence(0).await.unwrap();
        alice.ping().await.unwrap();
        let (id, h) = alice.resumption().expect("SM enabled inline, resumable");
        // carbons are on: what another resource of alice sends is copied
        let mut alice = alice;
        let desk = cluster.login(1, "alice", "desk").await;
        desk.send_message(bob.jid(), "from desk").await.unwrap();
        let copy = alice.next_message(WAIT).await.unwrap();
        assert_eq!(copy.carbon, Some(Carbon::Sent));
        assert_eq!(copy.body.as_deref(), Some("from desk"));
        assert_eq!(
            bob.next_message(WAIT).await.unwrap().body.as_deref(),
            Some("from desk")
        );
        desk.disconnect().await;
        let full = alice.jid().to_owned();
        let (id, h) = alice.resumption().map_or((id, h), |r| r);
        // the phone loses the network; bob writes meanwhile
        alice.abort();
        for i in 0..5 {
            bob.send_message(&full, &format!("m{i}")).await.unwrap();
        }
        bob.ping().await.unwrap();
        let mut alice = Client::connect(
            cluster
                .options(1, "alice", "secret")
                .with_previous_session(&id, h),
        )
        .await
        .unwrap();
        assert!(alice.used_sasl2() && alice.was_resumed());
        for i in 0..5 {
            let m = alice.next_message(WAIT).await.unwrap();
            assert_eq!(m.body, Some(format!("m{i}")));
            assert!(
                m.delay.is_none(),
                "live from the ledger, not offline storage"
            );
        }
        alice.send_message(bob.jid(), "back").await.unwrap();
        assert_eq!(
            bob.next_message(WAIT).await.unwrap().body.as_deref(),
            Some("back")
        );
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_inline_resumption_binds_with_bind2_in_the_same_authenticate() {
    bounded(60, async {
        let cluster = Cluster::start(1).await;
        cluster.add_user("alice", "secret");
        let alice = Client::connect(
            cluster
                .options(0, "alice", "secret")
                .with_previous_session("bm90LWEtc2Vzc2lvbg", 3),
        )
        .await
        .unwrap();
        assert!(alice.used_sasl2());
        assert!(!alice.was_resumed());
        assert!(
            alice
                .jid()
                .starts_with(&format!("{}/longlink/", jid("alice"))),
            "{}",
            alice.jid()
        );
        assert!(alice.resumption().is_some(), "the new session has SM");
        alice.ping().await.unwrap();
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_sasl2_wrong_password_fails_and_a_retry_logs_in() {
    bounded(60, async {
        let cluster = Cluster::start(1).await;
        cluster.add_user("alice", "secret");
        let err = Client::connect(cluster.options(0, "alice", "wrong"))
            .await
            .err();
        assert!(
            matches!(&err, Some(ClientError::Auth(c)) if c == "not-authorized"),
            "{err:?}"
        );
        let alice = Client::connect(cluster.options(0, "alice", "secret"))
            .await
            .unwrap();
        assert!(alice.used_sasl2());
        alice.ping().await.unwrap();
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sasl1_path_works_forced_by_the_sdk_and_against_a_server_without_sasl2() {
    bounded(120, async {
        // forced: SASL, restart, bind, SM and carbons one by one
        let cluster = Cluster::start(1).await;
        cluster.add_user("alice", "secret");
        cluster.add_user("bob", "secret");
        let mut bob = cluster.login(0, "bob", "desk").await;
        let alice = Client::connect(cluster.options(0, "alice", "secret").with_sasl1_only())
            .await
            .unwrap();
        assert!(!alice.used_sasl2());
        assert!(
            alice.resumption().is_some() || {
                alice.ping().await.unwrap();
                alice.resumption().is_some()
            }
        );
        alice.send_message(bob.jid(), "sasl1").await.unwrap();
        assert_eq!(
            bob.next_message(WAIT).await.unwrap().body.as_deref(),
            Some("sasl1")
        );
        cluster.shutdown().await;

        // a server that does not offer SASL2: the SDK falls back by itself
        let cluster = Cluster::start_configured(1, Arc::new(|c| c.sasl2 = false)).await;
        cluster.add_user("alice", "secret");
        let alice = Client::connect(cluster.options(0, "alice", "secret"))
            .await
            .unwrap();
        assert!(!alice.used_sasl2());
        assert!(alice.jid().starts_with(&format!("{}/", jid("alice"))));
        alice.ping().await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        cluster.shutdown().await;
    })
    .await;
}

// ---- FAST (XEP-0484) ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_token_from_a_password_login_resumes_a_new_process_without_the_password_once_per_count()
 {
    bounded(120, async {
        // (a CM without 0-RTT: the token is bound to the connection)
        let mut cluster = Cluster::start(0).await;
        cluster.add_cm_with(|c| c.zero_rtt = false).await;
        cluster.add_user("alice", "secret");
        cluster.add_user("bob", "secret");
        let mut bob = cluster.login(0, "bob", "desk").await;
        let ua = "5b0b4f6e-1d3a-4c36-9d5e-0d8c7e1f2a10";
        let alice = Client::connect(cluster.options(0, "alice", "secret").with_user_agent_id(ua))
            .await
            .unwrap();
        let token = alice.fast_token().expect("a token with the password login");
        // QUIC has a tls-exporter: the token is bound to it
        assert_eq!(token.mechanism, "HT-SHA-256-EXPR");
        assert_eq!((token.count, alice.fast_logins()), (0, 0));
        assert_eq!(alice.user_agent_id(), ua);
        alice.send_presence(0).await.unwrap();
        alice.ping().await.unwrap();
        let full = alice.jid().to_owned();
        let (id, h) = alice.resumption().expect("resumable");
        alice.abort();
        for i in 0..3 {
            bob.send_message(&full, &format!("m{i}")).await.unwrap();
        }
        bob.ping().await.unwrap();
        // a new process: the saved token and user agent, a wrong password
        // (so only the token can log it in), an inline resumption
        let with_token = |token: client_sdk::FastToken| {
            cluster
                .options(0, "alice", "not-the-password")
                .with_user_agent_id(ua)
                .with_fast_token(token)
        };
        let mut alice = Client::connect(with_token(token.clone()).with_previous_session(&id, h))
            .await
            .expect("logged in with the token");
        assert!(alice.was_resumed() && alice.used_sasl2());
        assert_eq!(alice.fast_logins(), 1);
        assert_eq!(alice.fast_token().map(|t| t.count), Some(1), "count kept");
        for i in 0..3 {
            let m = alice.next_message(WAIT).await.unwrap();
            assert_eq!(m.body, Some(format!("m{i}")));
        }
        alice.send_message(bob.jid(), "back").await.unwrap();
        assert_eq!(
            bob.next_message(WAIT).await.unwrap().body.as_deref(),
            Some("back")
        );
        // the same count again (a replayed login): refused, and the wrong
        // password after it too
        let replay = Client::connect(with_token(token.clone())).await;
        assert!(
            matches!(replay, Err(ClientError::Auth(_))),
            "{:?}",
            replay.err()
        );
        // another user agent cannot use it
        let other = Client::connect(
            cluster
                .options(0, "alice", "not-the-password")
                .with_user_agent_id("another-install")
                .with_fast_token(client_sdk::FastToken {
                    count: 7,
                    ..token.clone()
                }),
        )
        .await;
        assert!(
            matches!(other, Err(ClientError::Auth(_))),
            "{:?}",
            other.err()
        );
        // FAST off: the password only
        let off = Client::connect(with_token(token).with_fast(false)).await;
        assert!(matches!(off, Err(ClientError::Auth(_))));
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_reconnects_with_its_fast_token_after_a_cm_crash_and_falls_back_to_the_password_when_it_is_refused()
 {
    bounded(120, async {
        let mut cluster = Cluster::start(1).await;
        cluster.add_user("alice", "secret");
        let mut alice = Client::connect(cluster.options(0, "alice", "secret"))
            .await
            .unwrap();
        let first = alice.fast_token().expect("token");
        alice.ping().await.unwrap();
        let addr = cluster.crash_cm(0);
        cluster.revive_cm(0, addr).await;
        let reconnected = async {
            while let Some(ev) = alice.next_event().await {
                if let client_sdk::Event::Reconnected { .. } = ev {
                    return;
                }
            }
            panic!("session ended");
        };
        tokio::time::timeout(Duration::from_secs(60), reconnected)
            .await
            .expect("reconnected");
        assert_eq!(alice.fast_logins(), 1, "the reconnection used the token");
        // (a 0-RTT attempt that found no CM yet spent a count too)
        assert!(alice.fast_token().is_some_and(|t| t.count >= 1));
        alice.ping().await.unwrap();
        // the password changed meanwhile: every token ends (XEP-0484 §6);
        // the next reconnection's token is refused and the password (still
        // the one the client holds: changed back) logs in on the same stream
        cluster.set_password("alice", "secret");
        let addr = cluster.crash_cm(0);
        cluster.revive_cm(0, addr).await;
        tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(ev) = alice.next_event().await {
                if let client_sdk::Event::Reconnected { .. } = ev {
                    return;
                }
            }
            panic!("session ended");
        })
        .await
        .expect("reconnected with the password");
        assert_eq!(alice.fast_logins(), 1, "the refused token did not count");
        let renewed = alice
            .fast_token()
            .expect("a new token with the password login");
        assert_ne!(renewed.token, first.token);
        assert_eq!(renewed.count, 0);
        alice.ping().await.unwrap();
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnection_to_a_restarted_cm_resumes_with_the_fast_token_and_gets_what_it_missed() {
    bounded(120, async {
        let mut cluster = Cluster::start(1).await;
        let zero_rtt = |c: &mut cm_node::config::CmConfig| c.zero_rtt = true;
        let phone_cm = cluster.add_cm_with(zero_rtt).await;
        cluster.add_user("alice", "secret");
        cluster.add_user("bob", "secret");
        let mut bob = cluster.login(0, "bob", "desk").await;
        let mut alice = Client::connect(cluster.options(phone_cm, "alice", "secret"))
            .await
            .unwrap();
        // a CM that takes tokens in 0-RTT gets one usable there (no binding)
        let token = alice.fast_token().expect("token");
        assert_eq!(token.mechanism, "HT-SHA-256-NONE");
        alice.send_presence(0).await.unwrap();
        alice.ping().await.unwrap();
        let full = alice.jid().to_owned();
        // the CM restarts (same cluster ticket key); bob writes meanwhile
        let addr = cluster.crash_cm(phone_cm);
        bob.send_message(&full, "while the CM was down")
            .await
            .unwrap();
        bob.ping().await.unwrap();
        cluster.revive_cm_with(phone_cm, addr, zero_rtt).await;
        let back = async {
            let mut resumed = None;
            while let Some(ev) = alice.next_event().await {
                match ev {
                    client_sdk::Event::Reconnected { resumed: r } => resumed = Some(r),
                    client_sdk::Event::Message(m)
                        if m.body.as_deref() == Some("while the CM was down") =>
                    {
                        return resumed;
                    }
                    _ => {}
                }
            }
            panic!("session ended");
        };
        let resumed = tokio::time::timeout(Duration::from_secs(60), back)
            .await
            .expect("back with the missed message");
        assert_eq!(resumed, Some(true), "the session was resumed");
        assert_eq!(alice.fast_logins(), 1, "with the token");
        // (as 0-RTT data if a session ticket was left: attempts made while
        // the CM was down spent some; tests/zero_rtt_replay.rs holds the
        // network back meanwhile and checks the 0-RTT login)
        assert!(alice.zero_rtt_logins() <= 1);
        alice.send_message(bob.jid(), "back").await.unwrap();
        assert_eq!(
            bob.next_message(WAIT).await.unwrap().body.as_deref(),
            Some("back")
        );
        cluster.shutdown().await;
    })
    .await;
}
