//! A longlink connection manager (CM) node: terminates client QUIC/TLS
//! connections, parses and polices their XML streams and multiplexes every
//! session over a few pooled QUIC connections to the IM core.
//!
//! Layout: [`listener`] accepts QUIC clients and drives one [`session`]
//! state machine per XMPP stream, over any transport; [`tcp`] (with
//! [`starttls`]) and [`ws`] accept TCP and WebSocket clients into the same
//! driver; [`sessions`] is the registry the [`pool`] dispatches core frames
//! through; [`cores`] keeps a pool per core and sends each session's frames
//! to the core that owns its user's shard slot ([`core_map`]); [`balancer_link`] keeps the CM registered with the balancer
//! and [`encap_socket`] carries its encapsulated datagrams; [`backoff`]
//! paces both links' reconnections; [`admission`] caps unauthenticated
//! connections per client address; [`config`] holds the settings;
//! [`metrics`] counts what happens, served on `/metrics` by the admin
//! endpoint (`admin`).

mod admin;
pub mod admission;
pub mod backoff;
pub mod balancer_link;
pub mod config;
pub mod core_map;
pub mod cores;
pub mod encap_socket;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod listener;
pub mod metrics;
pub mod pool;
pub mod session;
pub mod sessions;
pub mod starttls;
pub mod tcp;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use xmpp_stream::framer::Limits;

pub use config::CmConfig;

/// ALPN for XMPP client connections (XEP-0467, XEP-0368).
pub const CLIENT_ALPN: &[u8] = b"xmpp-client";

/// Why a CM could not start.
#[derive(Debug, thiserror::Error)]
pub enum CmError {
    /// Certificates could not be loaded.
    #[error("certificates: {0}")]
    Certs(#[from] certs::CertError),
    /// A socket could not be bound.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// The TLS configuration is unusable for QUIC.
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
    /// Bad configuration.
    #[error("configuration: {0}")]
    Config(String),
}

/// A running CM node.
pub struct CmHandle {
    /// Node name.
    pub node: String,
    /// Address clients connect to.
    pub client_addr: SocketAddr,
    /// TCP address with mandatory STARTTLS, if enabled.
    pub tcp_addr: Option<SocketAddr>,
    /// TCP address with direct TLS, if enabled.
    pub tls_addr: Option<SocketAddr>,
    /// WebSocket (TLS) address, if enabled.
    pub ws_addr: Option<SocketAddr>,
    /// Admin HTTP address (`/metrics`), if enabled.
    pub admin_addr: Option<SocketAddr>,
    /// Live sessions.
    pub sessions: Arc<sessions::Sessions>,
    /// Client connections (handshakes) received so far (an attempt
    /// answered with a Retry counts once its retry arrives).
    pub accepted: Arc<std::sync::atomic::AtomicU64>,
    /// QUIC connection attempts answered with a Retry (the client must
    /// prove its address first) so far.
    pub retried: Arc<std::sync::atomic::AtomicU64>,
    /// Behind a balancer: the socket its datagrams arrive on (with counts of
    /// datagrams received and dropped).
    pub encap_socket: Option<Arc<encap_socket::EncapSocket>>,
    /// The node's metrics (what `/metrics` renders).
    pub metrics: Arc<metrics::Metrics>,
    client_endpoint: quinn::Endpoint,
    core_endpoint: quinn::Endpoint,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl CmHandle {
    /// Stops the node: clients get `system-shutdown`, core links close.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
        self.client_endpoint.close(0u32.into(), b"shutting down");
        self.core_endpoint.close(0u32.into(), b"shutting down");
        let _ =
            tokio::time::timeout(Duration::from_secs(2), self.client_endpoint.wait_idle()).await;
    }

