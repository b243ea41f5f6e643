//! Configuration of a CM node (TOML; `longlink cm --config FILE`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// CM node configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CmConfig {
    /// Node name; must match the node's certificate (`cm-1` ...).
    pub node: String,
    /// XMPP domain served.
    pub domain: String,
    /// UDP address for client QUIC connections.
    pub listen: SocketAddr,
    /// The core's address.
    pub core: SocketAddr,
    /// Directory of the cluster PKI (ca.pem, NODE.pem, NODE.key).
    pub pki_dir: PathBuf,
    /// Pooled QUIC connections to the core.
    #[serde(default = "default_pool")]
    pub pool_size: u16,
    /// Largest client stanza in bytes.
    #[serde(default = "default_max_stanza")]
    pub max_stanza_bytes: usize,
    /// Client connection idle timeout, seconds.
    #[serde(default = "default_idle")]
    pub idle_timeout_secs: u64,
    /// QUIC keep-alive interval towards clients, seconds.
    #[serde(default = "default_keepalive")]
    pub keep_alive_secs: u64,
    /// Most client connections held at once; more are refused.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// Most connections from one client address (IPv4 address, IPv6 /64)
    /// that have not authenticated yet; more are refused. 0: no cap.
    #[serde(default = "default_pre_auth_per_address")]
    pub pre_auth_per_address: usize,
    /// A client QUIC connection with no open stream (after its handshake,
    /// or after its last stream ended) is closed after this many ms.
    #[serde(default = "default_stream_wait_ms")]
    pub stream_wait_ms: u64,
    /// A client QUIC connection none of whose streams has bound a session
    /// (or resumed one) this many ms after it was accepted is closed.
    #[serde(default = "default_auth_wait_ms")]
    pub auth_wait_ms: u64,
    /// Bytes of frames from the core queued for one session; a session
    /// whose client does not read them fast enough is closed
    /// (`resource-constraint`) and what is queued bounces to the core.
    #[serde(default = "default_session_queue_bytes")]
    pub session_queue_bytes: usize,
    /// Bytes of frames queued for each pooled core connection; sessions
    /// wait while it is full (backpressure to their clients).
    #[serde(default = "default_pool_queue_bytes")]
    pub pool_queue_bytes: usize,
    /// Sustained bytes per second read from one client stream (flood shaping).
    #[serde(default = "default_rate")]
    pub client_rate_bytes: u64,
    /// Bytes a client stream may send at once before shaping applies.
    #[serde(default = "default_burst")]
    pub client_burst_bytes: u64,
    /// QUIC-LB server id encoded in this node's connection ids (default: N of `cm-N`).
    #[serde(default)]
    pub server_id: Option<u64>,
    /// QUIC-LB connection-id settings (must match the balancer's).
    #[serde(default)]
    pub quic_lb: lb_protocol::QuicLbSettings,
    /// The balancer this CM sits behind, if any.
    #[serde(default)]
    pub balancer: Option<BalancerLink>,
    /// TCP address for RFC 6120 clients with mandatory STARTTLS (5222 style).
    #[serde(default)]
    pub tcp_listen: Option<SocketAddr>,
    /// TCP address for direct TLS clients (XEP-0368, 5223 style).
    #[serde(default)]
    pub tls_listen: Option<SocketAddr>,
    /// TCP address for WebSocket clients over TLS (RFC 7395, `wss://`).
    #[serde(default)]
    pub ws_listen: Option<SocketAddr>,
    /// TCP address of the admin HTTP endpoint (`/metrics`), if any; keep
    /// it on loopback or a private network.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// Whether client QUIC connections may resume with 0-RTT early data
    /// (on tickets from any CM; vendor/rustls): such connections are
    /// served before their handshake completes, under the early rule
    /// (docs/design/sasl2-fast.md §6.2), and FAST offers say `tls-0rtt`
    /// (default on: a phone's reconnection in one round trip).
    #[serde(default = "yes")]
    pub zero_rtt: bool,
}

/// How a CM reaches its balancer.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalancerLink {
    /// The balancer's control endpoint (registration, health).
    pub control: SocketAddr,
    /// The balancer's backend UDP address (encapsulated datagrams).
    pub encap: SocketAddr,
}

fn yes() -> bool {
    true
}

fn default_pool() -> u16 {
    2
}
fn default_max_stanza() -> usize {
    64 * 1024
}
fn default_max_clients() -> usize {
    500_000
}
fn default_pre_auth_per_address() -> usize {
    256
}
fn default_stream_wait_ms() -> u64 {
    10_000
}
fn default_auth_wait_ms() -> u64 {
    90_000
}
fn default_session_queue_bytes() -> usize {
    1024 * 1024
}
fn default_pool_queue_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_rate() -> u64 {
    256 * 1024
}
fn default_burst() -> u64 {
    1024 * 1024
}
fn default_idle() -> u64 {
    90
}
fn default_keepalive() -> u64 {
    25
}

impl CmConfig {
    /// A configuration with defaults for everything but the essentials.
    pub fn new(
        node: &str,
        domain: &str,
        listen: SocketAddr,
        core: SocketAddr,
        pki_dir: PathBuf,
    ) -> Self {
        Self {
            node: node.to_owned(),
            domain: domain.to_owned(),
            listen,
            core,
            pki_dir,
            pool_size: default_pool(),
            max_stanza_bytes: default_max_stanza(),
            idle_timeout_secs: default_idle(),
            keep_alive_secs: default_keepalive(),
            max_clients: default_max_clients(),
            pre_auth_per_address: default_pre_auth_per_address(),
            stream_wait_ms: default_stream_wait_ms(),
            auth_wait_ms: default_auth_wait_ms(),
            session_queue_bytes: default_session_queue_bytes(),
            pool_queue_bytes: default_pool_queue_bytes(),
            client_rate_bytes: default_rate(),
            client_burst_bytes: default_burst(),
            server_id: None,
            quic_lb: lb_protocol::QuicLbSettings::default(),
            balancer: None,
            tcp_listen: None,
            tls_listen: None,
            ws_listen: None,
            admin_listen: None,
            zero_rtt: true,
        }
    }

    /// The QUIC-LB server id: configured, or N of a node named `cm-N`.
    pub fn server_id(&self) -> Option<u64> {
        self.server_id
            .or_else(|| self.node.strip_prefix("cm-").and_then(|n| n.parse().ok()))
    }

    /// Client idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// How long a client QUIC connection may have no open stream.
    pub fn stream_wait(&self) -> Duration {
        Duration::from_millis(self.stream_wait_ms)
    }

    /// How long a client QUIC connection may go without binding a session.
    pub fn auth_wait(&self) -> Duration {
        Duration::from_millis(self.auth_wait_ms)
    }

    /// Client keep-alive interval.
    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.keep_alive_secs)
    }
}
