//! Membership: how CMs join the balancer.
//!
//! A CM opens a QUIC connection to the balancer's control endpoint with its
//! cluster certificate (mutual TLS, ALPN [`ALPN`]) and sends one
//! [`Registration`] as a JSON line on a bidirectional stream; the balancer
//! checks that the node name matches the certificate, answers `ok`, and keeps
//! the CM in its table for as long as the connection lives. Both sides send
//! QUIC keep-alives every [`KEEP_ALIVE`]; a CM that stops answering is gone
//! after [`IDLE_TIMEOUT`], so a dead CM leaves the table within about 2 s.
//! When the balancer restarts, CMs reconnect (jittered backoff) and register
//! again: the balancer itself keeps nothing that its restart would lose.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// ALPN of the control protocol.
pub const ALPN: &[u8] = b"longlink-lb/1";
/// Keep-alive on control connections.
pub const KEEP_ALIVE: Duration = Duration::from_millis(300);
/// A control connection silent this long is dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_millis(1500);

/// A CM announcing itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// Node name (must match the certificate).
    pub node: String,
    /// QUIC-LB server id.
    pub server_id: u64,
    /// Where the balancer sends this CM's encapsulated datagrams.
    pub encap: SocketAddr,
}

/// TLS client settings a CM uses for the control connection.
pub fn client_config(
    pki_dir: &std::path::Path,
    node: &str,
) -> Result<quinn::ClientConfig, certs::CertError> {
    let pki = certs::PkiPaths::new(pki_dir);
    let tls =
        certs::cluster_client_config(&pki.ca_cert(), &pki.cm_cert(node), &pki.cm_key(node), ALPN)?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| certs::CertError::Verifier(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(std::sync::Arc::new(quic));
    config.transport_config(std::sync::Arc::new(transport()));
    Ok(config)
}

/// Transport settings of control connections.
pub fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(1u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(IDLE_TIMEOUT.try_into().ok());
    t
}

/// Keeps a CM registered with the balancer at `control` until shutdown,
/// reconnecting with jittered exponential backoff.
pub async fn run_registration(
    endpoint: quinn::Endpoint,
    tls: quinn::ClientConfig,
    control: SocketAddr,
    registration: Registration,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match register_once(&endpoint, &tls, control, &registration, &shutdown).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(%control, error = %e, "balancer registration lost"),
        }
        let jitter =
            Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff + jitter) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

async fn register_once(
    endpoint: &quinn::Endpoint,
    tls: &quinn::ClientConfig,
    control: SocketAddr,
    registration: &Registration,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let conn = endpoint
        .connect_with(tls.clone(), control, certs::LB_SERVER_NAME)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let mut line = serde_json::to_vec(registration).map_err(|e| e.to_string())?;
    line.push(b'\n');
    send.write_all(&line).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    let answer = recv.read_to_end(64).await.map_err(|e| e.to_string())?;
    if answer != b"ok\n" {
        return Err(format!(
            "refused: {}",
            String::from_utf8_lossy(&answer).trim()
        ));
    }
    tracing::info!(%control, node = %registration.node, "registered with the balancer");
    tokio::select! {
        _ = shutdown.cancelled() => {
            conn.close(0u32.into(), b"cm shutting down");
            Ok(())
        }
        e = conn.closed() => Err(e.to_string()),
    }
}