    /// Stops at once, like a crash: no stream errors, connections just vanish
    /// for the peers (they notice by idle timeout or the core by the CLOSE).
    pub fn abort(self) {
        self.shutdown.cancel();
        self.client_endpoint.close(0u32.into(), b"");
        self.core_endpoint.close(0u32.into(), b"");
    }
}

/// The least time between two stateless resets a CM sends.
const MIN_RESET_INTERVAL: std::time::Duration = std::time::Duration::from_millis(1);

/// The drivers' clock: tokio's (so paused time in tests moves it too), as
/// the `std` instant the state machines take.
pub(crate) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

fn client_transport(config: &CmConfig) -> quinn::TransportConfig {
    idle_phone_transport(config.keep_alive(), config.idle_timeout())
}

/// The CM's transport settings for phones: few streams, small windows
/// (little memory per idle connection), keep-alive inside typical NAT
/// timeouts. Public so the load tool's quinn baseline uses the same.
pub fn idle_phone_transport(
    keep_alive: Duration,
    idle_timeout: Duration,
) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(2u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window((16u32 * 1024).into())
        .receive_window((32u32 * 1024).into())
        .send_window(32 * 1024)
        .datagram_receive_buffer_size(None)
        .mtu_discovery_config(None)
        .keep_alive_interval(Some(keep_alive))
        .max_idle_timeout(idle_timeout.try_into().ok());
    t
}

fn core_transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(8u32.into())
        .stream_receive_window((16u32 * 1024 * 1024).into())
        .receive_window((32u32 * 1024 * 1024).into())
        .send_window(32 * 1024 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(2)))
        .max_idle_timeout(Duration::from_secs(10).try_into().ok());
    t
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CmError {
    let context = context.into();
    move |source| CmError::Io { context, source }
}

/// The client-facing endpoint: connection ids in the QUIC-LB format with this
/// node's server id, the stateless-reset key every CM shares (so a live CM
/// can reset the connections of a dead one), and behind a balancer the
/// encapsulating socket.
fn client_endpoint(
    config: &CmConfig,
    server_config: quinn::ServerConfig,
    cluster_key: &certs::cluster_key::ClusterKey,
) -> Result<(quinn::Endpoint, Option<Arc<encap_socket::EncapSocket>>), CmError> {
    let key = config
        .quic_lb
        .encrypted
        .then(|| certs::load_quic_lb_key(&certs::PkiPaths::new(&config.pki_dir).quic_lb_key()))
        .transpose()?;
    let lb_config = config
        .quic_lb
        .config(key)
        .map_err(|e| CmError::Config(e.to_string()))?;
    let server_id = config
        .server_id()
        .and_then(|id| config.quic_lb.server_id_bytes(id))
        .ok_or_else(|| {
            CmError::Config(format!("{}: no QUIC-LB server id that fits", config.node))
        })?;
    let encoder = lb_protocol::CidEncoder::new(lb_config, &server_id)
        .map_err(|e| CmError::Config(e.to_string()))?;
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(cluster_key.reset_key()));
    endpoint_config
        .cid_generator(move || Box::new(lb_protocol::QuicLbGenerator::new(encoder.clone())))
        // A CM that dies leaves its clients to the others' stateless resets
        // (the balancer sends their packets to a live CM): up to 1 000 a
        // second per CM instead of quinn's 50. A reset is always smaller
        // than the packet it answers, so this amplifies nothing.
        .min_reset_interval(MIN_RESET_INTERVAL);
    let socket =
        std::net::UdpSocket::bind(config.listen).map_err(io(format!("bind {}", config.listen)))?;
    let runtime = Arc::new(quinn::TokioRuntime);
    match &config.balancer {
        None => quinn::Endpoint::new(endpoint_config, Some(server_config), socket, runtime)
            .map(|endpoint| (endpoint, None))
            .map_err(io("client endpoint")),
        Some(link) => {
            socket.set_nonblocking(true).map_err(io("nonblocking"))?;
            let socket = tokio::net::UdpSocket::from_std(socket).map_err(io("register socket"))?;
            let socket = Arc::new(encap_socket::EncapSocket::new(socket, link.encap));
            quinn::Endpoint::new_with_abstract_socket(
                endpoint_config,
                Some(server_config),
                socket.clone(),
                runtime,
            )
            .map(|endpoint| (endpoint, Some(socket)))
            .map_err(io("client endpoint"))
        }
    }
}

