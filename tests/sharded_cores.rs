//! Several cores share one domain (issue 15), as real processes: three
//! cores in a cluster on PostgreSQL, a balancer and two CMs. Users of all
//! slots chat across cores and CMs; then a core is SIGKILLed under that
//! traffic, its slots move to the survivors, its users' sessions are
//! re-announced and resumed, and no acknowledged message is lost; a core
//! paused past its lease loses its slots and rejoins; a fourth core joins
//! and one is drained and removed, all under traffic, losing nothing.
//!
//! Needs PostgreSQL (`LONGLINK_TEST_POSTGRES`); says "skipped" without it.
//! The admin calls (blocking HTTP) run in `block_in_place`, so the clients'
//! tasks keep both runtime workers.

mod support;

use std::time::{Duration, Instant};

use client_sdk::im::SubscriptionRequest;
use client_sdk::{Client, Event};
use futures_util::future::join_all;
use support::process::Deployment;
use support::ring;
use tokio::task::block_in_place;

const DOMAIN: &str = "example.org";
/// Users (spread over every core's slots) of the kill test, as issue 15
/// asks; the others run with [`FEW_USERS`].
const USERS: usize = 600;
/// Users of the pause and join/drain tests.
const FEW_USERS: usize = 60;
/// Phones of the kill test that are away (their sessions detached,
/// waiting for them to resume) when the core is killed.
const AWAY: usize = 30;

/// A phone that went away: its user, and the SM id and `h` to resume with.
struct Away {
    user: String,
    previd: String,
    h: u32,
}

/// Each of `users` logs in (stream management on), says it is available
/// and loses its connection for good (its session waits at the server,
/// detached).
async fn go_away(dep: &Deployment, users: &[String]) -> Vec<Away> {
    let mut away = Vec::new();
    for u in users {
        let c = Client::connect(dep.client_options(u, "phone").with_message_states())
            .await
            .expect("login");
        c.send_presence(0).await.expect("presence");
        c.ping().await.expect("ping");
        let (previd, h) = c.resumption().expect("resumable");
        c.abort();
        away.push(Away {
            user: u.clone(),
            previd,
            h,
        });
    }
    away
}

/// Each phone of `away` comes back and resumes its session (wherever its
/// slot is now); it gets `later`, which `sender` sent it while it was
/// away, once. Returns how many resumed (the others logged in again).
async fn come_back(dep: &Deployment, away: &[Away], sender: &Client, later: &str) -> usize {
    for a in away {
        sender
            .send_message(&format!("{}@{DOMAIN}/phone", a.user), later)
            .await
            .expect("send");
    }
    sender.ping().await.expect("ping");
    let runs = away.iter().map(|a| async move {
        let opts = dep
            .client_options(&a.user, "phone")
            .with_previous_session(&a.previd, a.h);
        let mut c = Client::connect(opts).await.expect("back");
        let resumed = c.was_resumed();
        let m = c.next_message(Duration::from_secs(30)).await.expect(later);
        assert_eq!(m.body.as_deref(), Some(later), "{}", a.user);
        assert!(
            c.next_message(Duration::from_millis(300)).await.is_err(),
            "{} got nothing twice",
            a.user
        );
        resumed
    });
    join_all(runs).await.into_iter().filter(|r| *r).count()
}

/// Each user asks the next user (most of them served by another core)
/// for its presence; the next user approves; each then sees the other's
/// available presence.
async fn subscribe_ring(clients: &mut [Client]) {
    let n = clients.len();
    let runs = clients.iter_mut().enumerate().map(|(i, c)| async move {
        let next = format!("u{}@{DOMAIN}", (i + 1) % n);
        let prev = format!("u{}@{DOMAIN}", (i + n - 1) % n);
        c.subscribe(&next).await.expect("subscribe");
        let (mut approved, mut saw_next) = (false, false);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !approved || !saw_next {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, c.next_event()).await {
                Ok(Some(Event::Subscription {
                    from,
                    kind: SubscriptionRequest::Subscribe,
                })) if from == prev => {
                    c.approve(&prev).await.expect("approve");
                    approved = true;
                }
                Ok(Some(Event::Presence(p))) if p.available && p.from.starts_with(&next) => {
                    saw_next = true;
                }
                Ok(Some(_)) => {}
                other => panic!("u{i}: approved {approved}, saw {next}: {saw_next}: {other:?}"),
            }
        }
    });
    join_all(runs).await;
}

/// The nickname node (XEP-0172) every user's app wants.
const NICK: &str = "http://jabber.org/protocol/nick";

/// Each user publishes a nickname (PEP); the user subscribed to it (the
/// previous in the ring), whichever core serves either, is notified.
async fn nick_ring(clients: &mut [Client]) {
    let n = clients.len();
    for (i, c) in clients.iter().enumerate() {
        let nick = xmpp_stream::element::Element::new("nick", NICK).with_text(format!("u{i}"));
        c.publish(NICK, None, nick, &Default::default())
            .await
            .expect("publish");
    }
    let waits = clients.iter_mut().enumerate().map(|(i, c)| async move {
        let next = format!("u{}@{DOMAIN}", (i + 1) % n);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, c.next_event()).await {
                Ok(Some(Event::Pep(p))) if p.from == next && p.node == NICK => return,
                Ok(Some(_)) => {}
                other => panic!("u{i}: no nickname of {next}: {other:?}"),
            }
        }
    });
    join_all(waits).await;
}

