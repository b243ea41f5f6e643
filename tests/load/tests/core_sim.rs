//! `core-sim` end to end at a small size: a real core process on the
//! fixture store, simulated CMs over real QUIC links. Checks the tool, not
//! the figures: every session held, every timed message delivered, no
//! session ended by the core, the rebuild after a SIGKILL measured.

use std::process::Command;
use std::time::Duration;

#[test]
fn core_sim_holds_every_session_delivers_every_message_and_rebuilds_after_a_kill() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_core-sim"))
        .args([
            "run",
            "--steps",
            "1000,2000",
            "--contacts",
            "10",
            "--nodes",
            "2",
            "--secs",
            "2",
            "--messages",
            "200",
            "--presences",
            "20",
            "--reconnects",
            "20",
            "--mix-scales",
            "100",
            "--dir",
        ])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("core-sim starts");
    // Bounded: the run takes about 15 s; kill it past 5 minutes.
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("core-sim did not finish within 5 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut out)
        .expect("read");
    assert!(status.success(), "core-sim failed: {status}\n{out}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let step = |name: &str| {
        lines
            .iter()
            .find(|l| l["step"] == name)
            .unwrap_or_else(|| panic!("no {name} step in\n{out}"))
    };
    let held: Vec<u64> = lines
        .iter()
        .filter(|l| l["step"] == "hold")
        .filter_map(|l| l["sessions"].as_u64())
        .collect();
    assert_eq!(held, vec![1000, 2000]);
    assert!(
        step("hold")["bytes_per_session"]
            .as_f64()
            .is_some_and(|b| b > 0.0)
    );
    let messages = step("alone:messages");
    assert_eq!(messages["sent"][0], 400);
    assert_eq!(
        messages["timed_delivered"], 400,
        "every message delivered once"
    );
    for name in [
        "alone:messages",
        "alone:presences",
        "alone:reconnects",
        "mix x100",
    ] {
        assert_eq!(step(name)["kicks"], 0, "{name}: the core ended no session");
    }
    // 20 presences a second for 2 s, each to the sender's 10 contacts
    assert!(
        step("alone:presences")["delivered"]
            .as_u64()
            .is_some_and(|d| d >= 400 - 10)
    );
    assert_eq!(step("rebuild")["sessions"], 2000);
}
