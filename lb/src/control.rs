//! The balancer's side of the control protocol
//! ([`lb_protocol::control`]): the QUIC endpoint CMs register on, one task
//! per control connection. A connection's registration is checked (the node
//! name must match the client certificate, the server id must fit the
//! QUIC-LB configuration) and handed to [`Routing`]; when the connection
//! ends, so does the registration.

use std::sync::Arc;
use std::time::Duration;

use lb_protocol::QuicLbSettings;
use lb_protocol::control::{self, Answer, Registration};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::membership::RegistrationId;
use crate::metrics::Metrics;
use crate::routing::Routing;
use crate::server::LbError;

/// How long a CM has to open its registration stream, and then to send
/// its registration.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(5);

/// The control endpoint's QUIC settings: the balancer's cluster certificate,
/// CMs' client certificates required.
pub(crate) fn server_config(pki_dir: &std::path::Path) -> Result<quinn::ServerConfig, LbError> {
    let pki = certs::PkiPaths::new(pki_dir);
    let tls =
        certs::cluster_server_config(&pki.ca_cert(), &pki.lb_cert(), &pki.lb_key(), control::ALPN)?;
    let tls = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| LbError::Config(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(tls));
    config.transport_config(Arc::new(control::transport()));
    Ok(config)
}

/// What the control tasks share.
pub(crate) struct Control {
    /// Where registrations go.
    pub(crate) routing: Arc<Routing>,
    /// Counts refused connections.
    pub(crate) metrics: Arc<Metrics>,
    /// To check that a server id fits.
    pub(crate) quic_lb: QuicLbSettings,
}

/// Accepts control connections until shutdown, one task each.
pub(crate) async fn run(
    control: Arc<Control>,
    endpoint: quinn::Endpoint,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => return,
            i = endpoint.accept() => match i { Some(i) => i, None => return },
        };
        tasks.spawn(serve_cm(control.clone(), incoming));
    }
}

/// One CM's control connection: its registration, then its life.
async fn serve_cm(control: Arc<Control>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%remote, error = %e, "refused control connection: handshake failed");
            control.metrics.dropped("control_refused");
            return;
        }
    };
    let name = conn
        .peer_identity()
        .and_then(|id| {
            id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|chain| chain.first().and_then(certs::node_name_from_cert));
    let Some(name) = name else {
        tracing::warn!(%remote, "refused control connection: certificate names no CM");
        conn.close(1u32.into(), b"no node name");
        return;
    };
    let registration = match register(&control, &conn, &name).await {
        Ok(registration) => registration,
        Err(e) => {
            tracing::warn!(%remote, node = %name, error = %e, "registration refused");
            return;
        }
    };
    let reason = conn.closed().await;
    if control.routing.connection_ended(&name, registration) {
        tracing::info!(node = %name, %reason, "CM left the balancer");
    }
}

/// Reads, checks and answers the registration on `conn`, whose client
/// certificate names `name`.
async fn register(
    control: &Control,
    conn: &quinn::Connection,
    name: &str,
) -> Result<RegistrationId, String> {
    let (mut send, mut recv) = tokio::time::timeout(REGISTRATION_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| "no registration".to_owned())?
        .map_err(|e| e.to_string())?;
    let line = tokio::time::timeout(
        REGISTRATION_TIMEOUT,
        recv.read_to_end(control::MAX_REGISTRATION_LEN),
    )
    .await
    .map_err(|_| "slow registration".to_owned())?;
    let checked = line
        .map_err(|e| format!("unreadable registration: {e}"))
        .and_then(|line| check(&line, name, &control.quic_lb));
    let accepted = checked.and_then(|(reg, server_id)| {
        control
            .routing
            .register(name, server_id, reg.encap)
            .map(|joined| (reg, joined))
            .map_err(|refused| refused.to_string())
    });
    let (reg, (registration, draining)) = match accepted {
        Ok(ok) => ok,
        Err(why) => {
            let _ = send
                .write_all(&Answer::Refused(why.clone()).to_line())
                .await;
            let _ = send.finish();
            // Closing at once could discard the answer: let the CM read why
            // (bounded), then close.
            let _ = tokio::time::timeout(REGISTRATION_TIMEOUT, send.stopped()).await;
            conn.close(2u32.into(), b"registration refused");
            return Err(why);
        }
    };
    // In the table from here on: even if the answer cannot be sent, the
    // registration ends with the connection.
    if let Err(e) = send.write_all(&Answer::Accepted.to_line()).await {
        tracing::debug!(node = name, error = %e, "could not answer a registration");
    }
    let _ = send.finish();
    tracing::info!(node = name, encap = %reg.encap, server_id = reg.server_id, draining, "CM joined the balancer");
    Ok(registration)
}

/// Parses a registration line from the CM whose certificate names
/// `cert_name`: the node name must match, and the server id fit `quic_lb`.
/// Returns the registration and its server id octets.
fn check(
    line: &[u8],
    cert_name: &str,
    quic_lb: &QuicLbSettings,
) -> Result<(Registration, Vec<u8>), String> {
    let reg = Registration::from_line(line).map_err(|e| e.to_string())?;
    if reg.node != cert_name {
        return Err(format!(
            "node {} does not match certificate {cert_name}",
            reg.node
        ));
    }
    match quic_lb.server_id_bytes(reg.server_id) {
        Some(id) => Ok((reg, id)),
        None => Err(format!("server id {} does not fit", reg.server_id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(node: &str, server_id: u64) -> Vec<u8> {
        Registration {
            node: node.into(),
            server_id,
            encap: "127.0.0.1:9001".parse().unwrap(),
        }
        .to_line()
    }

    #[test]
    fn a_registration_naming_its_certificate_with_a_fitting_server_id_passes() {
        let (reg, id) = check(&line("cm-3", 3), "cm-3", &QuicLbSettings::default()).unwrap();
        assert_eq!(reg.node, "cm-3");
        assert_eq!(id, vec![0, 3]);
    }

    #[test]
    fn a_registration_for_another_node_or_an_oversized_server_id_is_refused() {
        let settings = QuicLbSettings::default();
        assert_eq!(
            check(&line("cm-2", 2), "cm-3", &settings).unwrap_err(),
            "node cm-2 does not match certificate cm-3"
        );
        assert_eq!(
            check(&line("cm-3", 70_000), "cm-3", &settings).unwrap_err(),
            "server id 70000 does not fit"
        );
        assert!(
            check(b"hello\n", "cm-3", &settings)
                .unwrap_err()
                .starts_with("bad registration: ")
        );
    }
}
