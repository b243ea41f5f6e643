//! Clients nobody here wrote: slixmpp (Python, from PyPI) logs in over TCP
//! with STARTTLS and with direct TLS, with SCRAM-SHA-256 and PLAIN, and
//! talks to a `client-sdk` user on QUIC; slixmpp's `ComponentXMPP` is a
//! push app server (XEP-0114, XEP-0357) for an SDK user. Plus certificate
//! validation on the TLS listener; and @xmpp/client (xmpp.js, from npm)
//! logs in over WebSocket with SASL2 and Bind2 and resumes inline.
//!
//! The test installs slixmpp into `target/interop-venv` on first use
//! (`python3 -m venv`, `pip install slixmpp==1.17.0`), and @xmpp/client into
//! `target/interop-node` (`npm ci` of `tests/interop/node`'s lockfile).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use client_sdk::Event;
mod support;
use support::{Cluster, DOMAIN, bounded};

const SLIXMPP: &str = "slixmpp==1.17.0";

/// The venv's python with slixmpp, created on first use.
fn slixmpp_python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let venv = target.join("interop-venv");
    let python = venv.join("bin/python");
    let have = std::process::Command::new(&python)
        .args(["-c", "import slixmpp"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        let made = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 runs");
        assert!(made.success(), "python3 -m venv");
        let pip = std::process::Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", SLIXMPP])
            .status()
            .expect("pip runs");
        assert!(pip.success(), "pip install {SLIXMPP}");
    }
    python
}

