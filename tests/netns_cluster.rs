//! The system across hosts, as far as one machine can stand in for them
//! (issue 15): the balancer, two CMs, two cores and PostgreSQL each in a
//! network namespace of its own, joined by veth links to one bridge on a
//! private /24 the test makes; the clients are in the test's own namespace
//! on that bridge. No process can reach another over loopback, so every
//! address a process listens on, advertises or dials is a real interface's.
//!
//! Needs root (CI has it) and PostgreSQL's binaries; says "skipped"
//! without them, unless `LONGLINK_REQUIRE_NETNS` (root) or
//! `LONGLINK_REQUIRE_POSTGRES` (PostgreSQL) make that a failure.

mod support;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use client_sdk::{Client, ConnectOptions};
use support::netns::Network;
use support::process::{BIN, Processes, admin_json, backends, certs_init, stderr_for, write_users};
use support::ring;

const DOMAIN: &str = "example.org";
const USERS: usize = 24;
const POSTGRES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres.sh");

/// Stops the PostgreSQL server in `.0` when dropped.
struct Postgres(std::path::PathBuf);

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new(POSTGRES)
            .arg("stop")
            .arg(&self.0)
            .stdout(Stdio::null())
            .status();
    }
}

/// Why the test cannot run here, if it cannot (and may say so).
fn cannot_run() -> Option<String> {
    if let Some(why) = Network::unavailable() {
        assert!(
            std::env::var_os("LONGLINK_REQUIRE_NETNS").is_none(),
            "LONGLINK_REQUIRE_NETNS is set but network namespaces cannot be made: {why}"
        );
        return Some(format!("cannot make network namespaces ({why})"));
    }
    if !std::path::Path::new("/usr/lib/postgresql").exists() {
        assert!(
            std::env::var_os("LONGLINK_REQUIRE_POSTGRES").is_none(),
            "LONGLINK_REQUIRE_POSTGRES is set but PostgreSQL is not installed"
        );
        return Some("PostgreSQL is not installed".into());
    }
    None
}

/// An admin endpoint: its address and bearer token.
struct Admin {
    addr: SocketAddr,
    token: String,
}

