//! A captured QUIC 0-RTT flight replayed, end to end (in-process cluster,
//! real QUIC on loopback): a test-only UDP tap between the SDK client and
//! its CM records the first flight of each new QUIC connection (what an
//! attacker on the path could copy), and the test sends a recorded
//! reconnection flight again from a new socket, as the attacker would.
//! The copy must log nobody in and leave the genuine client alone: the
//! FAST count (XEP-0484) refuses it at the core, and its handshake can
//! never complete (docs/design/sasl2-fast.md §6.2). A copy delivered
//! before the original (the tap holds the original back) wins the count,
//! and the client still resumes with what it missed.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client_sdk::{Client, Event};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use support::{Cluster, WAIT, bounded, jid};

/// How long after a client's new Initial the tap keeps recording what the
/// client sends (its first flight: Initial and 0-RTT packets).
const FLIGHT_WINDOW: Duration = Duration::from_millis(50);

/// The core's count of SASL failures `not-authorized`.
const NOT_AUTHORIZED: &str = "longlink_core_auth_total{result=\"not-authorized\"}";
/// The core's count of successful authentications.
const AUTH_SUCCESS: &str = "longlink_core_auth_total{result=\"success\"}";

/// Whether `datagram` starts with a QUIC v1 long-header Initial packet,
/// whatever its fixed bit (a client that remembers the server's transport
/// parameters greases it, RFC 9287).
fn is_quic_initial(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| b & 0xb0 == 0x80)
}

/// The source connection id of a long-header packet: the client's own
/// id, the same in every long-header packet of one connection (the
/// destination id changes once the server answered).
fn long_header_scid(datagram: &[u8]) -> Option<&[u8]> {
    let dcid = usize::from(*datagram.get(5)?);
    let at = 6 + dcid;
    let len = usize::from(*datagram.get(at)?);
    datagram.get(at + 1..at + 1 + len)
}

/// A QUIC variable-length integer at `at`: its value and length.
fn varint(data: &[u8], at: usize) -> Option<(u64, usize)> {
    let first = *data.get(at)?;
    let len = 1usize << (first >> 6);
    let bytes = data.get(at..at + len)?;
    let mut value = u64::from(first & 0x3f);
    for b in &bytes[1..] {
        value = (value << 8) | u64::from(*b);
    }
    Some((value, len))
}

/// The long-header packet types (0 Initial, 1 0-RTT, 2 Handshake, 3
/// Retry) coalesced in `datagram`, in order; a short-header packet (1-RTT)
/// ends the list as `None`.
fn packet_types(datagram: &[u8]) -> Vec<Option<u8>> {
    let mut types = Vec::new();
    let mut at = 0;
    while at < datagram.len() {
        let first = datagram[at];
        if first & 0x80 == 0 {
            types.push(None);
            break;
        }
        let kind = (first >> 4) & 0x03;
        types.push(Some(kind));
        let parsed = (|| {
            let mut p = at + 5;
            let dcid = usize::from(*datagram.get(p)?);
            p += 1 + dcid;
            let scid = usize::from(*datagram.get(p)?);
            p += 1 + scid;
            if kind == 0 {
                let (token, n) = varint(datagram, p)?;
                p += n + usize::try_from(token).ok()?;
            }
            if kind == 3 {
                return Some(datagram.len());
            }
            let (length, n) = varint(datagram, p)?;
            Some(p + n + usize::try_from(length).ok()?)
        })();
        match parsed {
            Some(end) if end > at => at = end,
            _ => break,
        }
    }
    types
}

/// The datagrams a client sent in the first [`FLIGHT_WINDOW`] of one QUIC
/// connection.
#[derive(Clone, Debug, Default)]
struct Flight {
    /// What the client sent, in order.
    datagrams: Vec<Vec<u8>>,
}

impl Flight {
    /// Whether the flight carries 0-RTT packets.
    fn has_0rtt(&self) -> bool {
        self.datagrams
            .iter()
            .any(|d| packet_types(d).contains(&Some(1)))
    }
}

