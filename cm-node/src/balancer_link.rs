//! The CM's side of the balancer's control protocol
//! ([`lb_protocol::control`]): connect to the balancer's control endpoint
//! with the cluster certificate, register, and stay registered for as long
//! as the CM runs. The balancer keeps the CM in its table while this
//! connection lives, so a CM that dies leaves it by itself; when the
//! connection is lost (balancer restart, network) the CM reconnects with
//! jittered exponential backoff (`RECONNECT`) and registers again.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lb_protocol::control::{self, Answer, Registration};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio_util::sync::CancellationToken;
use xmpp_stream::pacing::Backoff;

use crate::backoff::Reconnect;

/// Reconnection to the balancer: the first retry after a loss within
/// 0–50 ms (uniformly spread, so the CMs of a restarted balancer do not
/// return in one wave), then 0.5–1 × 50 ms doubling to 1 s. The count starts
/// over only after a registration stayed accepted for 1 s.
const RECONNECT: Backoff = Backoff::spread(Duration::from_millis(50), Duration::from_secs(1));

/// Why a registration ended (the CM then reconnects).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The connection could not be started.
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was closed.
    #[error("{0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The registration could not be sent.
    #[error("send registration: {0}")]
    Write(#[from] quinn::WriteError),
    /// The registration stream was already finished.
    #[error("send registration: {0}")]
    Finish(#[from] quinn::ClosedStream),
    /// The answer could not be read.
    #[error("read answer: {0}")]
    Read(#[from] quinn::ReadToEndError),
    /// The balancer refused the registration.
    #[error("refused: {0}")]
    Refused(String),
}

/// TLS client settings a CM uses for the control connection.
pub fn client_config(pki_dir: &Path, node: &str) -> Result<quinn::ClientConfig, certs::CertError> {
    let pki = certs::PkiPaths::new(pki_dir);
    let tls = certs::cluster_client_config(
        &pki.ca_cert(),
        &pki.cm_cert(node),
        &pki.cm_key(node),
        control::ALPN,
    )?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| certs::CertError::Verifier(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(control::transport()));
    Ok(config)
}

/// Keeps a CM registered with the balancer at `control` until shutdown,
/// reconnecting with jittered exponential backoff.
pub async fn run(
    endpoint: quinn::Endpoint,
    tls: quinn::ClientConfig,
    control: SocketAddr,
    registration: Registration,
    shutdown: CancellationToken,
) {
    let mut backoff = Reconnect::new(RECONNECT, SmallRng::seed_from_u64(rand::random()));
    loop {
        match register_once(
            &endpoint,
            &tls,
            control,
            &registration,
            &shutdown,
            &mut backoff,
        )
        .await
        {
            Ok(()) => return,
            Err(e) => tracing::warn!(%control, error = %e, "balancer registration lost"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay(crate::now())) => {}
        }
    }
}

/// One registration: returns `Ok` at shutdown, an error when the connection
/// was refused or lost. An accepted registration is reported to `backoff`,
/// so a CM whose long-lived link drops retries from the shortest step, and
/// one the balancer drops at once keeps backing off.
async fn register_once(
    endpoint: &quinn::Endpoint,
    tls: &quinn::ClientConfig,
    control: SocketAddr,
    registration: &Registration,
    shutdown: &CancellationToken,
    backoff: &mut Reconnect,
) -> Result<(), LinkError> {
    let conn = endpoint
        .connect_with(tls.clone(), control, certs::LB_SERVER_NAME)?
        .await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&registration.to_line()).await?;
    send.finish()?;
    let answer = recv.read_to_end(control::MAX_ANSWER_LEN).await?;
    if let Answer::Refused(why) = Answer::from_line(&answer) {
        return Err(LinkError::Refused(why));
    }
    tracing::info!(%control, node = %registration.node, "registered with the balancer");
    backoff.established(crate::now());
    tokio::select! {
        _ = shutdown.cancelled() => {
            conn.close(0u32.into(), b"cm shutting down");
            Ok(())
        }
        e = conn.closed() => Err(e.into()),
    }
}