impl Admin {
    fn get(&self, path: &str) -> Option<serde_json::Value> {
        admin_json(&self.addr.to_string(), &self.token, path)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_a_balancer_two_cms_and_two_cores_each_in_its_own_network_namespace() {
    if let Some(why) = cannot_run() {
        println!("skipped: {why}");
        return;
    }
    support::cluster::init_logging();
    let mut net = Network::new().expect("bridge");
    let (lb_at, cm_at, core_at, pg_at): (u8, [u8; 2], [u8; 2], u8) = (1, [2, 3], [4, 5], 6);
    let lb_ns = net.host("lb", lb_at).expect("lb host");
    let cm_ns: Vec<String> = (0..2)
        .map(|i| {
            net.host(&format!("cm{}", i + 1), cm_at[i])
                .expect("cm host")
        })
        .collect();
    let core_ns: Vec<String> = (0..2)
        .map(|i| {
            net.host(&format!("core{}", i + 1), core_at[i])
                .expect("core host")
        })
        .collect();
    let pg_ns = net.host("pg", pg_at).expect("pg host");
    let host = |n: u8, port: u16| SocketAddr::from((net.address(n), port));

    let dir = tempfile::tempdir().expect("tempdir");
    // (PostgreSQL runs as its own user and must reach its directory)
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .expect("chmod");
    let d = dir.path();
    let pg_dir = d.join("postgres");
    let pg_addr: Ipv4Addr = net.address(pg_at);
    let started = Network::command(&pg_ns, POSTGRES)
        .arg("start")
        .arg(&pg_dir)
        .args(["5432", &pg_addr.to_string()])
        .output()
        .expect("postgres.sh runs");
    let _postgres = Postgres(pg_dir);
    assert!(started.status.success(), "PostgreSQL: {started:?}");
    let url = String::from_utf8_lossy(&started.stdout).trim().to_owned();
    assert!(url.contains(&pg_addr.to_string()), "{url}");

    let pki = d.join("pki");
    certs_init(&pki, DOMAIN, 2);
    let users: Vec<String> = (0..USERS).map(|i| format!("u{i}")).collect();
    // (over the test's own link to the bridge: PostgreSQL is a host away)
    write_users(Some(&url), &d.join("users"), &users, "pw");

    let mut procs = Processes(Vec::new());
    let mut spawn = |ns: &str, name: &str, role: &str, toml: String| {
        let path = d.join(format!("{name}.toml"));
        std::fs::write(&path, toml).expect("config");
        let child = Network::command(ns, BIN)
            .args([role, "--config", path.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(stderr_for(d, name))
            .spawn()
            .expect("spawn");
        procs.0.push(child);
    };

    let mut cores = Vec::new();
    for i in 0..2 {
        let data = d.join(format!("data-{}", i + 1));
        let token = im_core::admin_token(&data).expect("core token");
        let (listen, admin) = (host(core_at[i], 5000), host(core_at[i], 8081));
        spawn(
            &core_ns[i],
            &format!("core-{}", i + 1),
            "core",
            format!(
                "domain = \"{DOMAIN}\"\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\ndata_dir = \"{}\"\npki_dir = \"{}\"\ndatabase_url = \"{url}\"\nnode_grace_ms = 1000\n\n[cluster]\nname = \"core-{}\"\nadvertise = \"{listen}\"\n",
                data.display(),
                pki.display(),
                i + 1
            ),
        );
        cores.push((listen, Admin { addr: admin, token }));
    }
    let lb_token_file = d.join("lb-admin.token");
    let lb = Admin {
        addr: host(lb_at, 8080),
        token: lb::server::admin_token(&lb_token_file).expect("lb token"),
    };
    let (public, backend, control) = (host(lb_at, 4433), host(lb_at, 4434), host(lb_at, 4435));
    spawn(
        &lb_ns,
        "lb",
        "lb",
        format!(
            "listen = [\"{public}\"]\nbackend_listen = \"{backend}\"\ncontrol_listen = \"{control}\"\nadmin_listen = \"{}\"\nadmin_token_file = \"{}\"\npki_dir = \"{}\"\n",
            lb.addr,
            lb_token_file.display(),
            pki.display()
        ),
    );
    for i in 0..2 {
        // each CM is given a different core and learns the other from it
        spawn(
            &cm_ns[i],
            &format!("cm-{}", i + 1),
            "cm",
            format!(
                "node = \"cm-{n}\"\ndomain = \"{DOMAIN}\"\nlisten = \"{}\"\ncore = \"{}\"\npki_dir = \"{}\"\nadmin_listen = \"{}\"\n\n[balancer]\ncontrol = \"{control}\"\nencap = \"{backend}\"\n",
                host(cm_at[i], 4433),
                cores[i].0,
                pki.display(),
                host(cm_at[i], 8082),
                n = i + 1,
            ),
        );
    }

    wait("the balancer's backends are cm-1 and cm-2", 30, || {
        let mut have = backends(&lb.addr.to_string(), &lb.token);
        have.sort();
        have == ["cm-1", "cm-2"]
    });
    wait("the two cores share the 4096 slots", 60, || {
        let owned: Vec<u64> = cores
            .iter()
            .filter_map(|(_, a)| a.get("/routes")?["cluster"]["slots_owned"].as_u64())
            .collect();
        owned.len() == 2 && owned.iter().sum::<u64>() == 4096 && owned.iter().all(|&n| n > 0)
    });

    let run = async {
        let mut clients = Vec::new();
        for u in &users {
            let options = ConnectOptions::new(public, &format!("{u}@{DOMAIN}"), "pw")
                .with_ca_file(pki.join("ca.pem"))
                .with_resource("phone")
                .with_receipts(false)
                .with_message_states();
            let c = Client::connect(options).await.expect("login");
            c.send_presence(0).await.expect("presence");
            clients.push(c);
        }
        ring::round(&mut clients, DOMAIN, 0).await;
        ring::round(&mut clients, DOMAIN, 1).await;

        // who served whom: each core routes its own users' sessions
        let mut owner = std::collections::HashMap::new();
        let mut cms = BTreeSet::new();
        for (i, (_, admin)) in cores.iter().enumerate() {
            let v = admin.get("/routes").expect("routes");
            let nodes: std::collections::HashMap<u64, String> = v["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| Some((n["id"].as_u64()?, n["name"].as_str()?.to_owned())))
                .collect();
            for r in v["routes"].as_array().into_iter().flatten() {
                let jid = r["jid"].as_str().unwrap_or_default();
                let bare = jid.split('/').next().unwrap_or(jid).to_owned();
                owner.insert(bare, i);
                if let Some(cm) = r["node"].as_u64().and_then(|id| nodes.get(&id)) {
                    cms.insert(cm.clone());
                }
            }
        }
        assert_eq!(owner.len(), USERS, "every user is routed by one core");
        let across = (0..USERS)
            .filter(|i| {
                let of = |k: usize| owner.get(&format!("u{}@{DOMAIN}", k % USERS));
                of(*i) != of(i + 1)
            })
            .count();
        println!("ring links from one core's user to the other's: {across} of {USERS}");
        assert!(across > 0, "messages went from core to core");
        assert_eq!(
            cms.into_iter().collect::<Vec<_>>(),
            ["cm-1", "cm-2"],
            "both CMs hold sessions"
        );
        for c in clients {
            c.disconnect().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the test finished in time");
    drop(procs);
}

/// Waits (polling, `secs` at most) until `ready`; panics with `what`.
fn wait(what: &str, secs: u64, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < Duration::from_secs(secs), "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
