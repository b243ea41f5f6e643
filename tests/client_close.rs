//! A client that closes its stream leaves the routing table at once (issue
//! 18: after the load tool closed 1 000 QUIC sessions the core's table took
//! about 55 s to empty). A client's `</stream:stream>` ends its session on
//! every transport as soon as the CM reads it, whether or not the client
//! ever closes the connection; SM sessions end too (XEP-0198: a stream
//! closed with `</stream>` is not resumable). In-process cluster, real QUIC
//! and TLS.

mod support;

use std::time::Duration;

use client_sdk::Mechanism;
use client_sdk::transport::{Dialer, Io, Transport};
use xmpp_stream::framer::FrameEvent;
use xmpp_stream::{ns, stream};

use support::{Cluster, DOMAIN, bounded};

/// How soon a closed stream must have left the routing table.
const AT_ONCE: Duration = Duration::from_secs(2);

/// One client's raw XMPP stream, logged in, bound and available.
struct Raw {
    io: Io,
    /// The QUIC connection, held open (never closed by the client).
    quic: Option<quinn::Connection>,
    /// The QUIC endpoint, held too: its socket stays, so nothing the
    /// client side does ends the connection.
    _endpoint: Option<quinn::Endpoint>,
}

/// Logs `user` in over `transport` at `addr` (SCRAM, bind, presence, and
/// XEP-0198 with `sm`).
async fn login(
    cluster: &Cluster,
    addr: std::net::SocketAddr,
    transport: Transport,
    user: &str,
    sm: bool,
) -> Raw {
    let roots = client_sdk::load_roots(&cluster.ca()).expect("roots");
    let dialer = Dialer::new(addr, DOMAIN, transport, roots).expect("dialer");
    let endpoint = match transport {
        Transport::Quic => Some(dialer.endpoint().expect("endpoint")),
        _ => None,
    };
    let connected = dialer.connect(endpoint.as_ref()).await.expect("connects");
    let mut io = connected.io;
    io.authenticate(user, "secret", Mechanism::ScramSha256)
        .await
        .expect("authenticates");
    io.open(DOMAIN).await.expect("stream restart");
    let features = io.element().await.expect("features");
    io.bind(&features, Some("phone")).await.expect("binds");
    if sm {
        io.write(b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
            .await
            .expect("enable");
        let enabled = io.element().await.expect("enabled");
        assert_eq!(
            (enabled.name.as_str(), enabled.ns.as_str()),
            ("enabled", ns::SM)
        );
        assert_eq!(enabled.attr("resume"), Some("true"), "{enabled:?}");
    }
    io.write(b"<presence/>").await.expect("presence");
    Raw {
        io,
        quic: connected.quic,
        _endpoint: endpoint,
    }
}

/// The number of routes in the core's table.
async fn routes(cluster: &Cluster) -> usize {
    cluster.routes().await["routes"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(usize::MAX)
}

/// Waits until the core routes `n` sessions, at most `within`; panics with
/// the table otherwise.
async fn wait_routes_within(cluster: &Cluster, n: usize, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while routes(cluster).await != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the routing table still holds other than {n} routes {within:?} later: {}",
            cluster.routes().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Skips what the server sends until its end of the stream; true if it
/// came within `AT_ONCE`.
async fn server_closes_stream(io: &mut Io) -> bool {
    let end = async {
        loop {
            match io.next().await {
                Ok(FrameEvent::Close) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    };
    tokio::time::timeout(AT_ONCE, end).await.unwrap_or(false)
}

/// Logs `users` clients in (every other one with stream management), then
/// each writes `</stream:stream>` and falls silent with its connection
/// open: the server answers each with its own `</stream:stream>`, and the
/// routing table is empty within [`AT_ONCE`].
async fn stream_close_then_silence(
    cluster: &Cluster,
    addr: std::net::SocketAddr,
    transport: Transport,
    users: usize,
) -> Vec<Raw> {
    let mut clients = Vec::new();
    for i in 0..users {
        let user = format!("u{i}");
        cluster.add_user(&user, "secret");
        clients.push(login(cluster, addr, transport, &user, i % 2 == 1).await);
    }
    wait_routes_within(cluster, users, support::WAIT).await;
    for c in &mut clients {
        c.io.write(stream::STREAM_CLOSE)
            .await
            .expect("stream close written");
    }
    wait_routes_within(cluster, 0, AT_ONCE).await;
    for (i, c) in clients.iter_mut().enumerate() {
        assert!(
            server_closes_stream(&mut c.io).await,
            "client {i}: the server answered </stream:stream> with its own"
        );
    }
    clients
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_clients_that_close_their_stream_and_fall_silent_leave_the_routing_table_and_are_disconnected_at_once()
 {
    bounded(60, async {
        let cluster = Cluster::start(1).await;
        let clients =
            stream_close_then_silence(&cluster, cluster.cm_addr(0), Transport::Quic, 8).await;
        // The CM closes each connection whose only stream ended: nothing
        // of it is held until an idle timeout.
        for (i, c) in clients.iter().enumerate() {
            let conn = c.quic.as_ref().expect("QUIC");
            let closed = tokio::time::timeout(AT_ONCE, conn.closed()).await;
            assert!(
                matches!(closed, Ok(quinn::ConnectionError::ApplicationClosed(_))),
                "client {i}: the CM closed the connection: {closed:?}"
            );
        }
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_clients_that_close_their_stream_and_fall_silent_leave_the_routing_table_at_once()
{
    bounded(60, async {
        let mut cluster = Cluster::start(0).await;
        cluster
            .add_cm_with(|c| c.tcp_listen = Some("127.0.0.1:0".parse().expect("addr")))
            .await;
        let addr = cluster.cm(0).tcp_addr.expect("STARTTLS listener");
        let _clients = stream_close_then_silence(&cluster, addr, Transport::Starttls, 4).await;
        cluster.shutdown().await;
    })
    .await;
}

/// The load tool's users `0..n` (accounts `t0`…), as its scenarios set
/// them up.
fn tool_setup(cluster: &Cluster) -> longlink_bench::user::Setup {
    let roots = client_sdk::load_roots(&cluster.ca()).expect("roots");
    longlink_bench::user::Setup {
        dialer: Dialer::new(cluster.cm_addr(0), DOMAIN, Transport::Quic, roots).expect("dialer"),
        prefix: "t".into(),
        password: "secret".into(),
        mechanism: Mechanism::ScramSha256,
        cache: Default::default(),
        resource: "load".into(),
    }
}

/// Runs `body` like a load tool process: on a runtime of its own, on a
/// thread of its own, the runtime dropped the moment `body` returns (as
/// when the process exits: nothing of quinn's runs after that). The
/// runtime has one thread, so nothing runs beside `body` either: the worst
/// case of the tool's multi-threaded one. `logged_in` tells the test when
/// its users are online; `go` tells the body to close them.
async fn as_a_process_that_exits<F>(
    body: impl FnOnce(tokio::sync::oneshot::Sender<()>, tokio::sync::oneshot::Receiver<()>) -> F
    + Send
    + 'static,
    online: impl std::future::Future<Output = ()>,
) where
    F: std::future::Future<Output = ()>,
{
    let (logged_in, wait_logged_in) = tokio::sync::oneshot::channel();
    let (go, wait_go) = tokio::sync::oneshot::channel();
    let process = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(body(logged_in, wait_go));
        drop(runtime);
    });
    wait_logged_in.await.expect("the tool's users logged in");
    online.await;
    go.send(()).expect("the tool waits");
    while !process.is_finished() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    process.join().expect("the tool's process ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_tool_users_closed_just_before_the_tool_exits_leave_the_routing_table_at_once() {
    bounded(60, async {
        let cluster = Cluster::start(1).await;
        const USERS: usize = 4;
        for i in 0..USERS {
            cluster.add_user(&format!("t{i}"), "secret");
        }
        let setup = tool_setup(&cluster);
        let body = move |logged_in: tokio::sync::oneshot::Sender<()>,
                         go: tokio::sync::oneshot::Receiver<()>| async move {
            let endpoint = setup.dialer.endpoint().expect("endpoint");
            let mut users = Vec::new();
            for i in 0..USERS {
                let user = longlink_bench::user::login(&setup, i, Some(&endpoint));
                users.push(user.await.expect("logs in"));
            }
            let _ = logged_in.send(());
            let _ = go.await;
            // what the `login` scenario does with each user, then exits
            for user in users {
                user.close().await;
            }
        };
        as_a_process_that_exits(body, cluster.wait_routes(USERS)).await;
        wait_routes_within(&cluster, 0, AT_ONCE).await;
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_tool_users_dropped_then_closed_with_their_endpoints_leave_the_routing_table_at_once()
{
    bounded(60, async {
        let cluster = Cluster::start(1).await;
        const USERS: usize = 4;
        for i in 0..USERS {
            cluster.add_user(&format!("t{i}"), "secret");
        }
        let setup = tool_setup(&cluster);
        let body = move |logged_in: tokio::sync::oneshot::Sender<()>,
                         go: tokio::sync::oneshot::Receiver<()>| async move {
            let endpoints: Vec<_> = (0..2)
                .map(|_| setup.dialer.endpoint().expect("endpoint"))
                .collect();
            let mut users = Vec::new();
            for i in 0..USERS {
                let user = longlink_bench::user::login(&setup, i, Some(&endpoints[i % 2]));
                users.push(user.await.expect("logs in"));
            }
            let _ = logged_in.send(());
            let _ = go.await;
            // what the `idle` and `chat` scenarios do at their end, then exit
            drop(users);
            longlink_bench::user::close_endpoints(&endpoints).await;
        };
        as_a_process_that_exits(body, cluster.wait_routes(USERS)).await;
        wait_routes_within(&cluster, 0, AT_ONCE).await;
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_client_that_closes_its_connection_and_drops_its_endpoint_leaves_the_routing_table_at_once()
 {
    bounded(60, async {
        let cluster = Cluster::start(1).await;
        cluster.add_user("u0", "secret");
        let Raw {
            io,
            quic,
            _endpoint,
        } = login(&cluster, cluster.cm_addr(0), Transport::Quic, "u0", false).await;
        wait_routes_within(&cluster, 1, support::WAIT).await;
        quic.expect("QUIC").close(0u32.into(), b"bye");
        drop((io, _endpoint));
        wait_routes_within(&cluster, 0, AT_ONCE).await;
        cluster.shutdown().await;
    })
    .await;
}