/// Lets a client-facing QUIC config accept 0-RTT early data on resumed
/// tickets, including the stateless tickets every CM shares (the vendored
/// rustls' `early_data_with_stateless_tickets`). Such early data can be
/// replayed to any CM within rustls' ticket-age tolerance: the session
/// must act on it only as docs/design/sasl2-fast.md §6.2 allows (one
/// counted FAST authentication). QUIC only: TCP TLS keeps no early data.
pub fn allow_zero_rtt(tls: &mut rustls::ServerConfig) {
    // QUIC allows only 0 or u32::MAX (RFC 9001 §4.6.1)
    tls.max_early_data_size = u32::MAX;
    tls.early_data_with_stateless_tickets = true;
    // A client spends a ticket on every attempt, answered or not (a phone
    // without network tries a few times): four per handshake, not two,
    // keep its next reconnection in 0-RTT after some failed ones.
    tls.send_tls13_tickets = 4;
}

/// Starts a CM node: the client listener and the pool to the core.
pub async fn start(config: CmConfig) -> Result<CmHandle, CmError> {
    if config.max_stanza_bytes > cm_protocol::MAX_STANZA {
        return Err(CmError::Config(format!(
            "max_stanza_bytes {} is above {}: a stanza must fit in one frame to the core",
            config.max_stanza_bytes,
            cm_protocol::MAX_STANZA
        )));
    }
    let pki = certs::PkiPaths::new(&config.pki_dir);
    let cert = pki.cm_cert(&config.node);
    let key = pki.cm_key(&config.node);

    let cluster_key = match certs::load_cluster_key(&pki.cluster_key()) {
        Ok(k) => certs::cluster_key::ClusterKey::new(k),
        Err(e) => {
            tracing::warn!(error = %e, "no cluster key: TLS tickets and stateless resets work on this CM only");
            certs::cluster_key::ClusterKey::random()
        }
    };
    // Tickets any CM can open: a reconnecting phone resumes TLS wherever it lands.
    let tls_for = |alpn: &[&[u8]]| -> Result<rustls::ServerConfig, CmError> {
        let mut tls = certs::client_facing_server_config(&cert, &key, alpn)?;
        tls.ticketer = cluster_key.ticketer();
        Ok(tls)
    };
    let mut client_tls = tls_for(&[CLIENT_ALPN])?;
    if config.zero_rtt {
        allow_zero_rtt(&mut client_tls);
    }
    let client_tls = quinn::crypto::rustls::QuicServerConfig::try_from(client_tls)
        .map_err(|e| CmError::Quic(e.to_string()))?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(client_tls));
    server_config.transport_config(Arc::new(client_transport(&config)));
    if config.balancer.is_some() && config.listen.ip().is_unspecified() {
        return Err(CmError::Config(format!(
            "{}: behind a balancer, listen on a concrete address (the balancer sends there), not {}",
            config.node, config.listen
        )));
    }
    let (client_endpoint, encap_socket) = client_endpoint(&config, server_config, &cluster_key)?;
    let client_addr = client_endpoint.local_addr().map_err(io("local address"))?;

    let core_tls = certs::cluster_client_config(&pki.ca_cert(), &cert, &key, cm_protocol::ALPN)?;
    let core_tls = quinn::crypto::rustls::QuicClientConfig::try_from(core_tls)
        .map_err(|e| CmError::Quic(e.to_string()))?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(core_tls));
    client_config.transport_config(Arc::new(core_transport()));
    let bind: SocketAddr = if config.core.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let mut core_endpoint = quinn::Endpoint::client(bind).map_err(io("bind core link socket"))?;
    core_endpoint.set_default_client_config(client_config);

    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let sessions =
        Arc::new(sessions::Sessions::default().with_queue_bytes(config.session_queue_bytes));
    let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let retried = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let metrics = match &encap_socket {
        Some(socket) => metrics::Metrics::new().with_encap_socket(socket.clone()),
        None => metrics::Metrics::new(),
    };
    let metrics = Arc::new(metrics);
    let pool = cores::Cores::start(
        config.core,
        cores::Dialer {
            pool_size: config.pool_size,
            node: config.node.clone(),
            client_addr,
            endpoint: core_endpoint.clone(),
            queue_bytes: config.pool_queue_bytes,
            shutdown: shutdown.clone(),
            tasks: tasks.clone(),
        },
        sessions.clone(),
        metrics.clone(),
    );
    let ctx = Arc::new(listener::ListenerContext {
        settings: Arc::new(session::SessionSettings {
            domain: config.domain.clone(),
            limits: Limits {
                max_stanza_bytes: config.max_stanza_bytes,
                ..Limits::default()
            },
            read_rate: config.client_rate_bytes,
            read_burst: config.client_burst_bytes,
        }),
        sessions: sessions.clone(),
        pool,
        shutdown: shutdown.clone(),
        tasks: tasks.clone(),
        accepted: accepted.clone(),
        retried: retried.clone(),
        metrics: metrics.clone(),
        open: Arc::default(),
        max_clients: config.max_clients,
        pre_auth: Arc::new(admission::PreAuthLimit::new(config.pre_auth_per_address)),
        stream_wait: config.stream_wait(),
        auth_wait: config.auth_wait(),
        zero_rtt: config.zero_rtt,
    });
    tasks.spawn(listener::run(client_endpoint.clone(), ctx.clone()));
    let mut tcp_addrs = [None, None];
    for (i, (addr, mode, alpn)) in [
        (config.tcp_listen, tcp::TcpMode::StartTls, &[][..]),
        (
            config.tls_listen,
            tcp::TcpMode::DirectTls,
            &[CLIENT_ALPN][..],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let Some(addr) = addr else { continue };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(io(format!("bind {addr}")))?;
        tcp_addrs[i] = Some(listener.local_addr().map_err(io("local address"))?);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_for(alpn)?));
        tasks.spawn(tcp::run(listener, acceptor, mode, ctx.clone()));
    }
    let mut ws_addr = None;
    if let Some(addr) = config.ws_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(io(format!("bind {addr}")))?;
        ws_addr = Some(listener.local_addr().map_err(io("local address"))?);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_for(&[b"http/1.1"])?));
        tasks.spawn(ws::run(listener, acceptor, ctx.clone()));
    }
    let mut admin_addr = None;
    if let Some(addr) = config.admin_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(io(format!("bind admin {addr}")))?;
        admin_addr = Some(listener.local_addr().map_err(io("admin address"))?);
        let state = admin::Admin {
            metrics: metrics.clone(),
            open: ctx.open.clone(),
            sessions: sessions.clone(),
            pool: ctx.pool.clone(),
            toward_clients: Arc::default(),
        };
        tasks.spawn(admin::serve(listener, state, shutdown.clone()));
    }
    if let Some(link) = &config.balancer {
        let registration = lb_protocol::control::Registration {
            node: config.node.clone(),
            server_id: config.server_id().unwrap_or(0),
            encap: client_addr,
        };
        let tls = balancer_link::client_config(&config.pki_dir, &config.node)?;
        tasks.spawn(balancer_link::run(
            core_endpoint.clone(),
            tls,
            link.control,
            registration,
            shutdown.clone(),
        ));
    }
    tracing::info!(node = %config.node, %client_addr, core = %config.core, admin = ?admin_addr, "CM started");
    Ok(CmHandle {
        tcp_addr: tcp_addrs[0],
        tls_addr: tcp_addrs[1],
        ws_addr,
        admin_addr,
        metrics,
        node: config.node,
        client_addr,
        sessions,
        accepted,
        retried,
        encap_socket,
        client_endpoint,
        core_endpoint,
        shutdown,
        tasks,
    })
}
