//! The `longlink` command as users run it: real processes on loopback.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::process::{BIN, Deployment, Processes, backends, run, wait_for};

#[test]
fn certs_init_keeps_keys_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = run(&[
        "certs",
        "init",
        "--dir",
        d,
        "--domain",
        "example.org",
        "--cm",
        "2",
    ]);
    assert!(out.status.success(), "{out:?}");
    let key = dir.path().join("cm-2.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let before = std::fs::read(&key).unwrap();
    assert!(
        run(&[
            "certs",
            "init",
            "--dir",
            d,
            "--domain",
            "example.org",
            "--cm",
            "2"
        ])
        .status
        .success()
    );
    assert_eq!(std::fs::read(&key).unwrap(), before);
    assert!(
        run(&[
            "certs",
            "init",
            "--dir",
            d,
            "--domain",
            "example.org",
            "--cm",
            "2",
            "--force"
        ])
        .status
        .success()
    );
    assert_ne!(std::fs::read(&key).unwrap(), before);
}

#[test]
fn up_adduser_send_recv_routes_and_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // `longlink up`, killed if the test fails half-way
    let mut up = Processes(vec![
        Command::new(BIN)
            .args([
                "up",
                "--dir",
                d,
                "--cms",
                "2",
                "--port-base",
                "0",
                "--domain",
                "example.org",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ]);
    let endpoints = dir.path().join("endpoints.json");
    wait_for(&endpoints);
    let ep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&endpoints).unwrap()).unwrap();
    // clients know only the balancer
    let lb = ep["lb"]["quic"].as_str().unwrap().to_owned();
    let ca = ep["ca"].as_str().unwrap().to_owned();

    for user in ["alice@example.org", "bob@example.org"] {
        let out = run(&["adduser", user, "--password", "pw", "--dir", d]);
        assert!(out.status.success(), "{out:?}");
    }
    assert!(
        !run(&["adduser", "alice", "--password", "pw", "--dir", d])
            .status
            .success(),
        "duplicate refused"
    );

    let mut recv = Processes(vec![
        Command::new(BIN)
            .args([
                "recv",
                "--server",
                &lb,
                "--jid",
                "bob@example.org",
                "--password",
                "pw",
                "--ca",
                &ca,
                "--count",
                "1",
                "--timeout",
                "20",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ]);
    // wait until bob is routed
    let start = Instant::now();
    loop {
        let out = run(&["routes", "--dir", d]);
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("bob@example.org/") {
            assert!(text.contains("\"name\": \"cm-"));
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "bob never routed: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = run(&[
        "send",
        "--server",
        &lb,
        "--jid",
        "alice@example.org",
        "--password",
        "pw",
        "--ca",
        &ca,
        "--to",
        "bob@example.org",
        "--body",
        "hi bob",
    ]);
    assert!(out.status.success(), "{out:?}");
    let out = recv.0.remove(0).wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(line["body"], "hi bob");
    assert!(
        line["from"]
            .as_str()
            .unwrap()
            .starts_with("alice@example.org/")
    );

    // wrong password fails
    let out = run(&[
        "send",
        "--server",
        &lb,
        "--jid",
        "alice@example.org",
        "--password",
        "nope",
        "--ca",
        &ca,
        "--to",
        "bob@example.org",
        "--body",
        "x",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not-authorized"));

    // every CM serves /metrics at the address endpoints.json records: the
    // two logins and the refused one, over QUIC through the balancer
    let logins = |result: &str| -> f64 {
        let name = format!("longlink_cm_logins_total{{transport=\"quic\",result=\"{result}\"}}");
        ep["cms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|cm| {
                let admin = cm["admin"].as_str().expect("a CM admin address");
                let text = ureq::get(&format!("http://{admin}/metrics"))
                    .call()
                    .unwrap()
                    .body_mut()
                    .read_to_string()
                    .unwrap();
                support::metric_value(&text, &name).unwrap_or(0.0)
            })
            .sum()
    };
    assert_eq!((logins("ok"), logins("failed")), (2.0, 1.0));

    // draining a CM through the balancer's admin endpoint
    assert!(run(&["drain", "cm-1", "--dir", d]).status.success());
    assert!(
        run(&["drain", "cm-1", "--dir", d, "--undo"])
            .status
            .success()
    );
    assert!(!run(&["drain", "cm-9", "--dir", d]).status.success());

    // Ctrl-C stops everything cleanly
    let pid = up.0[0].id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let start = Instant::now();
    loop {
        if let Some(status) = up.0[0].try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    // with the core stopped, accounts are managed in the database directly
    assert!(
        run(&["passwd", "alice", "--password", "new", "--dir", d])
            .status
            .success()
    );
    assert!(run(&["deluser", "bob", "--dir", d]).status.success());
    assert!(!run(&["deluser", "bob", "--dir", d]).status.success());
}

#[test]
fn separate_processes_and_a_sigkilled_cm_leaves_the_balancer_within_two_seconds() {
    let mut dep = Deployment::start("example.org", 3, &["alice".to_owned()], "pw");
    let cms: Vec<usize> = (1..=3).map(|i| dep.spawn_cm(i)).collect();
    dep.wait_backends(&["cm-1", "cm-2", "cm-3"]);
    // SIGKILL cm-2: no goodbye, the balancer must notice by itself
    dep.kill(cms[1]);
    let killed = Instant::now();
    while backends(&dep.lb_admin, &dep.lb_token).contains(&"cm-2".to_owned()) {
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "cm-2 still in the table"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let gone_after = killed.elapsed();
    assert!(
        gone_after < Duration::from_millis(2500),
        "left after {gone_after:?}"
    );
    // new connections only reach live CMs: every login succeeds
    let ca = dep.ca();
    let lb = dep.lb().to_string();
    for i in 0..6 {
        let out = run(&[
            "send",
            "--server",
            &lb,
            "--jid",
            "alice@example.org",
            "--password",
            "pw",
            "--ca",
            ca.to_str().unwrap(),
            "--to",
            "alice@example.org",
            "--body",
            &format!("note {i}"),
        ]);
        assert!(
            out.status.success(),
            "login {i} through the balancer: {out:?}"
        );
    }
}

/// Client QUIC handshakes CM `i` of `dep` completed, from its `/metrics`.
fn handshakes_completed(dep: &Deployment, i: u32) -> f64 {
    let text = ureq::get(&format!("http://{}/metrics", dep.cm_admin[&i]))
        .call()
        .expect("CM metrics")
        .body_mut()
        .read_to_string()
        .expect("text");
    support::metric_value(&text, "longlink_cm_quic_handshakes_completed_total").unwrap_or(0.0)
}

#[test]
fn a_client_of_a_sigkilled_cm_is_reset_by_a_live_cm_long_before_its_idle_timeout() {
    let mut dep = Deployment::start("example.org", 2, &[], "pw");
    let cms: Vec<usize> = (1..=2).map(|i| dep.spawn_cm(i)).collect();
    dep.wait_backends(&["cm-1", "cm-2"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        // a bare QUIC client through the balancer (quinn's default idle
        // timeout: 30 s)
        let roots = certs::load_roots(&dep.ca()).expect("roots");
        let tls = certs::client_config(roots, &[b"xmpp-client"]).expect("tls");
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic");
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("endpoint");
        ep.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(quic)));
        let before = [1, 2].map(|i| handshakes_completed(&dep, i));
        let conn = ep
            .connect(dep.lb(), "example.org")
            .expect("connect")
            .await
            .expect("handshake");
        let deadline = Instant::now() + Duration::from_secs(10);
        let victim = loop {
            let now = [1, 2].map(|i| handshakes_completed(&dep, i));
            if let Some(i) = (0..2).find(|&i| now[i] > before[i]) {
                break i;
            }
            assert!(Instant::now() < deadline, "no CM completed the handshake");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let (mut stream, _) = conn.open_bi().await.expect("stream");
        // SIGKILL: no CONNECTION_CLOSE reaches the client
        dep.kill(cms[victim]);
        let died = Instant::now();
        // The client keeps sending. The balancer drops its packets while
        // the CM may come back (3 s), then sends them to the live CM, which
        // does not know the connection and answers with a stateless reset
        // (the CMs share its key).
        let reason = loop {
            if let Some(reason) = conn.close_reason() {
                break reason;
            }
            let _ = stream.write_all(b"<presence/>").await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let took = died.elapsed();
        println!("the client's connection ended {took:?} after its CM died: {reason}");
        assert!(
            matches!(reason, quinn::ConnectionError::Reset),
            "ended by a stateless reset, not {reason}"
        );
        assert!(took < Duration::from_secs(15), "reset {took:?} after");
    });
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn up_keeps_its_data_private_under_a_permissive_umask_and_logs_to_a_file_without_colour() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let log_path = dir.path().join("up.log");
    let log = std::fs::File::create(&log_path).unwrap();
    // a permissive umask, stderr to a file (not a terminal), colour not refused
    let mut up = Processes(vec![
        Command::new("sh")
            .args([
                "-c",
                "umask 022; exec \"$0\" up --dir \"$1\" --cms 1 --port-base 0 --domain example.org",
                BIN,
                d,
            ])
            .env_remove("NO_COLOR")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    ]);
    let endpoints = dir.path().join("endpoints.json");
    wait_for(&endpoints);
    let data = dir.path().join("data");
    // SQLite makes -wal and -shm when the core opens the database
    for name in ["longlink.db-wal", "longlink.db-shm"] {
        wait_for(&data.join(name));
    }
    assert_eq!(mode(&data), 0o700, "data directory");
    for name in [
        "longlink.db",
        "longlink.db-wal",
        "longlink.db-shm",
        "admin.token",
        "sm.key",
    ] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
    for entry in std::fs::read_dir(dir.path().join("pki")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "key") {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }
    // a CM's encapsulated address is not offered as a client address
    let ep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&endpoints).unwrap()).unwrap();
    let cm = &ep["cms"][0];
    assert!(cm["balancer_encap"].is_string(), "{ep}");
    assert!(cm.get("quic").is_none(), "{ep}");
    assert!(ep["lb"]["quic"].is_string(), "{ep}");

    let pid = up.0[0].id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let start = Instant::now();
    while up.0[0].try_wait().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(20), "did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    let logged = std::fs::read(&log_path).unwrap();
    let text = String::from_utf8_lossy(&logged);
    assert!(text.contains("core started"), "{text}");
    assert!(
        !logged.contains(&0x1b),
        "colour codes in a log file: {text:?}"
    );
}
