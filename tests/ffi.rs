//! The app bindings (client-sdk/ffi): Kotlin and Swift sources generate
//! from the built library with the interface's types, and the Python
//! binding of the same interface, loaded with that library, chats through
//! the balancer of a `longlink up` deployment (tests/ffi/smoke.py). Kotlin
//! and Swift cannot be compiled here (no Android or Apple toolchains); the
//! Python run is the executable check of the interface.
//!
//! The library is this package's dev-dependency, so the test build makes
//! its cdylib beside the test binary; the bindings come from UniFFI's
//! generator as a library, the same code `scripts/bindings.sh` runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::process::{BIN, Processes, run, wait_for};

/// The bindings library built with the tests (`liblonglink_ffi.so`).
fn cdylib() -> PathBuf {
    let name = format!(
        "{}longlink_ffi{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let exe = std::env::current_exe().expect("the test's path");
    // target/<profile>/deps/<test> : the library is in deps/ or above it
    let deps = exe.parent().expect("the deps directory");
    [deps.join(&name), deps.join("..").join(&name)]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} not built beside {}", deps.display()))
}

/// Generates the `language` sources of the bindings into `out`.
fn generate(language: uniffi::TargetLanguage, out: &Path) {
    let source = cdylib().to_str().expect("a UTF-8 path").to_owned();
    uniffi::generate(uniffi::GenerateOptions {
        languages: vec![language],
        source: source.into(),
        out_dir: out.to_str().expect("a UTF-8 path").to_owned().into(),
        config_override: None,
        // (no ktlint or swiftformat here)
        format: false,
        crate_filter: Some("longlink_ffi".into()),
        metadata_no_deps: true,
    })
    .unwrap_or_else(|e| panic!("generating into {}: {e:#}", out.display()));
}

/// The text of the one file in `dir` named with `suffix`.
fn source_ending(dir: &Path, suffix: &str) -> String {
    let mut found = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().is_some_and(|s| s.ends_with(suffix)))
        .collect::<Vec<_>>();
    assert_eq!(
        found.len(),
        1,
        "one {suffix} in {}: {found:?}",
        dir.display()
    );
    std::fs::read_to_string(found.remove(0)).unwrap()
}

#[test]
fn kotlin_and_swift_sources_generate_with_the_client_its_events_and_push() {
    let out = tempfile::tempdir().unwrap();
    let kotlin = out.path().join("kotlin");
    generate(uniffi::TargetLanguage::Kotlin, &kotlin);
    let kt = source_ending(&kotlin.join("uniffi/longlink_ffi"), ".kt");
    for wanted in [
        "open class Client",
        "suspend fun `connect`(`options`: ConnectOptions) : Client",
        "override suspend fun `sendMessage`(`to`: kotlin.String, `body`: kotlin.String) : kotlin.String",
        "override suspend fun `nextEvent`() : Event?",
        "override fun `setEventListener`(`listener`: EventListener)",
        "override fun `drainEvents`(): List<Event>",
        "override fun `usedSasl2`(): kotlin.Boolean",
        "override fun `networkChanged`()",
        "override suspend fun `setActive`(`active`: kotlin.Boolean)",
        "override suspend fun `enablePush`(",
        "override suspend fun `history`(`query`: HistoryQuery) : HistoryPage",
        "override suspend fun `roster`() : List<RosterItem>",
        "public interface EventListener",
        "sealed class Event",
        "sealed class MessageState",
        "sealed class LonglinkException",
    ] {
        assert!(kt.contains(wanted), "Kotlin lacks {wanted:?}");
    }

    let swift = out.path().join("swift");
    generate(uniffi::TargetLanguage::Swift, &swift);
    let sw = source_ending(&swift, ".swift");
    for wanted in [
        "open class Client",
        "public static func connect(options: ConnectOptions)async throws  -> Client",
        "func sendMessage(to: String, body: String)async throws  -> String",
        "func nextEvent()async throws  -> Event?",
        "func drainEvents()throws  -> [Event]",
        "func networkChanged()throws",
        "func setActive(active: Bool)async throws",
        "func enablePush(",
        "public protocol EventListener",
        "public enum Event",
        "public enum MessageState",
        "enum LonglinkError: Swift.Error",
    ] {
        assert!(sw.contains(wanted), "Swift lacks {wanted:?}");
    }
    // the C header and module map an Xcode target imports
    assert!(source_ending(&swift, ".h").contains("uniffi_longlink_ffi_fn_"));
    assert!(!source_ending(&swift, ".modulemap").is_empty());
}

/// `python3`, if it runs.
fn python() -> Option<&'static str> {
    let ok = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some("python3")
}

#[test]
fn the_python_binding_chats_through_the_balancer_of_longlink_up() {
    let Some(python) = python() else {
        println!("skipped: no python3 to run the Python binding with");
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let bindings = out.path().join("python");
    generate(uniffi::TargetLanguage::Python, &bindings);
    // the module loads the library from its own directory
    let lib = cdylib();
    std::fs::copy(&lib, bindings.join(lib.file_name().unwrap())).unwrap();

    let dir = out.path().join("up");
    let d = dir.to_str().unwrap();
    let _up = Processes(vec![
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
            .stderr(support::process::stderr_for(&dir, "up"))
            .spawn()
            .unwrap(),
    ]);
    let endpoints = dir.join("endpoints.json");
    wait_for(&endpoints);
    let ep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&endpoints).unwrap()).unwrap();
    // apps know only the balancer
    let lb = ep["lb"]["quic"].as_str().unwrap().to_owned();
    let ca = ep["ca"].as_str().unwrap().to_owned();
    for user in ["alice@example.org", "bob@example.org"] {
        let added = run(&["adduser", user, "--password", "pw", "--dir", d]);
        assert!(added.status.success(), "{added:?}");
    }

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ffi/smoke.py");
    let mut smoke = Processes(vec![
        Command::new(python)
            .arg(&script)
            .args([bindings.to_str().unwrap(), &lb, &ca, "example.org", "pw"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ]);
    // (the script gives itself 90 s; this is the backstop)
    let start = Instant::now();
    while smoke.0[0].try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(150),
            "the Python smoke test did not end"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let done = smoke.0.remove(0).wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&done.stdout);
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(
        done.status.success(),
        "smoke.py failed ({}):\n{stdout}\n{stderr}",
        done.status
    );
    assert!(
        stdout.lines().any(|l| l == "ffi smoke: ok"),
        "{stdout}\n{stderr}"
    );
    println!("{stdout}");
}