/// Three cores on a fresh database, two CMs behind the balancer, and
/// `count` users; `None` (after saying "skipped") without PostgreSQL.
fn deployment(prefix: &str, count: usize) -> Option<(Deployment, Vec<String>)> {
    let Some(url) = im_core::storage::postgres_for_tests(prefix) else {
        println!("skipped: LONGLINK_TEST_POSTGRES is unset");
        return None;
    };
    support::cluster::init_logging();
    let users: Vec<String> = (0..count).map(|i| format!("u{i}")).collect();
    let mut dep = Deployment::start_sharded(DOMAIN, 3, 2, &users, "pw", &url);
    dep.spawn_cm(1);
    dep.spawn_cm(2);
    dep.wait_backends(&["cm-1", "cm-2"]);
    let shares = dep.wait_slots_shared(4096, Duration::from_secs(60));
    println!("slots per core: {shares:?}");
    Some((dep, users))
}

/// Waits (30 s at most) until the cores `which` own every slot between
/// them; returns how long that took.
async fn wait_owned_by(dep: &Deployment, which: std::ops::Range<usize>) -> Duration {
    let start = Instant::now();
    loop {
        let owned: u64 = dep.cores[which.clone()]
            .iter()
            .map(|c| {
                block_in_place(|| c.cluster())["slots_owned"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .sum();
        if owned == 4096 {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "cores {which:?} own {owned}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every user logged in (stream management on) and available.
async fn log_in(dep: &Deployment, users: &[String]) -> Vec<Client> {
    let mut clients = Vec::new();
    for u in users {
        let options = dep
            .client_options(u, "phone")
            .with_message_states()
            .with_notify(&[NICK]);
        let c = Client::connect(options).await.expect("login");
        c.send_presence(0).await.expect("presence");
        clients.push(c);
    }
    clients
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_paused_past_its_lease_loses_its_slots_and_rejoins_losing_nothing() {
    let Some((dep, users)) = deployment("ll_pause", FEW_USERS) else {
        return;
    };
    let run = async {
        let mut clients = log_in(&dep, &users).await;
        ring::round(&mut clients, DOMAIN, 0).await;
        let paused = 2;
        let pid = dep.procs.0[paused].id() as i32;
        let fenced =
            || block_in_place(|| dep.cores[paused].metric("longlink_core_writes_fenced_total"));
        let fenced_before = fenced().unwrap_or(0.0);
        // Paused under traffic: a round is under way, so frames reach it
        // that it reads only when it runs again, after its slots moved. The
        // round must end without it (the others take its users over); it
        // runs again only then.
        let pause = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            // SAFETY: signals to a child process this test started.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            // past its 8 s lease: the others own its slots
            let moved = wait_owned_by(&dep, 0..paused).await;
            println!("slots moved {moved:?} after the pause");
        };
        let (during, ()) = tokio::join!(ring::round(&mut clients, DOMAIN, 1), pause);
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        // it finds its lease gone, rejoins and gets its share back
        let shares = block_in_place(|| dep.wait_slots_shared(4096, Duration::from_secs(60)));
        println!("slots per core after the rejoin: {shares:?}");
        println!(
            "writes of the paused core the fence refused once it ran again: {:?}",
            fenced().map(|n| n - fenced_before)
        );
        let after = ring::round(&mut clients, DOMAIN, 2).await;
        // Counted, not asserted: a session detached at a core (its client
        // reconnecting after a kick) while its slot moves back to the
        // rejoined core cannot be resumed there (ARCHITECTURE.md, known
        // gaps); its client logs in again, losing nothing (the rounds
        // check every message). About one run in six sees one.
        println!(
            "sessions that logged in again: {}",
            during.relogins + after.relogins
        );
    };
    tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_of_three_cores_chat_across_them_and_a_killed_cores_users_resume_losing_nothing() {
    let Some((mut dep, users)) = deployment("ll_shards", USERS + AWAY + 1) else {
        return;
    };
    let run = async {
        let mut clients = log_in(&dep, &users[..USERS]).await;
        subscribe_ring(&mut clients).await;
        ring::round(&mut clients, DOMAIN, 0).await;
        // PEP notifications reach contacts served by other cores
        nick_ring(&mut clients).await;
        // Phones of every core away, their sessions detached.
        let sender = log_in(&dep, &users[USERS + AWAY..]).await.remove(0);
        let away = go_away(&dep, &users[USERS..USERS + AWAY]).await;
        // (their CMs have noticed, and remember them for new owners)
        let start = Instant::now();
        while block_in_place(|| detached_at_cms(&dep)) < AWAY as f64 {
            assert!(start.elapsed() < Duration::from_secs(10), "CMs noticed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // Which users core-2 serves, then kill it under traffic.
        let victim = 1;
        let served: Vec<String> = block_in_place(|| routes_of(&dep, victim));
        assert!(!served.is_empty(), "core-2 serves some users");
        // Killed under traffic: a round is under way.
        let mut killed = Instant::now();
        let kill = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            killed = Instant::now();
            dep.kill(victim);
        };
        let (after, ()) = tokio::join!(ring::round(&mut clients, DOMAIN, 1), kill);
        assert_eq!(after.relogins, 0, "every session resumed or moved");
        let affected: Vec<usize> = (0..USERS)
            .filter(|i| served.iter().any(|j| j.starts_with(&format!("u{i}@"))))
            .collect();
        // Of the messages core-2's users got after the kill: the first (it
        // may have been on its way already) and the last (every one of
        // them had all its messages by then).
        let after_kill: Vec<Instant> = affected
            .iter()
            .flat_map(|&i| after.arrivals[i].iter().copied())
            .filter(|t| *t > killed)
            .collect();
        let since = |t: Option<&Instant>| t.map(|t| t.duration_since(killed));
        println!(
            "kill to the first message delivered after it to one of core-2's {} users: {:?}; to the last: {:?} ({} of their {} messages arrived after the kill)",
            affected.len(),
            since(after_kill.iter().min()),
            since(after_kill.iter().max()),
            after_kill.len(),
            affected.len() * ring::EACH
        );
        let shares = dep.cores[..]
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != victim)
            .map(|(_, c)| c.cluster()["slots_owned"].as_u64().unwrap_or(0))
            .sum::<u64>();
        assert_eq!(shares, 4096, "the survivors own every slot");
        // The away phones come back: those whose sessions detached at the
        // killed core too resume (at their slots' new owners).
        let away_there = away
            .iter()
            .filter(|a| served.iter().any(|j| j == &format!("{}@{DOMAIN}", a.user)))
            .count();
        let resumed = come_back(&dep, &away, &sender, "later").await;
        println!(
            "away phones: {AWAY}, {away_there} of them detached at the killed core; resumed: {resumed}"
        );
        assert!(away_there > 0, "some away phone was the killed core's");
        assert_eq!(resumed, AWAY, "every away phone resumed");
    };
    tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the test finished in time");
}

/// Sessions the CMs remember as detached, together.
fn detached_at_cms(dep: &Deployment) -> f64 {
    dep.cm_admin
        .values()
        .map(|admin| {
            let text = ureq::get(&format!("http://{admin}/metrics"))
                .call()
                .expect("CM metrics")
                .body_mut()
                .read_to_string()
                .expect("text");
            support::cluster::metric_value(&text, "longlink_cm_detached_sessions").unwrap_or(0.0)
        })
        .sum()
}

/// The bare JIDs core `index` routes.
fn routes_of(dep: &Deployment, index: usize) -> Vec<String> {
    let core = &dep.cores[index];
    let v: serde_json::Value = ureq::get(&format!("http://{}/routes", core.admin))
        .header("authorization", &format!("Bearer {}", core.token))
        .call()
        .expect("routes")
        .body_mut()
        .read_json()
        .expect("json");
    let mut users: Vec<String> = v["routes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["jid"].as_str())
                .map(|j| j.split('/').next().unwrap_or(j).to_owned())
                .collect()
        })
        .unwrap_or_default();
    users.sort();
    users.dedup();
    users
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_core_joins_under_traffic_then_one_is_drained_and_removed_and_every_session_resumes_losing_nothing()
 {
    let Some((mut dep, users)) = deployment("ll_join", FEW_USERS) else {
        return;
    };
    let run = async {
        let mut clients = log_in(&dep, &users).await;
        ring::round(&mut clients, DOMAIN, 0).await;
        // a fourth core joins while users chat: slots are handed to it
        let fourth = dep.add_core();
        let joining = ring::round(&mut clients, DOMAIN, 1).await;
        let shares = block_in_place(|| dep.wait_slots_shared(4096, Duration::from_secs(60)));
        println!("slots per core with a fourth: {shares:?}");
        assert_eq!(shares.len(), 4);
        let joined = ring::round(&mut clients, DOMAIN, 2).await;
        // core-1 is drained while users chat, then stopped
        block_in_place(|| dep.drain_core(0));
        let draining = ring::round(&mut clients, DOMAIN, 3).await;
        block_in_place(|| dep.wait_core_slots(0, 0, Duration::from_secs(60)));
        // what it gave back is claimed by the others within a round or two
        wait_owned_by(&dep, 1..dep.cores.len()).await;
        dep.kill(dep.cores[0].proc);
        let removed = ring::round(&mut clients, DOMAIN, 4).await;
        let relogins = [joining, joined, draining, removed]
            .iter()
            .map(|r| r.relogins)
            .sum::<usize>();
        assert_eq!(relogins, 0, "every session resumed or moved");
        assert!(block_in_place(|| dep.cores[fourth].cluster())["slots_owned"].as_u64() > Some(0));
    };
    tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the test finished in time");
}
