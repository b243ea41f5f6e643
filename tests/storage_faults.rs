//! A real PostgreSQL server is crash-stopped and started again while
//! clients send messages through a deployment of real processes (core with
//! `database_url`, balancer, CM): every message the server acknowledged is
//! delivered (online) or stored and retrieved later (offline); and work
//! that needs no storage (presence, XEP-0199 ping) is answered while the
//! database is down.

mod support;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use client_sdk::{Client, ConnectOptions, Event, MessageState};
use support::process::{Deployment, free_port};

const DOMAIN: &str = "example.org";

/// A throwaway PostgreSQL server (scripts/postgres.sh), removed on drop.
struct Postgres {
    dir: PathBuf,
    port: u16,
    url: String,
}

impl Postgres {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres.sh")
    }

    /// Starts one, or `None` (after printing "skipped") when PostgreSQL is
    /// not installed and `LONGLINK_REQUIRE_POSTGRES` is unset.
    fn start() -> Option<Self> {
        let installed = std::fs::read_dir("/usr/lib/postgresql")
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        if !installed {
            assert!(
                std::env::var_os("LONGLINK_REQUIRE_POSTGRES").is_none(),
                "LONGLINK_REQUIRE_POSTGRES is set but PostgreSQL is not installed"
            );
            println!("skipped: PostgreSQL is not installed (/usr/lib/postgresql)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap().keep();
        let port = free_port(true);
        let out = Command::new(Self::script())
            .args(["start", dir.to_str().unwrap(), &port.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "postgres.sh start: {out:?}");
        let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        Some(Self { dir, port, url })
    }

    fn run(&self, cmd: &str) {
        let port = self.port.to_string();
        let out = Command::new(Self::script())
            .args([cmd, self.dir.to_str().unwrap(), &port])
            .output()
            .unwrap();
        assert!(out.status.success(), "postgres.sh {cmd}: {out:?}");
    }
}

/// Sends `sig` to the processes `pids`.
fn signal(pids: &[String], sig: &str) {
    let ok = Command::new("kill")
        .arg(sig)
        .args(pids)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pids:?}");
}

impl Postgres {
    /// SIGSTOPs the postmaster and its children; returns their pids.
    fn freeze(&self) -> Vec<String> {
        let pid_file = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).unwrap();
        let postmaster = pid_file.lines().next().unwrap().trim().to_owned();
        let children = Command::new("pgrep")
            .args(["-P", &postmaster])
            .output()
            .unwrap();
        let mut pids = vec![postmaster];
        pids.extend(
            String::from_utf8_lossy(&children.stdout)
                .split_whitespace()
                .map(str::to_owned),
        );
        signal(&pids, "-STOP");
        pids
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new(Self::script())
            .args(["stop", self.dir.to_str().unwrap()])
            .output();
    }
}

fn options(dep: &Deployment, user: &str) -> ConnectOptions {
    ConnectOptions::new(dep.lb(), &format!("{user}@{DOMAIN}"), "pw")
        .with_ca_file(dep.ca())
        .with_resource("phone")
        .with_receipts(false)
}

