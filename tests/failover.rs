//! A CM is killed with SIGKILL in the middle of traffic: its 100 sessions
//! resume on the other CM through the balancer, and every message the
//! server acknowledged arrives exactly once, in order. Real processes.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use client_sdk::{Client, ConnectOptions, Event, MessageState};
use support::process::Deployment;

const DOMAIN: &str = "example.org";
const VICTIMS: usize = 100;
const SENDERS: usize = 5;
const ROUNDS: usize = 20;
const KILL_AT: usize = 10;

fn options(dep: &Deployment, user: &str) -> ConnectOptions {
    ConnectOptions::new(dep.lb(), &format!("{user}@{DOMAIN}"), "pw")
        .with_ca_file(dep.ca())
        .with_resource("phone")
        .with_receipts(false)
        .with_message_states()
}

/// Logs `users` in through the balancer, 20 at a time.
async fn login_all(dep: &Deployment, users: &[String]) -> Vec<Client> {
    let mut clients = Vec::new();
    for chunk in users.chunks(20) {
        let logins = chunk.iter().map(|u| {
            let opts = options(dep, u);
            async move {
                let c = Client::connect(opts).await.expect("login");
                c.send_presence(0).await.unwrap();
                c
            }
        });
        clients.extend(futures_join(logins).await);
    }
    clients
}

async fn futures_join<F: std::future::Future<Output = Client> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<Client> {
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    /// (sender bare JID, body) in arrival order.
    messages: Vec<(String, String)>,
    /// Ids the server acknowledged.
    acked: HashSet<String>,
    resumed: bool,
    relogged: bool,
}

/// Reads events until `done` says enough or nothing came for `quiet`.
async fn drain(
    client: &mut Client,
    seen: &mut Seen,
    quiet: Duration,
    done: impl Fn(&Seen) -> bool,
) {
    while !done(seen) {
        let Ok(Some(ev)) = tokio::time::timeout(quiet, client.next_event()).await else {
            return;
        };
        match ev {
            Event::Message(m) => {
                let from = m.from.split('/').next().unwrap_or_default().to_owned();
                seen.messages.push((from, m.body.unwrap_or_default()));
            }
            Event::MessageState {
                id,
                state: MessageState::Acknowledged,
            } => {
                seen.acked.insert(id);
            }
            Event::Reconnected { resumed } => {
                seen.resumed |= resumed;
                seen.relogged |= !resumed;
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_cm_loses_nothing_its_sessions_resume_on_another() {
    tokio::time::timeout(Duration::from_secs(240), scenario())
        .await
        .expect("test finished in time");
}

async fn scenario() {
    support::init_logging();
    let victims: Vec<String> = (0..VICTIMS).map(|i| format!("v{i}")).collect();
    let senders: Vec<String> = (0..SENDERS).map(|i| format!("s{i}")).collect();
    let users: Vec<String> = victims.iter().chain(&senders).cloned().collect();
    let mut dep = tokio::task::block_in_place(|| Deployment::start(DOMAIN, 2, &users, "pw"));
    let cm1 = dep.spawn_cm(1);
    tokio::task::block_in_place(|| dep.wait_backends(&["cm-1"]));
    let mut vclients = login_all(&dep, &victims).await;
    // a second CM joins; cm-1 takes no new connections, so senders land on cm-2
    dep.spawn_cm(2);
    tokio::task::block_in_place(|| dep.wait_backends(&["cm-1", "cm-2"]));
    let drained = ureq::post(&format!("http://{}/drain/cm-1", dep.lb_admin))
        .header("authorization", &format!("Bearer {}", dep.lb_token))
        .send_empty();
    assert!(drained.is_ok(), "{drained:?}");
    let mut sclients = login_all(&dep, &senders).await;
    let routes = tokio::task::block_in_place(|| dep.routes());
    for v in &victims {
        assert_eq!(routes[&format!("{v}@{DOMAIN}/phone")], "cm-1");
    }
    for s in &senders {
        assert_eq!(routes[&format!("{s}@{DOMAIN}/phone")], "cm-2");
    }

    // traffic both ways; cm-1 dies halfway through
    let per_sender = VICTIMS / SENDERS;
    for round in 0..ROUNDS {
        if round == KILL_AT {
            dep.kill(cm1);
        }
        for (k, s) in sclients.iter().enumerate() {
            for v in k * per_sender..(k + 1) * per_sender {
                s.send_message(&format!("v{v}@{DOMAIN}/phone"), &format!("s{k}-{round}"))
                    .await
                    .unwrap();
            }
        }
        for (i, v) in vclients.iter().enumerate() {
            let to = format!("s{}@{DOMAIN}/phone", i / per_sender);
            v.send_message(&to, &format!("v{i}-{round}")).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // every victim gets its sender's messages; every sender its victims'
    let mut vseen: Vec<Seen> = (0..VICTIMS).map(|_| Seen::default()).collect();
    let mut sseen: Vec<Seen> = (0..SENDERS).map(|_| Seen::default()).collect();
    let quiet = Duration::from_secs(60);
    for (c, seen) in vclients.iter_mut().zip(&mut vseen) {
        drain(c, seen, quiet, |s| {
            s.messages.len() >= ROUNDS && s.acked.len() >= ROUNDS
        })
        .await;
    }
    for (c, seen) in sclients.iter_mut().zip(&mut sseen) {
        drain(c, seen, quiet, |s| {
            s.messages.len() >= per_sender * ROUNDS && s.acked.len() >= per_sender * ROUNDS
        })
        .await;
    }
    // a little longer: anything more would be a duplicate
    for (c, seen) in vclients.iter_mut().zip(&mut vseen) {
        drain(c, seen, Duration::from_millis(50), |_| false).await;
    }
    for (c, seen) in sclients.iter_mut().zip(&mut sseen) {
        drain(c, seen, Duration::from_millis(200), |_| false).await;
    }

    for (i, seen) in vseen.iter().enumerate() {
        let k = i / per_sender;
        let want: Vec<(String, String)> = (0..ROUNDS)
            .map(|r| (format!("s{k}@{DOMAIN}"), format!("s{k}-{r}")))
            .collect();
        assert_eq!(seen.messages, want, "v{i}: every message once, in order");
        assert!(seen.resumed && !seen.relogged, "v{i} resumed its session");
        assert_eq!(
            seen.acked.len(),
            ROUNDS,
            "v{i}: all its messages acknowledged"
        );
        assert_eq!(
            vclients[i].duplicates_dropped(),
            0,
            "v{i}: no duplicates at all"
        );
    }
    for (k, seen) in sseen.iter().enumerate() {
        let mut by_victim: HashMap<String, Vec<String>> = HashMap::new();
        for (from, body) in &seen.messages {
            by_victim
                .entry(from.clone())
                .or_default()
                .push(body.clone());
        }
        for v in k * per_sender..(k + 1) * per_sender {
            let want: Vec<String> = (0..ROUNDS).map(|r| format!("v{v}-{r}")).collect();
            assert_eq!(
                by_victim.get(&format!("v{v}@{DOMAIN}")),
                Some(&want),
                "s{k} gets v{v}'s messages once, in order"
            );
        }
        assert_eq!(seen.acked.len(), per_sender * ROUNDS);
        assert_eq!(sclients[k].duplicates_dropped(), 0);
    }
    let routes = tokio::task::block_in_place(|| dep.routes());
    for v in &victims {
        assert_eq!(routes[&format!("{v}@{DOMAIN}/phone")], "cm-2");
    }
}
