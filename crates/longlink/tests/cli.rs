//! The `longlink` command as users run it: real processes on loopback.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_longlink");

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("longlink runs")
}

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

/// Kills the deployment if the test fails half-way.
struct Deployment(Child);

impl Drop for Deployment {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn up_adduser_send_recv_routes_and_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut up = Deployment(
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
    );
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

    let recv = Command::new(BIN)
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
        .unwrap();
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
    let out = recv.wait_with_output().unwrap();
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

    // draining a CM through the balancer's admin endpoint
    assert!(run(&["drain", "cm-1", "--dir", d]).status.success());
    assert!(
        run(&["drain", "cm-1", "--dir", d, "--undo"])
            .status
            .success()
    );
    assert!(!run(&["drain", "cm-9", "--dir", d]).status.success());

    // Ctrl-C stops everything cleanly
    let pid = up.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let start = Instant::now();
    loop {
        if let Some(status) = up.0.try_wait().unwrap() {
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

/// A free UDP or TCP port on loopback (bound and released).
fn free_port(tcp: bool) -> u16 {
    if tcp {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

/// Child processes killed when the test ends, however it ends.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn backends(admin: &str) -> Vec<String> {
    ureq::get(&format!("http://{admin}/backends"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_json::<serde_json::Value>().ok())
        .and_then(|v| {
            v.as_array().map(|a| {
                a.iter()
                    .filter_map(|b| b["name"].as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default()
}

#[test]
fn separate_processes_and_a_sigkilled_cm_leaves_the_balancer_within_two_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = d.join("pki");
    assert!(
        run(&[
            "certs",
            "init",
            "--dir",
            pki.to_str().unwrap(),
            "--domain",
            "example.org",
            "--cm",
            "3"
        ])
        .status
        .success()
    );
    // accounts while the core is stopped: straight into its database
    assert!(
        run(&[
            "adduser",
            "alice",
            "--password",
            "pw",
            "--dir",
            d.to_str().unwrap()
        ])
        .status
        .success()
    );
    let core = format!("127.0.0.1:{}", free_port(false));
    let core_admin = format!("127.0.0.1:{}", free_port(true));
    let (lb_pub, lb_back, lb_ctl) = (free_port(false), free_port(false), free_port(false));
    let lb_admin = format!("127.0.0.1:{}", free_port(true));
    let write = |name: &str, text: String| {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let core_toml = write(
        "core.toml",
        format!(
            "domain = \"example.org\"\nlisten = \"{core}\"\nadmin_listen = \"{core_admin}\"\ndata_dir = \"{}\"\npki_dir = \"{}\"\n",
            d.join("data").display(),
            pki.display()
        ),
    );
    let lb_toml = write(
        "lb.toml",
        format!(
            "listen = [\"127.0.0.1:{lb_pub}\"]\nbackend_listen = \"127.0.0.1:{lb_back}\"\ncontrol_listen = \"127.0.0.1:{lb_ctl}\"\nadmin_listen = \"{lb_admin}\"\npki_dir = \"{}\"\n",
            pki.display()
        ),
    );
    let spawn = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut procs = Processes(vec![
        spawn(&["core", "--config", &core_toml]),
        spawn(&["lb", "--config", &lb_toml]),
    ]);
    for i in 1..=3 {
        let cm_toml = write(
            &format!("cm-{i}.toml"),
            format!(
                "node = \"cm-{i}\"\ndomain = \"example.org\"\nlisten = \"127.0.0.1:{}\"\ncore = \"{core}\"\npki_dir = \"{}\"\n\n[balancer]\ncontrol = \"127.0.0.1:{lb_ctl}\"\nencap = \"127.0.0.1:{lb_back}\"\n",
                free_port(false),
                pki.display()
            ),
        );
        procs.0.push(spawn(&["cm", "--config", &cm_toml]));
    }
    let start = Instant::now();
    while backends(&lb_admin).len() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "CMs never all joined: {:?}",
            backends(&lb_admin)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // SIGKILL cm-2: no goodbye, the balancer must notice by itself
    procs.0[3].kill().unwrap();
    let killed = Instant::now();
    while backends(&lb_admin).contains(&"cm-2".to_owned()) {
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
    let ca = pki.join("ca.pem");
    for i in 0..6 {
        let out = run(&[
            "send",
            "--server",
            &format!("127.0.0.1:{lb_pub}"),
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