/// What the tap shares with the test.
#[derive(Default)]
struct Recorded {
    /// One per new QUIC connection of the client, in order.
    flights: Vec<(Instant, Flight)>,
    /// Client connection ids seen (an Initial with one of them is no new
    /// connection).
    seen: HashSet<Vec<u8>>,
    /// Hold back the datagrams of connections that start now.
    hold_new: bool,
    /// The client connection ids whose datagrams are held back.
    holding: HashSet<Vec<u8>>,
    /// The first held connection's place in `flights`.
    first_held: Option<usize>,
    /// What was held back, in order, with the client that sent it.
    held: Vec<(SocketAddr, Vec<u8>)>,
}

/// A test-only UDP relay between a client and one server address: it
/// forwards both ways at once (no delay) and records each new QUIC
/// connection's first flight from the client.
struct Tap {
    addr: SocketAddr,
    recorded: Arc<Mutex<Recorded>>,
    release: mpsc::UnboundedSender<()>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Tap {
    /// A tap on loopback forwarding to `upstream`.
    async fn start(upstream: SocketAddr) -> Tap {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("tap socket"));
        let addr = front.local_addr().expect("tap address");
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let (release, released) = mpsc::unbounded_channel();
        let front_task = tokio::spawn(front_loop(
            front,
            upstream,
            recorded.clone(),
            released,
            tasks.clone(),
        ));
        tasks.lock().unwrap().push(front_task);
        Tap {
            addr,
            recorded,
            release,
            tasks,
        }
    }

    /// Holds back everything the client's QUIC connections that start
    /// from now on send (it is still recorded) until [`Tap::release`];
    /// the connection it has goes on.
    fn hold_new_connections(&self) {
        self.recorded.lock().unwrap().hold_new = true;
    }

    /// The first flight of the first held connection, once its recording
    /// window is over.
    fn held_flight(&self) -> Option<Flight> {
        let recorded = self.recorded.lock().unwrap();
        let (start, flight) = recorded.flights.get(recorded.first_held?)?;
        (start.elapsed() > FLIGHT_WINDOW).then(|| flight.clone())
    }

    /// Forwards what was held back, and from then on everything.
    fn release(&self) {
        let _ = self.release.send(());
    }

