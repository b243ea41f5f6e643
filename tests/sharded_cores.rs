//! Several cores share one domain (issue 15), as real processes: three
//! cores in a cluster on PostgreSQL, a balancer and two CMs. Users of all
//! slots chat across cores and CMs; then a core is SIGKILLed under that
//! traffic, its slots move to the survivors, its users' sessions are
//! re-announced and resumed, and no acknowledged message is lost.
//!
//! Needs PostgreSQL (`LONGLINK_TEST_POSTGRES`); says "skipped" without it.

mod support;

use std::time::{Duration, Instant};

use client_sdk::{Client, Event, MessageState};
use futures_util::future::join_all;
use support::process::Deployment;

const DOMAIN: &str = "example.org";
/// Users (spread over every core's slots).
const USERS: usize = 60;
/// Messages each user sends per round.
const EACH: usize = 5;

/// Each user sends [`EACH`] messages to the next user (most of them of
/// another core) and waits until they are acknowledged and it got as
/// many from the previous user, in order, once. Returns when each user
/// got its first message of the round.
async fn round(clients: &mut [Client], round: usize) -> Vec<Instant> {
    let n = clients.len();
    let runs = clients.iter_mut().enumerate().map(|(i, c)| async move {
        let to = format!("u{}@{DOMAIN}", (i + 1) % n);
        let mut waiting = std::collections::HashSet::new();
        for k in 0..EACH {
            let id = c
                .send_message(&to, &format!("r{round}-{i}-{k}"))
                .await
                .expect("send");
            waiting.insert(id);
        }
        let from = (i + n - 1) % n;
        let mut got = Vec::new();
        let mut first = None;
        let deadline = Instant::now() + Duration::from_secs(90);
        while !waiting.is_empty() || got.len() < EACH {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, c.next_event()).await {
                Ok(Some(Event::MessageState {
                    id,
                    state: MessageState::Acknowledged,
                })) => {
                    waiting.remove(&id);
                }
                Ok(Some(Event::Message(m))) if m.body.is_some() => {
                    first.get_or_insert_with(Instant::now);
                    got.push(m.body.unwrap_or_default());
                }
                Ok(Some(_)) => {}
                other => panic!(
                    "u{i} round {round}: {} unacknowledged, got {got:?}: {other:?}",
                    waiting.len()
                ),
            }
        }
        let want: Vec<String> = (0..EACH).map(|k| format!("r{round}-{from}-{k}")).collect();
        assert_eq!(
            got, want,
            "u{i} got every message of u{from}, once, in order"
        );
        first.unwrap_or_else(Instant::now)
    });
    join_all(runs).await
}

/// Three cores on a fresh database, two CMs behind the balancer, and
/// [`USERS`] users; `None` (after saying "skipped") without PostgreSQL.
fn deployment(prefix: &str) -> Option<(Deployment, Vec<String>)> {
    let Some(url) = im_core::storage::postgres_for_tests(prefix) else {
        println!("skipped: LONGLINK_TEST_POSTGRES is unset");
        return None;
    };
    let users: Vec<String> = (0..USERS).map(|i| format!("u{i}")).collect();
    let mut dep = Deployment::start_sharded(DOMAIN, 3, 2, &users, "pw", &url);
    dep.spawn_cm(1);
    dep.spawn_cm(2);
    dep.wait_backends(&["cm-1", "cm-2"]);
    let shares = dep.wait_slots_shared(4096, Duration::from_secs(60));
    println!("slots per core: {shares:?}");
    Some((dep, users))
}

/// Every user logged in (stream management on) and available.
async fn log_in(dep: &Deployment, users: &[String]) -> Vec<Client> {
    let mut clients = Vec::new();
    for u in users {
        let c = Client::connect(dep.client_options(u, "phone").with_message_states())
            .await
            .expect("login");
        c.send_presence(0).await.expect("presence");
        clients.push(c);
    }
    clients
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_paused_past_its_lease_loses_its_slots_rejoins_and_nothing_is_lost() {
    let Some((dep, users)) = deployment("ll_pause") else {
        return;
    };
    let run = async {
        let mut clients = log_in(&dep, &users).await;
        round(&mut clients, 0).await;
        let paused = 2;
        let pid = dep.procs.0[paused].id() as i32;
        // SAFETY: signals to a child process this test started.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        // past its 8 s lease and a round: the others own its slots
        let survivors = std::time::Instant::now();
        loop {
            let owned: u64 = dep.cores[..paused]
                .iter()
                .map(|c| c.cluster()["slots_owned"].as_u64().unwrap_or(0))
                .sum();
            if owned == 4096 {
                break;
            }
            assert!(
                survivors.elapsed() < Duration::from_secs(30),
                "owned {owned}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!("slots moved {:?} after the pause", survivors.elapsed());
        round(&mut clients, 1).await;
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        // it finds its lease gone, rejoins and gets its share back
        let shares = dep.wait_slots_shared(4096, Duration::from_secs(60));
        println!("slots per core after the rejoin: {shares:?}");
        round(&mut clients, 2).await;
    };
    tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_of_three_cores_chat_across_them_and_a_killed_cores_users_resume_losing_nothing() {
    let Some((mut dep, users)) = deployment("ll_shards") else {
        return;
    };
    let run = async {
        let mut clients = log_in(&dep, &users).await;
        round(&mut clients, 0).await;

        // Which users core-2 serves, then kill it under traffic.
        let victim = 1;
        let served: Vec<String> = routes_of(&dep, victim);
        assert!(!served.is_empty(), "core-2 serves some users");
        let killed = Instant::now();
        dep.kill(victim);
        let firsts = round(&mut clients, 1).await;
        let affected: Vec<usize> = (0..USERS)
            .filter(|i| served.iter().any(|j| j.starts_with(&format!("u{i}@"))))
            .collect();
        let first_again = affected.iter().map(|&i| firsts[i]).min().unwrap_or(killed);
        println!(
            "kill to the first message delivered to one of core-2's {} users: {:?}",
            affected.len(),
            first_again.duration_since(killed)
        );
        let shares = dep.cores[..]
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != victim)
            .map(|(_, c)| c.cluster()["slots_owned"].as_u64().unwrap_or(0))
            .sum::<u64>();
        assert_eq!(shares, 4096, "the survivors own every slot");
        let resumed = clients.iter().filter(|c| c.was_resumed()).count();
        println!("sessions resumed: {resumed}");
    };
    tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the test finished in time");
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