async fn tcp_cluster() -> Cluster {
    let mut cluster = Cluster::start(0).await;
    cluster
        .add_cm_with(|c| {
            c.tcp_listen = Some("127.0.0.1:0".parse().unwrap());
            c.tls_listen = Some("127.0.0.1:0".parse().unwrap());
            c.ws_listen = Some("127.0.0.1:0".parse().unwrap());
        })
        .await;
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slixmpp_talks_to_a_quic_user_over_starttls_and_direct_tls_with_each_mechanism() {
    bounded(300, async {
        let python = tokio::task::spawn_blocking(slixmpp_python).await.unwrap();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/slix_client.py");
        let cluster = tcp_cluster().await;
        cluster.add_user("slix", "secret");
        cluster.add_user("bob", "secret");
        let mut bob = cluster.login(0, "bob", "phone").await;
        let cm = cluster.cm(0);
        let cases = [
            ("starttls", "SCRAM-SHA-256", cm.tcp_addr.unwrap()),
            ("starttls", "PLAIN", cm.tcp_addr.unwrap()),
            ("tls", "SCRAM-SHA-256", cm.tls_addr.unwrap()),
            ("tls", "PLAIN", cm.tls_addr.unwrap()),
        ];
        for (mode, mechanism, addr) in cases {
            let child = tokio::process::Command::new(&python)
                .arg(&script)
                .args([
                    "127.0.0.1",
                    &addr.port().to_string(),
                    mode,
                    &format!("slix@{DOMAIN}/{mode}-{mechanism}"),
                    "secret",
                    mechanism,
                    cluster.ca().to_str().unwrap(),
                    bob.jid(),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("python runs");
            // bob (QUIC) gets slixmpp's message and answers it
            let m = bob.next_message(Duration::from_secs(30)).await.unwrap();
            assert_eq!(
                m.body.as_deref(),
                Some("hello from slixmpp"),
                "{mode} {mechanism}"
            );
            assert!(m.from.starts_with(&format!("slix@{DOMAIN}/")), "{}", m.from);
            bob.send_message(&m.from, &format!("hello back over {mode}"))
                .await
                .unwrap();
            let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
                .await
                .expect("slixmpp finishes")
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let report: serde_json::Value =
                serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
                    panic!(
                        "{mode} {mechanism}: no report ({e}): {stdout}\n{}",
                        String::from_utf8_lossy(&out.stderr)
                    )
                });
            assert!(out.status.success(), "{mode} {mechanism}: {report}");
            assert_eq!(report["ping"], "ok");
            assert_eq!(report["unsupported_iq"], "service-unavailable");
            assert_eq!(report["answer"], format!("hello back over {mode}"));
            assert_eq!(report["disconnected"], "clean");
        }
        // every slixmpp session ended cleanly: only bob is left
        cluster.wait_routes(1).await;
        while let Ok(Some(ev)) =
            tokio::time::timeout(Duration::from_millis(200), bob.next_event()).await
        {
            assert!(
                !matches!(ev, Event::StreamError(_) | Event::Disconnected),
                "{ev:?}"
            );
        }
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slixmpp_clients_chat_in_a_room_with_history_occupants_and_self_ping_over_starttls() {
    bounded(300, async {
        let python = tokio::task::spawn_blocking(slixmpp_python).await.unwrap();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/slix_muc.py");
        let cluster = tcp_cluster().await;
        cluster.add_user("anna", "secret");
        cluster.add_user("ben", "secret");
        let port = cluster.cm(0).tcp_addr.unwrap().port().to_string();
        let room = format!("lounge@conference.{DOMAIN}");
        let child = tokio::process::Command::new(&python)
            .arg(&script)
            .args([
                "127.0.0.1",
                &port,
                DOMAIN,
                cluster.ca().to_str().unwrap(),
                &room,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python runs");
        let out = tokio::time::timeout(Duration::from_secs(150), child.wait_with_output())
            .await
            .expect("slixmpp finishes")
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "no report ({e}): {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert!(out.status.success(), "{report}");
        assert_eq!(report["anna_affiliation"], "owner", "{report}");
        assert_eq!(
            report["anna_reflections"],
            serde_json::json!(["m0", "m1", "m2"])
        );
        assert_eq!(report["ben_history"], serde_json::json!(["m0", "m1", "m2"]));
        assert_eq!(report["ben_sees"], serde_json::json!(["anna", "ben"]));
        // (the occupants slixmpp saw before its own presence: anna's first)
        let on_join = report["ben_occupants_on_join"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(on_join.contains(&serde_json::json!("anna")), "{report}");
        assert_eq!(report["anna_sees"], serde_json::json!(["anna", "ben"]));
        assert_eq!(report["self_ping"], "ok");
        assert_eq!(report["anna_heard_ben"], true);
        assert_eq!(report["disconnected"], "clean");
        // both left and ended: the temporary room is gone with them
        cluster.wait_routes(0).await;
        cluster.shutdown().await;
    })
    .await;
}

/// The child's standard error, read as it comes (so its logging never
/// blocks on a full pipe) into a string a failing test prints.
fn collect_stderr(child: &mut tokio::process::Child) -> Arc<std::sync::Mutex<String>> {
    use tokio::io::AsyncReadExt;
    let stderr = Arc::new(std::sync::Mutex::new(String::new()));
    let Some(mut pipe) = child.stderr.take() else {
        return stderr;
    };
    let collected = stderr.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if let Ok(mut text) = collected.lock() {
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    });
    stderr
}

/// slixmpp's `ComponentXMPP` as a push app server, a child process
/// (`tests/interop/slix_push_component.py`): the JSON lines it prints, one
/// an event; it serves until its stdin closes.
struct SlixAppServer {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    stderr: Arc<std::sync::Mutex<String>>,
}

impl SlixAppServer {
    /// Starts it, connecting to the core's component listener `addr` as
    /// `name` with `secret`.
    fn start(
        python: &std::path::Path,
        addr: std::net::SocketAddr,
        name: &str,
        secret: &str,
    ) -> Self {
        use tokio::io::AsyncBufReadExt;
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/slix_push_component.py");
        let mut child = tokio::process::Command::new(python)
            .arg(&script)
            .args([
                &addr.ip().to_string(),
                &addr.port().to_string(),
                name,
                secret,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python runs");
        let lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr = collect_stderr(&mut child);
        SlixAppServer {
            child,
            lines,
            stderr,
        }
    }

    /// The next event, or none within `within` (or after stdout closed).
    async fn event(&mut self, within: Duration) -> Option<serde_json::Value> {
        let line = tokio::time::timeout(within, self.lines.next_line())
            .await
            .ok()?;
        let line = line.expect("reads the app server's stdout")?;
        Some(
            serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\n{}", self.stderr())),
        )
    }

    /// What it wrote to stderr so far.
    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Closes its stdin and waits for it to end: the events it printed
    /// meanwhile, and whether it exited 0.
    async fn finish(mut self) -> (Vec<serde_json::Value>, bool) {
        drop(self.child.stdin.take());
        let mut rest = Vec::new();
        while let Some(ev) = self.event(Duration::from_secs(30)).await {
            rest.push(ev);
        }
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the app server exits")
            .unwrap();
        (rest, status.success())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slixmpp_push_component_gets_one_summary_per_burst_for_an_sdk_registration_and_none_after_disable()
 {
    use client_sdk::push::PushError;
    use serde_json::json;
    bounded(180, async {
        let python = tokio::task::spawn_blocking(slixmpp_python).await.unwrap();
        let name = format!("push.{DOMAIN}");
        let secret = "a-secret-of-at-least-16-bytes";
        let configured = name.clone();
        // (defaults: neither the sender nor the body go to the app server)
        let configure: support::cluster::Configure = Arc::new(move |c| {
            c.components = vec![im_core::components::ComponentConfig::new(
                &configured,
                secret,
            )];
            c.component_listen = Some("127.0.0.1:0".parse().unwrap());
        });
        let cluster = Cluster::start_configured(1, configure).await;
        let addr = cluster
            .core
            .as_ref()
            .and_then(|c| c.component_addr)
            .expect("a component listener");
        cluster.add_user("alice", "secret");
        cluster.add_user("bob", "secret");
        let bob_jid = support::jid("bob");

        // slixmpp's component completes the XEP-0114 handshake
        let mut app = SlixAppServer::start(&python, addr, &name, secret);
        let connected = app.event(Duration::from_secs(60)).await;
        assert_eq!(
            connected.as_ref().map(|e| &e["event"]),
            Some(&json!("connected")),
            "{connected:?}\n{}",
            app.stderr()
        );

        // bob's SDK registers his phone at it; an app server the core
        // cannot reach is refused as such
        let bob = cluster.login(0, "bob", "phone").await;
        assert!(bob.push_supported().await.unwrap(), "push is offered");
        let options = [
            ("secret", "s3cret"),
            ("endpoint", "https://push.example/d/1"),
        ];
        bob.enable_push(&name, "phone-1", &options)
            .await
            .expect("push enabled");
        let elsewhere = bob.enable_push("push.elsewhere.example", "x", &[]).await;
        assert_eq!(
            elsewhere,
            Err(PushError::AppServerUnreachable(
                "push.elsewhere.example".into()
            ))
        );

        // bob goes offline; a burst of three from alice is one publish
        bob.disconnect().await;
        cluster.wait_routes(0).await;
        let alice = cluster.login(0, "alice", "pc").await;
        for i in 0..3 {
            alice
                .send_message(&bob_jid, &format!("m{i}"))
                .await
                .unwrap();
        }
        let publish = app
            .event(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("no publish\n{}", app.stderr()));
        assert_eq!(publish["event"], "publish", "{publish}");
        assert_eq!(publish["problems"], json!([]), "{publish}");
        assert_eq!(publish["answered"], "result");
        assert_eq!(publish["from"], json!(bob_jid));
        assert_eq!(publish["to"], json!(name));
        assert_eq!(publish["node"], "phone-1");
        // the count only: no sender, no body (neither configured)
        assert_eq!(
            publish["summary"],
            json!({"message-count": "3"}),
            "{publish}"
        );
        assert_eq!(
            publish["publish_options"],
            json!({"secret": "s3cret", "endpoint": "https://push.example/d/1"})
        );
        let more = app.event(Duration::from_secs(4)).await;
        assert!(more.is_none(), "one publish per burst: {more:?}");

        // the component's result was taken: the next message goes out at
        // once (a publish still in flight would hold it for 30 s), counting
        // everything since bob was last online
        alice.send_message(&bob_jid, "m3").await.unwrap();
        let publish = app
            .event(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("no second publish\n{}", app.stderr()));
        assert_eq!(publish["problems"], json!([]), "{publish}");
        assert_eq!(
            publish["summary"],
            json!({"message-count": "4"}),
            "{publish}"
        );

        // bob disables it: nothing more
        let bob = cluster.login(0, "bob", "phone").await;
        bob.disable_push(&name, Some("phone-1"))
            .await
            .expect("push disabled");
        bob.disconnect().await;
        cluster.wait_routes(1).await;
        alice
            .send_message(&bob_jid, "nobody is woken")
            .await
            .unwrap();
        let after = app.event(Duration::from_secs(4)).await;
        assert!(after.is_none(), "a publish after disable: {after:?}");

        let stderr = app.stderr();
        let (rest, ok) = app.finish().await;
        assert_eq!(rest, [json!({"event": "disconnected"})], "{stderr}");
        assert!(ok, "{stderr}");
        cluster.shutdown().await;
    })
    .await;
}

/// A TLS handshake with the direct-TLS listener trusting `roots`.
async fn handshake(
    addr: std::net::SocketAddr,
    roots: rustls::RootCertStore,
) -> std::io::Result<()> {
    let config = certs::client_config(roots, &[b"xmpp-client"]).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(DOMAIN.to_owned()).unwrap();
    connector.connect(name, tcp).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listeners_present_a_certificate_only_the_cluster_ca_vouches_for() {
    bounded(300, async {
        let cluster = tcp_cluster().await;
        let addr = cluster.cm(0).tls_addr.unwrap();
        let ca = certs::load_roots(&cluster.ca()).unwrap();
        handshake(addr, ca).await.expect("trusting the cluster CA");
        let refused = handshake(addr, rustls::RootCertStore::empty()).await;
        let err = refused.expect_err("a client trusting nothing refuses the server");
        assert!(
            err.to_string().to_lowercase().contains("certificate"),
            "{err}"
        );
        // STARTTLS: nothing but <starttls/> before TLS, no mechanisms in the clear
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(cluster.cm(0).tcp_addr.unwrap())
            .await
            .unwrap();
        tcp.write_all(format!("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='{DOMAIN}' version='1.0'>").as_bytes()).await.unwrap();
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("</stream:features>") {
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0);
            seen.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&seen).into_owned();
        assert!(text.contains("<required/></starttls>"), "{text}");
        assert!(!text.contains("mechanisms"), "{text}");
        tcp.write_all(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AHNsaXgAc2VjcmV0</auth>").await.unwrap();
        let mut rest = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut rest)).await;
        assert!(rest.contains("policy-violation"), "{rest}");
        cluster.shutdown().await;
    })
    .await;
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Opens `wss://` to the CM's WebSocket listener offering `subprotocol`.
async fn websocket(cluster: &Cluster, subprotocol: Option<&str>) -> Result<Ws, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let addr = cluster.cm(0).ws_addr.unwrap();
    let roots = certs::load_roots(&cluster.ca()).unwrap();
    let config = certs::client_config(roots, &[b"http/1.1"]).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(DOMAIN.to_owned()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut request = format!("wss://{DOMAIN}:{}/xmpp-websocket", addr.port())
        .into_client_request()
        .unwrap();
    if let Some(p) = subprotocol {
        request
            .headers_mut()
            .insert("sec-websocket-protocol", p.parse().unwrap());
    }
    let (ws, response) = tokio_tungstenite::client_async(request, tls)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("xmpp")
    );
    Ok(ws)
}

/// Sends one element as one text message.
async fn ws_send(ws: &mut Ws, xml: &str) {
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::text(xml))
        .await
        .unwrap();
}

/// The next text message, which must be one complete, namespace-declared element.
async fn ws_next(ws: &mut Ws) -> xmpp_stream::element::Element {
    use futures_util::StreamExt;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            return xmpp_stream::element::Element::parse(t.as_bytes(), "")
                .unwrap_or_else(|e| panic!("a standalone element: {e}: {t}"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_talks_to_a_quic_user() {
    use base64::Engine;
    bounded(300, async {
        let cluster = tcp_cluster().await;
        cluster.add_user("web", "secret");
        cluster.add_user("bob", "secret");
        let mut bob = cluster.login(0, "bob", "phone").await;
        // without the xmpp subprotocol the upgrade is refused
        let refused = websocket(&cluster, None).await;
        assert!(refused.is_err_and(|e| e.contains("400")));
        let mut ws = websocket(&cluster, Some("xmpp")).await.unwrap();
        let open = format!("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='{DOMAIN}' version='1.0'/>");
        ws_send(&mut ws, &open).await;
        let header = ws_next(&mut ws).await;
        assert_eq!((header.name.as_str(), header.ns.as_str()), ("open", "urn:ietf:params:xml:ns:xmpp-framing"));
        assert_eq!(header.attr("from"), Some(DOMAIN));
        let features = ws_next(&mut ws).await;
        assert_eq!(features.name, "features");
        let auth = base64::engine::general_purpose::STANDARD.encode(b"\0web\0secret");
        ws_send(
            &mut ws,
            &format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{auth}</auth>"),
        )
        .await;
        assert_eq!(ws_next(&mut ws).await.name, "success");
        ws_send(&mut ws, &open).await;
        assert_eq!(ws_next(&mut ws).await.name, "open");
        let features = ws_next(&mut ws).await;
        assert!(features.child("bind", "urn:ietf:params:xml:ns:xmpp-bind").is_some());
        ws_send(&mut ws, "<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>browser</resource></bind></iq>").await;
        let bound = ws_next(&mut ws).await;
        assert_eq!((bound.name.as_str(), bound.ns.as_str(), bound.attr("type")), ("iq", "jabber:client", Some("result")));
        ws_send(&mut ws, "<presence xmlns='jabber:client'/>").await;
        ws_send(
            &mut ws,
            &format!("<message xmlns='jabber:client' to='{}' type='chat' id='w1'><body>from the browser</body></message>", bob.jid()),
        )
        .await;
        let m = bob.next_message(Duration::from_secs(10)).await.unwrap();
        assert_eq!(m.body.as_deref(), Some("from the browser"));
        assert_eq!(m.from, format!("web@{DOMAIN}/browser"));
        bob.send_message(&m.from, "from a phone").await.unwrap();
        let reply = loop {
            let el = ws_next(&mut ws).await;
            if el.name == "message" {
                break el;
            }
        };
        assert_eq!(reply.ns, "jabber:client");
        assert_eq!(reply.child("body", "jabber:client").map(|b| b.text()).as_deref(), Some("from a phone"));
        ws_send(&mut ws, "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>").await;
        let close = ws_next(&mut ws).await;
        assert_eq!((close.name.as_str(), close.ns.as_str()), ("close", "urn:ietf:params:xml:ns:xmpp-framing"));
        cluster.wait_routes(1).await;
        cluster.shutdown().await;
    })
    .await;
}

/// How long `npm ci` may take before the test gives up on it.
const NPM_DEADLINE: Duration = Duration::from_secs(300);

/// `node` and the arguments that give it a global WebSocket where a flag
/// can, with @xmpp/client installed into `target/interop-node` on first
/// use from the committed lockfile (`tests/interop/node`: every package
/// pinned with its integrity hash; `npm ci --ignore-scripts`); `None` (the
/// test skips) if there is no `node` and `LONGLINK_REQUIRE_NODE` is unset.
fn xmppjs_node() -> Option<(PathBuf, Vec<&'static str>)> {
    use std::process::Command;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let dir = target.join("interop-node");
    if Command::new("node").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("LONGLINK_REQUIRE_NODE").is_none(),
            "LONGLINK_REQUIRE_NODE is set but there is no node"
        );
        println!("skipped: no node (Node.js) to run @xmpp/client with");
        return None;
    }
    let manifest = root.join("tests/interop/node");
    let lock = std::fs::read(manifest.join("package-lock.json")).expect("the committed lockfile");
    let installed = std::fs::read(dir.join("package-lock.json")).is_ok_and(|l| l == lock)
        && dir.join("node_modules/@xmpp/client/package.json").exists();
    if !installed {
        std::fs::create_dir_all(&dir).unwrap();
        for file in ["package.json", "package-lock.json"] {
            std::fs::copy(manifest.join(file), dir.join(file)).expect("copies the manifest");
        }
        let mut npm = Command::new("npm")
            .args([
                "ci",
                "--ignore-scripts",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
            ])
            .current_dir(&dir)
            .spawn()
            .expect("npm runs");
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(status) = npm.try_wait().expect("npm waited for") {
                break status;
            }
            if start.elapsed() > NPM_DEADLINE {
                let _ = npm.kill();
                let _ = npm.wait();
                panic!("npm ci took more than {NPM_DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(status.success(), "npm ci in {}", dir.display());
    }
    // (ES modules resolve packages from the script's own directory)
    let script = root.join("tests/interop/xmppjs_client.mjs");
    std::fs::copy(&script, dir.join("xmppjs_client.mjs")).expect("copies the script");
    let has_websocket = |flags: &[&str]| {
        Command::new("node")
            .args(flags)
            .args([
                "-e",
                "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
            ])
            .status()
            .is_ok_and(|s| s.success())
    };
    let flags = if !has_websocket(&[]) && has_websocket(&["--experimental-websocket"]) {
        vec!["--experimental-websocket"]
    } else {
        vec![]
    };
    Some((dir, flags))
}

/// The xmpp.js script as a child process: its JSON lines, one an event;
/// it takes commands on stdin.
struct XmppJs {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    stderr: Arc<std::sync::Mutex<String>>,
    seen: Vec<serde_json::Value>,
}

impl XmppJs {
    /// The next event; panics with everything seen so far if none comes
    /// within 30 s.
    async fn next(&mut self) -> serde_json::Value {
        let line = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line()).await;
        let Ok(Ok(Some(line))) = line else {
            panic!(
                "no event from xmpp.js ({line:?}) after {:#?}\n{}",
                self.seen,
                self.stderr()
            );
        };
        self.record(&line)
    }

    /// Parses and keeps one line; an error of any kind fails the test.
    fn record(&mut self, line: &str) -> serde_json::Value {
        let ev: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\n{}", self.stderr()));
        assert!(
            !matches!(
                ev["event"].as_str(),
                Some("error" | "client-error" | "stream-error" | "sasl-failure")
            ),
            "{ev} after {:#?}\n{}",
            self.seen,
            self.stderr()
        );
        self.seen.push(ev.clone());
        ev
    }

    /// The events up to and with the first `name`.
    async fn until(&mut self, name: &str) -> Vec<serde_json::Value> {
        let mut events = Vec::new();
        loop {
            let ev = self.next().await;
            events.push(ev.clone());
            if ev["event"] == name {
                return events;
            }
        }
    }

    /// Every event within `within`.
    async fn quiet(&mut self, within: Duration) -> Vec<serde_json::Value> {
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        while let Ok(Ok(Some(line))) =
            tokio::time::timeout_at(deadline, self.lines.next_line()).await
        {
            events.push(self.record(&line));
        }
        events
    }

    /// Writes one command line to its stdin.
    async fn command(&mut self, line: &str) {
        use tokio::io::AsyncWriteExt as _;
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("xmpp.js reads its stdin");
    }

    /// What it wrote to stderr so far.
    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

/// The only event named `name` in `events`.
fn only<'a>(events: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    let found: Vec<_> = events.iter().filter(|e| e["event"] == name).collect();
    assert_eq!(found.len(), 1, "one {name} in {events:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xmppjs_over_websocket_logs_in_with_sasl2_bind2_gets_a_fast_token_talks_to_a_quic_user_resumes_inline_with_the_token_and_logs_in_again_with_it()
 {
    use serde_json::json;
    bounded(240, async {
        let Some((dir, flags)) = tokio::task::spawn_blocking(xmppjs_node).await.unwrap() else {
            return;
        };
        let cluster = tcp_cluster().await;
        cluster.add_user("webjs", "secret");
        cluster.add_user("bob", "secret");
        let mut bob = cluster.login(0, "bob", "phone").await;
        let port = cluster.cm(0).ws_addr.unwrap().port();
        let mut child = tokio::process::Command::new("node")
            .args(&flags)
            .arg(dir.join("xmppjs_client.mjs"))
            .args([
                &format!("wss://127.0.0.1:{port}/xmpp-websocket"),
                DOMAIN,
                "webjs",
                "secret",
                "xmppjs",
                bob.jid(),
            ])
            .env("NODE_EXTRA_CA_CERTS", cluster.ca())
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let stderr = collect_stderr(&mut child);
        let mut js = XmppJs {
            stdin: child.stdin.take().unwrap(),
            lines: tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
                child.stdout.take().unwrap(),
            )),
            child,
            stderr,
            seen: Vec::new(),
        };

        // 1. SASL2 with Bind2: what longlink offered, what xmpp.js chose
        let login = js.until("online").await;
        let features = &login[0];
        assert_eq!(features["event"], "features", "{login:#?}");
        assert_eq!(features["sasl2"], true, "{features}");
        let mechanisms = features["sasl2_mechanisms"].as_array().unwrap();
        assert!(mechanisms.contains(&json!("SCRAM-SHA-1")), "{features}");
        let inline = features["inline"].as_array().unwrap();
        assert!(
            inline.contains(&json!("urn:xmpp:bind:0 bind")),
            "{features}"
        );
        assert!(inline.contains(&json!("urn:xmpp:sm:3 sm")), "{features}");
        assert!(
            features["bind2_features"]
                .as_array()
                .unwrap()
                .contains(&json!("urn:xmpp:sm:3")),
            "{features}"
        );
        // FAST (XEP-0484) is offered: xmpp.js has no token yet, so it
        // uses its password and asks for one
        assert_eq!(features["fast_offered"], true, "{features}");
        let auth = only(&login, "authenticate");
        assert_eq!(auth["mechanism"], "SCRAM-SHA-1", "{auth}");
        assert_eq!(auth["bind_tag"], "xmppjs", "{auth}");
        assert_eq!(auth["bind_enables"], json!(["urn:xmpp:sm:3"]), "{auth}");
        assert_eq!(auth["resume"], json!(null), "{auth}");
        assert_eq!(
            (&auth["fast"], &auth["request_token"]),
            (&json!(false), &json!(true))
        );
        let user_agent = auth["user_agent"]
            .as_str()
            .expect("a user-agent id")
            .to_owned();
        let success = only(&login, "success");
        let full = success["authorization_identifier"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            full.starts_with(&format!("webjs@{DOMAIN}/xmppjs/")),
            "{success}"
        );
        assert!(
            full.len() > format!("webjs@{DOMAIN}/xmppjs/").len(),
            "{success}"
        );
        assert_eq!(
            success["additional_data"], true,
            "SCRAM's server signature: {success}"
        );
        assert_eq!(success["bound"], true, "{success}");
        assert_eq!(success["sm_enabled"]["resume"], "true", "{success}");
        let sm_id = success["sm_enabled"]["id"]
            .as_str()
            .expect("an SM id")
            .to_owned();
        assert_eq!(success["token"], true, "a FAST token: {success}");
        let online = login.last().unwrap();
        println!(
            "@xmpp/client on Node {} with the {} WebSocket",
            online["node"], online["websocket"]
        );
        assert_eq!(online["jid"], full.as_str(), "{online}");
        assert_eq!(online["fast_mechanism"], "HT-SHA-256-NONE", "{online}");
        // nothing of SASL1, legacy bind or a separate <enable/>
        for ev in &login {
            assert!(
                !matches!(
                    ev["event"].as_str(),
                    Some("sasl1" | "sasl1-auth" | "legacy-bind" | "sm-nonza-sent")
                ),
                "{ev}"
            );
        }

        // 2. a chat with bob on QUIC
        let m = bob.next_message(Duration::from_secs(30)).await.unwrap();
        assert_eq!(m.body.as_deref(), Some("hello from xmpp.js"));
        assert_eq!(m.from, full);
        bob.send_message(&full, "hello back from a phone")
            .await
            .unwrap();
        let chat = js.until("dropping").await;
        let answer = only(&chat, "message");
        assert_eq!(answer["body"], "hello back from a phone", "{chat:#?}");
        assert!(
            answer["from"].as_str().unwrap().starts_with(bob.jid()),
            "{answer}"
        );
        let dropping = chat.last().unwrap();
        // (xmpp.js goes online before it reads <enabled/> in <bound/>)
        assert_eq!(dropping["sm_enabled"], true, "{dropping}");
        assert_eq!(dropping["sm_id"], sm_id.as_str(), "{dropping}");
        assert_eq!(
            dropping["unacked"], 0,
            "the server acknowledged: {dropping}"
        );
        let h = dropping["inbound"].as_u64().unwrap();
        assert!(h >= 1, "{dropping}");
        // the socket is gone without <close/>: the session waits for a resumption
        let gone = js.until("disconnected").await;
        assert!(gone.iter().all(|e| e["event"] != "message"), "{gone:#?}");
        bob.send_message(&full, "while you were away")
            .await
            .unwrap();

        // 3. the same client reconnects and resumes inside <authenticate/>
        js.command("reconnect").await;
        let back = js.until("resumed").await;
        let auth = only(&back, "authenticate");
        // with the token from the first success, not the password
        assert_eq!(auth["mechanism"], "HT-SHA-256-NONE", "{auth}");
        assert_eq!(
            (&auth["fast"], &auth["request_token"]),
            (&json!(true), &json!(false)),
            "{auth}"
        );
        assert_eq!(auth["resume"]["previd"], sm_id.as_str(), "{auth}");
        assert_eq!(auth["resume"]["h"], h.to_string(), "{auth}");
        assert_eq!(
            auth["user_agent"],
            user_agent.as_str(),
            "the same client: {auth}"
        );
        let success = only(&back, "success");
        assert_eq!(
            success["additional_data"], true,
            "the HT responder: {success}"
        );
        assert_eq!(success["resumed"]["previd"], sm_id.as_str(), "{success}");
        assert!(success["resumed"]["h"].is_string(), "{success}");
        assert_eq!(
            success["bound"], false,
            "resumed, not bound again: {success}"
        );
        assert_eq!(
            success["authorization_identifier"],
            full.as_str(),
            "{success}"
        );
        assert_eq!(only(&back, "resumed")["jid"], full.as_str());
        // what bob sent meanwhile arrives, once; nothing from before again
        let mut after = back;
        if !after.iter().any(|e| e["body"] == "while you were away") {
            after.extend(js.until("message").await);
        }
        after.extend(js.quiet(Duration::from_secs(2)).await);
        let missed: Vec<_> = after.iter().filter(|e| e["event"] == "message").collect();
        assert_eq!(missed.len(), 1, "{after:#?}");
        assert_eq!(missed[0]["body"], "while you were away", "{after:#?}");
        assert!(missed[0]["from"].as_str().unwrap().starts_with(bob.jid()));
        assert!(
            after.iter().all(|e| !matches!(
                e["event"].as_str(),
                Some("online" | "sm-fail" | "legacy-bind" | "sasl1-auth" | "sm-nonza-sent")
            )),
            "no second resumption or enable: {after:#?}"
        );
        // the features after the resumed success offer no <sm/> to take up
        assert!(
            after
                .iter()
                .filter(|e| e["event"] == "features")
                .all(|f| f["sm"] == false),
            "{after:#?}"
        );
        // and the resumed session carries xmpp.js's messages, not its old one again
        let m = bob.next_message(Duration::from_secs(30)).await.unwrap();
        assert_eq!(m.body.as_deref(), Some("back from xmpp.js"));
        assert_eq!(m.from, full);
        let again = bob.next_message(Duration::from_secs(1)).await;
        assert!(again.is_err(), "{again:?}");

        // 4. a clean stop, and the same client logs in again with its token
        js.command("stop").await;
        let end = js.until("stopped").await;
        assert!(end.iter().all(|e| e["event"] != "message"), "{end:#?}");
        js.command("start").await;
        let again = js.until("started").await;
        let auth = only(&again, "authenticate");
        assert_eq!(auth["mechanism"], "HT-SHA-256-NONE", "{auth}");
        assert_eq!(auth["fast"], true, "{auth}");
        assert_eq!(auth["user_agent"], user_agent.as_str(), "{auth}");
        let success = only(&again, "success");
        assert!(
            success["authorization_identifier"]
                .as_str()
                .unwrap()
                .starts_with(&format!("webjs@{DOMAIN}/")),
            "{success}"
        );
        assert!(
            again.iter().all(|e| e["event"] != "sasl-failure"),
            "{again:#?}"
        );
        js.command("stop").await;
        js.until("stopped").await;
        js.command("exit").await;
        let status = tokio::time::timeout(Duration::from_secs(30), js.child.wait())
            .await
            .expect("xmpp.js exits")
            .unwrap();
        assert!(status.success(), "{}", js.stderr());
        for ev in &js.seen {
            println!("xmpp.js: {ev}");
        }
        // xmpp.js closed its stream: its session is gone, bob's is left
        cluster.wait_routes(1).await;
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_passes_over_tcp_tls_and_quic() {
    use interop::{Target, Transport, run_suite};
    bounded(300, async {
        let cluster = tcp_cluster().await;
        cluster.add_user("interop1", "pw1");
        cluster.add_user("interop2", "pw2");
        let cm = cluster.cm(0);
        for (transport, server) in [
            (Transport::Starttls, cm.tcp_addr.unwrap()),
            (Transport::Tls, cm.tls_addr.unwrap()),
            (Transport::Quic, cm.client_addr),
        ] {
            let target = Target {
                server,
                domain: DOMAIN.to_owned(),
                transport,
                ca: Some(cluster.ca()),
                accounts: [
                    ("interop1".to_owned(), "pw1".to_owned()),
                    ("interop2".to_owned(), "pw2".to_owned()),
                ],
            };
            let outcomes = run_suite(&target).await;
            assert_eq!(outcomes.len(), 11);
            for o in outcomes {
                assert!(
                    o.result.is_ok(),
                    "{transport:?}: {}: {:?}",
                    o.name,
                    o.result
                );
            }
        }
        cluster.shutdown().await;
    })
    .await;
}

/// What longlink serves of XEP-0479's server features today, by lookup;
/// every other check must fail (a feature that lands moves here).
const COMPLIANCE_PASSES: &[&str] = &[
    "XEP-0030 service discovery (server identity server/im)",
    "XEP-0115 entity capabilities (stream feature)",
    "XEP-0163 personal eventing (account identity pubsub/pep)",
    "XEP-0223 PEP publish-options (account feature)",
    "RFC 6121 roster versioning (stream feature)",
    "XEP-0045 multi-user chat (a conference/text service)",
    "XEP-0410 MUC self-ping optimization (group chat service feature)",
    "XEP-0191 blocking command (server feature)",
    "XEP-0280 message carbons (server feature)",
    "XEP-0313 message archive (account feature)",
    "XEP-0160 offline messages (server feature)",
    "XEP-0049 private XML storage (a get is answered)",
    "XEP-0402 bookmarks with #compat (account feature)",
    "XEP-0398 avatar conversion (account feature)",
    "XEP-0054 vcard-temp (server feature)",
    "XEP-0363 HTTP file upload (a service)",
    "XEP-0198 stream management (stream feature)",
    "XEP-0352 client state indication (stream feature)",
    "XEP-0357 push notifications (account feature)",
    "XEP-0215 external services for calls (server feature)",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compliance_suite_finds_exactly_the_xep_0479_features_longlink_serves() {
    use interop::compliance::{check_names, run_compliance};
    use interop::{Target, Transport};
    bounded(120, async {
        // (a STUN server, the upload service and a push app server's
        // component configured, so XEP-0215, XEP-0363 and XEP-0357 are
        // offered)
        let configure: support::cluster::Configure = Arc::new(|c| {
            c.upload = Some(im_core::upload::UploadConfig::new(
                "127.0.0.1:0".parse().unwrap(),
            ));
            c.components = vec![im_core::components::ComponentConfig::new(
                &format!("push.{DOMAIN}"),
                "a-secret-of-at-least-16-bytes",
            )];
            c.component_listen = Some("127.0.0.1:0".parse().unwrap());
            c.external_services = vec![im_core::external_services::ExternalService {
                kind: "stun".into(),
                host: "stun.example".into(),
                port: Some(3478),
                transport: None,
                name: None,
                secret: None,
                credentials_ttl_secs: 600,
            }];
        });
        let mut cluster = Cluster::start_configured(0, configure).await;
        cluster
            .add_cm_with(|c| c.tls_listen = Some("127.0.0.1:0".parse().unwrap()))
            .await;
        cluster.add_user("interop1", "pw1");
        let target = Target {
            server: cluster.cm(0).tls_addr.unwrap(),
            domain: DOMAIN.to_owned(),
            transport: Transport::Tls,
            ca: Some(cluster.ca()),
            accounts: [
                ("interop1".to_owned(), "pw1".to_owned()),
                ("interop1".to_owned(), "pw1".to_owned()),
            ],
        };
        let outcomes = run_compliance(&target).await;
        let names: Vec<&str> = outcomes.iter().map(|o| o.name).collect();
        assert_eq!(names, check_names());
        for pass in COMPLIANCE_PASSES {
            assert!(names.contains(pass), "no check named {pass}");
        }
        for o in &outcomes {
            println!(
                "{}  {}: {:?}",
                if o.result.is_ok() { "PASS" } else { "FAIL" },
                o.name,
                o.result
            );
            assert_eq!(
                o.result.is_ok(),
                COMPLIANCE_PASSES.contains(&o.name),
                "{}: {:?}",
                o.name,
                o.result
            );
        }
        cluster.shutdown().await;
    })
    .await;
}