    /// The flights recorded so far.
    fn flights(&self) -> Vec<Flight> {
        let recorded = self.recorded.lock().unwrap();
        recorded.flights.iter().map(|(_, f)| f.clone()).collect()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// Reads the client side; one upstream socket (and a task reading it) per
/// client address.
async fn front_loop(
    front: Arc<UdpSocket>,
    upstream: SocketAddr,
    recorded: Arc<Mutex<Recorded>>,
    mut released: mpsc::UnboundedReceiver<()>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    let mut flows: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let received = tokio::select! {
            received = front.recv_from(&mut buf) => received,
            Some(()) = released.recv() => {
                let held = {
                    let mut rec = recorded.lock().unwrap();
                    rec.hold_new = false;
                    rec.holding.clear();
                    std::mem::take(&mut rec.held)
                };
                for (client, datagram) in held {
                    let up = flow(&mut flows, client, &front, &tasks).await;
                    let _ = up.send_to(&datagram, upstream).await;
                }
                continue;
            }
        };
        let Ok((n, client)) = received else {
            // (an ICMP error reported on the socket)
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        let datagram = &buf[..n];
        {
            let mut rec = recorded.lock().unwrap();
            let now = Instant::now();
            if is_quic_initial(datagram)
                && let Some(scid) = long_header_scid(datagram)
                && rec.seen.insert(scid.to_vec())
            {
                rec.flights.push((now, Flight::default()));
                if rec.hold_new {
                    rec.holding.insert(scid.to_vec());
                    let index = rec.flights.len() - 1;
                    rec.first_held.get_or_insert(index);
                }
            }
            if let Some((start, flight)) = rec.flights.last_mut()
                && now.duration_since(*start) < FLIGHT_WINDOW
            {
                flight.datagrams.push(datagram.to_vec());
            }
            // (only long-header packets before the handshake completes:
            // a held connection sends nothing else)
            if long_header_scid(datagram).is_some_and(|scid| rec.holding.contains(scid)) {
                rec.held.push((client, datagram.to_vec()));
                continue;
            }
        }
        let up = flow(&mut flows, client, &front, &tasks).await;
        // (the server may be down: a datagram to nobody is lost, as on a
        // network)
        let _ = up.send_to(datagram, upstream).await;
    }
}

/// The upstream socket of `client`'s flow, opened (with a task forwarding
/// its answers) the first time.
async fn flow(
    flows: &mut HashMap<SocketAddr, Arc<UdpSocket>>,
    client: SocketAddr,
    front: &Arc<UdpSocket>,
    tasks: &Mutex<Vec<JoinHandle<()>>>,
) -> Arc<UdpSocket> {
    if let Some(up) = flows.get(&client) {
        return up.clone();
    }
    let up = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("upstream"));
    let back = tokio::spawn(back_loop(up.clone(), front.clone(), client));
    tasks.lock().unwrap().push(back);
    flows.insert(client, up.clone());
    up
}

/// Forwards what the server sends to `client`.
async fn back_loop(up: Arc<UdpSocket>, front: Arc<UdpSocket>, client: SocketAddr) {
    let mut buf = vec![0u8; 65_536];
    loop {
        match up.recv_from(&mut buf).await {
            Ok((n, _)) => {
                let _ = front.send_to(&buf[..n], client).await;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// What came back to the attacker's socket.
#[derive(Debug, Default)]
struct Answers {
    /// Long-header packet types received (0 Initial, 2 Handshake, ...).
    long: Vec<u8>,
    /// Short-header (1-RTT) packets received: sealed with keys only the
    /// client that made the flight can derive.
    short: usize,
    /// Datagrams received.
    datagrams: usize,
}

/// Sends `flight` from a new socket to `to` (the attacker's copy) and
/// collects what comes back for `listen`.
async fn replay(flight: &Flight, to: SocketAddr, listen: Duration) -> Answers {
    let socket = UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("attacker socket");
    for datagram in &flight.datagrams {
        socket.send_to(datagram, to).await.expect("replayed");
    }
    let mut answers = Answers::default();
    let mut buf = vec![0u8; 65_536];
    let deadline = tokio::time::Instant::now() + listen;
    while let Ok(received) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
        let Ok((n, _)) = received else { continue };
        answers.datagrams += 1;
        for kind in packet_types(&buf[..n]) {
            match kind {
                Some(k) => answers.long.push(k),
                None => answers.short += 1,
            }
        }
    }
    answers
}

/// The routes of `bare`'s resources in the core's routing table.
async fn routes_of(cluster: &Cluster, bare: &str) -> Vec<String> {
    let routes = cluster.routes().await;
    routes["routes"]
        .as_array()
        .map(|routes| {
            routes
                .iter()
                .filter_map(|r| r["jid"].as_str())
                .filter(|j| j.starts_with(&format!("{bare}/")))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Fails on any connection event of `client` within `quiet`.
async fn assert_undisturbed(client: &mut Client, quiet: Duration) {
    let deadline = tokio::time::Instant::now() + quiet;
    while let Ok(ev) = tokio::time::timeout_at(deadline, client.next_event()).await {
        match ev {
            Some(
                ev @ (Event::ConnectionLost(_)
                | Event::Reconnected { .. }
                | Event::Disconnected
                | Event::StreamError(_)),
            ) => panic!("the replay disturbed the genuine client: {ev:?}"),
            None => panic!("the genuine client's session ended"),
            Some(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_0rtt_reconnection_flight_logs_nobody_in_is_refused_for_its_count_and_leaves_the_client_alone()
 {
    bounded(120, async {
        let zero_rtt = |c: &mut cm_node::config::CmConfig| c.zero_rtt = true;
        let mut cluster = Cluster::start(0).await;
        let phone_cm = cluster.add_cm_with(zero_rtt).await;
        // another CM of the cluster: it opens the same tickets, so the copy
        // can be sent there too (and there it is a new connection)
        let other_cm = cluster.add_cm_with(zero_rtt).await;
        cluster.add_user("alice", "secret");
        cluster.add_user("bob", "secret");
        let mut bob = cluster.login(other_cm, "bob", "desk").await;

        let tap = Tap::start(cluster.cm_addr(phone_cm)).await;
        let mut options = cluster.options(phone_cm, "alice", "secret");
        options.server = tap.addr;
        let mut alice = Client::connect(options).await.expect("alice logs in");
        let token = alice.fast_token().expect("a token with the password login");
        assert_eq!(token.mechanism, "HT-SHA-256-NONE", "usable in 0-RTT");
        alice.send_presence(0).await.unwrap();
        alice.ping().await.unwrap();
        let full = alice.jid().to_owned();
        assert_eq!(tap.flights().len(), 1, "the first login's connection");

        // the CM restarts (same cluster ticket key); bob writes meanwhile;
        // the SDK reconnects through the tap in 0-RTT. (Its attempts wait
        // in the tap until the new CM runs: the crashed CM's socket, still
        // open for a moment, would refuse them, each spending one of the
        // client's session tickets, and one with none left goes in 1-RTT.)
        tap.hold_new_connections();
        let addr = cluster.crash_cm(phone_cm);
        bob.send_message(&full, "while the CM was down")
            .await
            .unwrap();
        bob.ping().await.unwrap();
        cluster.revive_cm_with(phone_cm, addr, zero_rtt).await;
        tap.release();
        let back = async {
            let mut resumed = None;
            while let Some(ev) = alice.next_event().await {
                match ev {
                    Event::Reconnected { resumed: r } => resumed = Some(r),
                    Event::Message(m) if m.body.as_deref() == Some("while the CM was down") => {
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
        assert_eq!(alice.zero_rtt_logins(), 1, "the reconnection went as 0-RTT");
        assert_eq!(alice.fast_logins(), 1, "with the token");
        let count = alice.fast_token().expect("token kept").count;
        let resumption = alice.resumption().expect("resumable");

        // the attacker's copy: the first flight of the connection that
        // logged in (the last one; attempts that found no CM came before)
        let flights = tap.flights();
        let flight = flights.last().expect("a recorded flight").clone();
        assert!(flights.len() >= 2, "{flights:?}");
        assert!(
            flight.has_0rtt(),
            "the reconnection's flight carries 0-RTT packets: {:?}",
            flight
                .datagrams
                .iter()
                .map(|d| packet_types(d))
                .collect::<Vec<_>>()
        );
        let failures = cluster.metric(NOT_AUTHORIZED).await.unwrap_or(0.0);
        let successes = cluster.metric(AUTH_SUCCESS).await.unwrap_or(0.0);
        let handshakes = cluster.handshakes_completed();
        let alice_routes = routes_of(&cluster, &jid("alice")).await;
        assert_eq!(alice_routes, vec![full.clone()]);

        // (1) to the same CM, while the genuine connection lives: QUIC
        // hands the copy to that connection (same Initial connection id),
        // whose Initial and 0-RTT keys are gone: dropped, nothing answered
        let same = replay(&flight, cluster.cm_addr(phone_cm), Duration::from_secs(1)).await;
        assert_eq!(same.datagrams, 0, "nothing answered: {same:?}");

        // (2) to another CM of the cluster (a new connection there): TLS
        // takes the ticket and the early data, the CM relays the
        // authenticate as early, the core refuses its count (spent by the
        // genuine login)
        let other = replay(&flight, cluster.cm_addr(other_cm), Duration::from_secs(2)).await;
        cluster
            .wait_metric(NOT_AUTHORIZED, |v| v == failures + 1.0)
            .await;
        assert!(
            other.long.iter().all(|k| *k == 0 || *k == 2),
            "only Initial and Handshake packets in the clear: {other:?}"
        );
        tracing::info!(?same, ?other, "what the attacker got back");

        // nothing more: the attacker's copy never finishes its handshake,
        // logs nobody in, binds or resumes nothing
        assert_undisturbed(&mut alice, Duration::from_secs(3)).await;
        assert_eq!(
            cluster.metric(NOT_AUTHORIZED).await.unwrap_or(0.0),
            failures + 1.0,
            "exactly one refusal"
        );
        assert_eq!(
            cluster.metric(AUTH_SUCCESS).await.unwrap_or(0.0),
            successes,
            "no login from the copy"
        );
        assert_eq!(
            cluster.handshakes_completed(),
            handshakes,
            "the copy's handshake never completes"
        );
        assert_eq!(routes_of(&cluster, &jid("alice")).await, vec![full.clone()]);
        assert_eq!(alice.resumption().map(|r| r.0), Some(resumption.0));
        assert_eq!(alice.fast_token().map(|t| t.count), Some(count));
        assert_eq!((alice.zero_rtt_logins(), alice.fast_logins()), (1, 1));

        // the genuine session works on, both ways
        bob.send_message(&full, "after the replay").await.unwrap();
        assert_eq!(
            alice.next_message(WAIT).await.unwrap().body.as_deref(),
            Some("after the replay")
        );
        alice.send_message(bob.jid(), "still here").await.unwrap();
        assert_eq!(
            bob.next_message(WAIT).await.unwrap().body.as_deref(),
            Some("still here")
        );
        drop(tap);
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_a_0rtt_reconnection_delivered_before_the_original_wins_its_count_but_the_client_still_resumes_with_what_it_missed()
 {
    copy_delivered_first(CopyTo::SameCm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_a_0rtt_reconnection_delivered_first_to_another_cm_gets_the_original_refused_and_the_client_resumes_with_the_next_count()
 {
    copy_delivered_first(CopyTo::OtherCm).await;
}

/// Where the attacker sends the copy he delivers before the original.
#[derive(Clone, Copy, Debug, PartialEq)]
enum CopyTo {
    /// The CM the original goes to.
    SameCm,
    /// Another CM of the cluster (which opens the same tickets).
    OtherCm,
}

/// The tap holds the reconnection's first flight back, the attacker's
/// copy goes first (to `to`) and wins the count; then the original goes
/// on, and the client must come back resumed with what it missed.
async fn copy_delivered_first(to: CopyTo) {
    bounded(120, async {
        let zero_rtt = |c: &mut cm_node::config::CmConfig| c.zero_rtt = true;
        let mut cluster = Cluster::start(0).await;
        let phone_cm = cluster.add_cm_with(zero_rtt).await;
        let desk_cm = cluster.add_cm_with(zero_rtt).await;
        cluster.add_user("alice", "secret");
        cluster.add_user("bob", "secret");
        let mut bob = cluster.login(desk_cm, "bob", "desk").await;

        let tap = Tap::start(cluster.cm_addr(phone_cm)).await;
        let mut options = cluster.options(phone_cm, "alice", "secret");
        options.server = tap.addr;
        let mut alice = Client::connect(options).await.expect("alice logs in");
        let token = alice.fast_token().expect("a token with the password login");
        assert_eq!(token.mechanism, "HT-SHA-256-NONE", "usable in 0-RTT");
        alice.send_presence(0).await.unwrap();
        alice.ping().await.unwrap();
        let full = alice.jid().to_owned();

        // the attacker holds back the reconnection's first flight
        tap.hold_new_connections();
        let addr = cluster.crash_cm(phone_cm);
        bob.send_message(&full, "while the CM was down")
            .await
            .unwrap();
        bob.ping().await.unwrap();
        cluster.revive_cm_with(phone_cm, addr, zero_rtt).await;
        let flight = loop {
            if let Some(flight) = tap.held_flight() {
                break flight;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(flight.has_0rtt(), "the held flight carries 0-RTT data");

        // and delivers his copy first, from his own address: it takes the
        // count, and the core resumes alice's session onto a connection
        // whose handshake he cannot finish
        let successes = cluster.metric(AUTH_SUCCESS).await.unwrap_or(0.0);
        let attacker = {
            let flight = flight.clone();
            let to = cluster.cm_addr(match to {
                CopyTo::SameCm => phone_cm,
                CopyTo::OtherCm => desk_cm,
            });
            tokio::spawn(async move { replay(&flight, to, Duration::from_secs(3)).await })
        };
        cluster
            .wait_metric(AUTH_SUCCESS, |v| v == successes + 1.0)
            .await;
        let released = Instant::now();
        tap.release();

        // the genuine client comes back all the same, resumed, with the
        // message it missed, by its token. (Not at once: the CM's QUIC
        // endpoint hands the original's packets, whose Initial connection
        // id the copy took first, to the copy's half-open connection,
        // which drops them for coming from another address; the SDK
        // gives an unanswered 0-RTT handshake up after 2 s and dials anew
        // with count+1: that one resumes, and the copy's dead connection
        // gets `conflict`. Another CM refuses the original's count
        // instead, and the SDK tries the token once more, count+1, on the
        // same stream.)
        let back = async {
            let mut resumed = None;
            while let Some(ev) = alice.next_event().await {
                match ev {
                    Event::Reconnected { resumed: r } => resumed = Some(r),
                    Event::Message(m) if m.body.as_deref() == Some("while the CM was down") => {
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
        let took = released.elapsed();
        let answers = attacker.await.expect("attacker");
        tracing::info!(
            ?took,
            ?answers,
            zero_rtt_logins = alice.zero_rtt_logins(),
            fast_logins = alice.fast_logins(),
            count = ?alice.fast_token().map(|t| t.count),
            "back after the copy won"
        );
        assert_eq!(resumed, Some(true), "the session was resumed");
        match to {
            // (the original never reached the core: the SDK gave up its
            // unanswered 0-RTT handshake and dialed again, by the token)
            CopyTo::SameCm => {
                assert!(alice.fast_logins() >= 1, "by the token");
                assert!(
                    took < Duration::from_secs(8),
                    "not the whole connect timeout: {took:?}"
                );
            }
            // (the original reached the core, which refused its count: the
            // SDK tried the token once more with the next count on the same
            // stream, in 1-RTT, and kept it)
            CopyTo::OtherCm => {
                assert_eq!(alice.fast_logins(), 1, "the token, once more");
                assert!(
                    alice.fast_token().is_some_and(|t| t.count >= 2),
                    "the next count"
                );
            }
        }
        assert_eq!(routes_of(&cluster, &jid("alice")).await, vec![full.clone()]);
        assert!(
            answers.long.iter().all(|k| *k == 0 || *k == 2),
            "only Initial and Handshake packets in the clear: {answers:?}"
        );

        // once, and the session works on
        assert!(
            alice
                .next_message(Duration::from_millis(500))
                .await
                .is_err(),
            "the missed message came once"
        );
        bob.send_message(&full, "after the replay").await.unwrap();
        assert_eq!(
            alice.next_message(WAIT).await.unwrap().body.as_deref(),
            Some("after the replay")
        );
        alice.send_message(bob.jid(), "still here").await.unwrap();
        assert_eq!(
            bob.next_message(WAIT).await.unwrap().body.as_deref(),
            Some("still here")
        );
        drop(tap);
        cluster.shutdown().await;
    })
    .await;
}