async fn login(dep: &Deployment, user: &str, states: bool) -> Client {
    let start = Instant::now();
    loop {
        let opts = match states {
            true => options(dep, user).with_message_states(),
            false => options(dep, user),
        };
        match Client::connect(opts).await {
            Ok(c) => return c,
            Err(e) if start.elapsed() < Duration::from_secs(30) => {
                tracing::debug!(error = %e, "login retry");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{user} cannot log in: {e}"),
        }
    }
}

/// Bodies of the messages `c` receives until none came for `quiet`.
async fn collect(c: &mut Client, quiet: Duration) -> HashSet<String> {
    let mut got = HashSet::new();
    while let Ok(m) = c.next_message(quiet).await {
        if m.kind != "error"
            && let Some(b) = m.body
        {
            got.insert(b);
        }
    }
    got
}

/// What the database outage did to presence and ping (measured while it
/// was down).
#[derive(Debug, Default)]
struct DuringOutage {
    ping: Option<Result<Duration, String>>,
    presence_seen: bool,
}

/// How the database goes away for a while.
#[derive(Clone, Copy, Debug)]
enum Outage {
    /// `pg_ctl stop -m immediate`, then a start (crash recovery).
    Crash,
    /// SIGSTOP to the postmaster and its backends, then SIGCONT: a hung
    /// server whose sockets still accept traffic.
    Freeze,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_when_postgres_stops_and_restarts_under_traffic() {
    scenario(Outage::Crash).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_when_postgres_freezes_and_thaws_under_traffic() {
    scenario(Outage::Freeze).await;
}

async fn scenario(outage: Outage) {
    let Some(pg) = Postgres::start() else { return };
    let mut frozen = Vec::new();
    let users: Vec<String> = ["alice", "bob", "carol", "dave"].map(String::from).to_vec();
    let mut dep = Deployment::start_with_database(DOMAIN, 1, &users, "pw", Some(&pg.url));
    dep.spawn_cm(1);
    dep.wait_backends(&["cm-1"]);
    let run = async {
        let mut alice = login(&dep, "alice", true).await;
        let mut bob = login(&dep, "bob", false).await;
        let dave = login(&dep, "dave", false).await;
        for c in [&alice, &bob, &dave] {
            c.send_presence(0).await.unwrap();
        }
        // Bob is online (once a first message reaches him); Carol is
        // offline (her messages are stored).
        alice
            .send_message(&format!("bob@{DOMAIN}"), "warm-up")
            .await
            .unwrap();
        let first = bob.next_message(Duration::from_secs(20)).await.unwrap();
        assert_eq!(first.body.as_deref(), Some("warm-up"));
        let bob_task =
            tokio::spawn(async move { collect(&mut bob, Duration::from_secs(15)).await });

        let mut bodies: HashMap<String, String> = HashMap::new();
        let mut states: HashMap<String, MessageState> = HashMap::new();
        let mut bounced: HashSet<String> = HashSet::new();
        let mut during = DuringOutage::default();
        let started = Instant::now();
        let (halt_at, resume_at, stop_at) = (
            Duration::from_secs(2),
            Duration::from_secs(7),
            Duration::from_secs(12),
        );
        // messages numbered from here on are sent 2 s after the restart
        let mut n_restarted = None;
        let (mut halted, mut resumed) = (false, false);
        let mut tick = tokio::time::interval(Duration::from_millis(40));
        let mut n = 0u32;
        let mut presence_sent_at = None;
        let mut quiet_since = Instant::now();
        loop {
            let t = started.elapsed();
            if !halted && t >= halt_at {
                match outage {
                    Outage::Crash => pg.run("halt"),
                    Outage::Freeze => frozen = pg.freeze(),
                }
                halted = true;
                // (checked while the database is down)
                during.ping = Some(
                    match tokio::time::timeout(Duration::from_secs(3), dave.ping()).await {
                        Ok(Ok(rtt)) => Ok(rtt),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("no answer within 3 s".into()),
                    },
                );
                let xml = format!("<presence to='alice@{DOMAIN}/phone'/>");
                dave.send_raw(xml.as_bytes()).await.unwrap();
                presence_sent_at = Some(Instant::now());
            }
            if halted && !resumed && t >= resume_at {
                match outage {
                    Outage::Crash => pg.run("resume"),
                    Outage::Freeze => signal(&frozen, "-CONT"),
                }
                resumed = true;
            }
            if resumed && n_restarted.is_none() && t >= resume_at + Duration::from_secs(2) {
                n_restarted = Some(n);
            }
            let sending = t < stop_at;
            if !sending {
                let settled = states
                    .values()
                    .all(|s| !matches!(s, MessageState::Queued | MessageState::Sent));
                if (settled && quiet_since.elapsed() > Duration::from_secs(2))
                    || quiet_since.elapsed() > Duration::from_secs(20)
                {
                    break;
                }
            }
            tokio::select! {
                _ = tick.tick(), if sending => {
                    for to in ["bob", "carol"] {
                        let body = format!("{to}-{n}");
                        let id = alice.send_message(&format!("{to}@{DOMAIN}"), &body).await.unwrap();
                        bodies.insert(id.clone(), body);
                        states.entry(id).or_insert(MessageState::Queued);
                    }
                    n += 1;
                }
                ev = tokio::time::timeout(Duration::from_millis(200), alice.next_event()) => {
                    match ev {
                        Ok(Some(Event::MessageState { id, state })) if bodies.contains_key(&id) => {
                            quiet_since = Instant::now();
                            let keep = matches!(
                                states.get(&id),
                                Some(MessageState::Acknowledged | MessageState::Delivered)
                            );
                            if !keep {
                                states.insert(id, state);
                            }
                        }
                        Ok(Some(Event::Message(m))) if m.kind == "error" => {
                            bounced.insert(m.id.unwrap_or_default());
                        }
                        Ok(Some(Event::Presence(p))) if p.from.starts_with("dave@") => {
                            if presence_sent_at.is_some_and(|at| {
                                !resumed && at.elapsed() < Duration::from_secs(3)
                            }) {
                                during.presence_seen = true;
                            }
                        }
                        Ok(Some(_)) | Err(_) => {}
                        Ok(None) => panic!("alice's session ended"),
                    }
                }
            }
        }
        alice.abort();
        // Storage works again: a message to the offline user is stored.
        dave.send_message(&format!("carol@{DOMAIN}"), "after-restart")
            .await
            .unwrap();
        let to_bob = bob_task.await.unwrap();
        let mut carol = login(&dep, "carol", false).await;
        carol.send_presence(0).await.unwrap();
        let to_carol = collect(&mut carol, Duration::from_secs(5)).await;
        let delivered: HashSet<&String> = to_bob.iter().chain(to_carol.iter()).collect();

        let acked: Vec<&String> = states
            .iter()
            .filter(|(_, s)| matches!(s, MessageState::Acknowledged | MessageState::Delivered))
            .map(|(id, _)| &bodies[id])
            .collect();
        let failed = states
            .values()
            .filter(|s| matches!(s, MessageState::Failed(_)))
            .count();
        // Refused: the sender was told (a failure, or an error bounce).
        let refused = states
            .iter()
            .filter(|(id, s)| matches!(s, MessageState::Failed(_)) || bounced.contains(*id))
            .count();
        let lost: Vec<&String> = states
            .iter()
            .filter(|(id, s)| {
                matches!(s, MessageState::Acknowledged | MessageState::Delivered)
                    && !bounced.contains(*id)
                    && !delivered.contains(&bodies[*id])
            })
            .map(|(id, _)| &bodies[id])
            .collect();
        println!(
            "{outage:?}: sent {}, acknowledged {}, delivered {} (online {}, offline {}), refused {refused} \
             (failed {failed}, bounced {}), unacknowledged {}, lost {}",
            bodies.len(),
            acked.len(),
            delivered.len(),
            to_bob.len(),
            to_carol.len(),
            bounced.len(),
            bodies.len() - acked.len() - failed,
            lost.len()
        );
        println!("{outage:?}: while PostgreSQL was down: {during:?}");
        assert!(!acked.is_empty(), "some messages were acknowledged");
        assert!(
            lost.is_empty(),
            "acknowledged but never delivered: {lost:?}"
        );
        // After the restart storage works again: a fresh message to an
        // offline user is stored and acknowledged.
        assert!(
            to_carol.contains("after-restart"),
            "a message sent after the restart is stored"
        );
        // (alice's messages numbered from here on were sent 2 s after it)
        let n_restarted = n_restarted.unwrap();
        let restarted = |b: &String| {
            b.strip_prefix("carol-")
                .and_then(|i| i.parse::<u32>().ok())
                .is_some_and(|i| i >= n_restarted)
        };
        // NEEDS THE durability-acks DRIVER CHANGE (routing that does not wait
        // on storage): presence and ping answered while PostgreSQL is down.
        assert!(
            matches!(during.ping, Some(Ok(_))),
            "XEP-0199 ping while PostgreSQL was down: {:?}",
            during.ping
        );
        assert!(
            during.presence_seen,
            "directed presence reached alice while PostgreSQL was down"
        );
        // NEEDS THE durability-acks CHANGE: a sender whose message could not
        // be archived gets acknowledgements again once storage is back (on
        // this branch its acknowledgements stop for the rest of the session).
        assert!(
            acked.iter().any(|b| restarted(b)),
            "acknowledgements resume after the restart"
        );
    };
    tokio::time::timeout(Duration::from_secs(150), run)
        .await
        .expect("the test finished in time");
}
