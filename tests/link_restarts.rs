//! The CM↔core links across restarts, with real processes on loopback:
//! a CM restarted within the core's idle timeout keeps its sessions when
//! its dead process's connections end at the core, and a CM notices a
//! restarted core from the core's stateless reset, not its idle timeout.

mod support;

use std::time::{Duration, Instant};

use support::process::Deployment;

const DOMAIN: &str = "example.org";

/// The CM↔core idle timeout (`im-core` `link_transport`, and the CM's).
const LINK_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The core's `longlink_core_cm_connections` gauge, if its admin endpoint
/// answers.
fn core_cm_connections(dep: &Deployment) -> Option<i64> {
    let text = ureq::get(&format!("http://{}/metrics", dep.core_admin))
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("longlink_core_cm_connections "))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until the core counts `n` CM connections; returns when it did.
async fn wait_cm_connections(dep: &Deployment, n: i64, deadline: Duration) -> Instant {
    let start = Instant::now();
    loop {
        if core_cm_connections(dep) == Some(n) {
            return Instant::now();
        }
        assert!(
            start.elapsed() < deadline,
            "the core counts {:?} CM connections after {:?}, want {n}",
            core_cm_connections(dep),
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_on_a_cm_restarted_at_once_keep_receiving_after_its_old_connections_time_out() {
    let users: Vec<String> = ["alice", "bob"].map(String::from).to_vec();
    let mut dep = Deployment::start(DOMAIN, 1, &users, "pw");
    let old = dep.spawn_cm(1);
    dep.wait_backends(&["cm-1"]);
    let run = async {
        // The CM's pool (2 connections) is up at the core.
        wait_cm_connections(&dep, 2, Duration::from_secs(30)).await;
        // SIGKILL the CM and start the same node again at once: its old
        // connections linger at the core until the idle timeout.
        dep.kill(old);
        let killed = Instant::now();
        dep.spawn_cm(1);
        let alice = dep.login("alice", "phone").await;
        let mut bob = dep.login("bob", "phone").await;
        alice.send_presence(0).await.unwrap();
        bob.send_presence(0).await.unwrap();
        println!("logged in {:?} after the kill", killed.elapsed());
        // A message a second, each delivered, until well past the moment
        // the dead process's connections time out at the core.
        let mut sent = 0;
        while killed.elapsed() < LINK_IDLE_TIMEOUT + Duration::from_secs(5) {
            let tick = Instant::now();
            let body = format!("m{sent}");
            alice
                .send_message(&format!("bob@{DOMAIN}"), &body)
                .await
                .unwrap();
            let got = bob.next_message(Duration::from_secs(3)).await;
            let at = killed.elapsed();
            match got {
                Ok(m) => assert_eq!(m.body.as_deref(), Some(body.as_str()), "at {at:?}"),
                Err(e) => panic!("{body} not delivered ({e}), {at:?} after the CM was killed"),
            }
            sent += 1;
            tokio::time::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed())).await;
        }
        println!(
            "{sent} messages delivered, the last {:?} after the kill",
            killed.elapsed()
        );
        assert!(sent >= 5, "only {sent} messages sent");
    };
    tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cm_reconnects_to_a_restarted_core_well_within_the_idle_timeout() {
    let mut dep = Deployment::start(DOMAIN, 1, &[], "pw");
    dep.spawn_cm(1);
    dep.wait_backends(&["cm-1"]);
    let run = async {
        wait_cm_connections(&dep, 2, Duration::from_secs(30)).await;
        dep.kill(0);
        let restarted = Instant::now();
        dep.restart_core();
        // The CM's next keep-alive (2 s at worst) reaches the new core,
        // whose stateless reset it accepts; then it reconnects at once.
        let back = wait_cm_connections(&dep, 2, LINK_IDLE_TIMEOUT + Duration::from_secs(5)).await;
        let took = back - restarted;
        println!("the CM's pool reconnected {took:?} after the core restart");
        assert!(
            took < Duration::from_secs(4),
            "the CM took {took:?} to reconnect to the restarted core"
        );
    };
    tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cm_notices_a_restarted_core_as_soon_as_it_sends_to_it() {
    let users: Vec<String> = ["alice"].map(String::from).to_vec();
    let mut dep = Deployment::start(DOMAIN, 1, &users, "pw");
    dep.spawn_cm(1);
    dep.wait_backends(&["cm-1"]);
    let run = async {
        wait_cm_connections(&dep, 2, Duration::from_secs(30)).await;
        let alice = dep.login("alice", "phone").await;
        dep.kill(0);
        dep.restart_core();
        // The new core is up and has no CM connection yet.
        wait_cm_connections(&dep, 0, Duration::from_secs(10)).await;
        // Alice's message goes onto her pool connection at once; the new
        // core's stateless reset ends it, and the CM dials again.
        let sent = Instant::now();
        alice
            .send_message(&format!("nobody@{DOMAIN}"), "wake up")
            .await
            .unwrap();
        let start = Instant::now();
        let back = loop {
            if core_cm_connections(&dep).is_some_and(|n| n >= 1) {
                break sent.elapsed();
            }
            assert!(
                start.elapsed() < LINK_IDLE_TIMEOUT + Duration::from_secs(5),
                "the CM never reconnected"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        println!("a CM connection was back {back:?} after the client sent");
        assert!(
            back < Duration::from_secs(1),
            "the CM reconnected only {back:?} after it sent into the dead link"
        );
    };
    tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the test finished in time");
}
