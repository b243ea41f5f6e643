//! What the CM's integration tests share: a test core that speaks the
//! CM↔core protocol over real QUIC with the cluster certificates. (Each
//! test file uses part of it.)
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::BytesMut;
use cm_protocol::{Frame, FrameDecoder, read_frame};
use tokio::sync::mpsc;

/// A test core: accepts one CM connection, answers its `Hello` with the
/// given `Welcome`, then writes what the test gives it and hands the test
/// what the CM sends.
pub struct TestCore {
    /// Its member id (for the cluster's `SlotOwners`).
    pub member: String,
    /// Where CMs reach it.
    pub addr: SocketAddr,
    from_cm: mpsc::UnboundedReceiver<Frame>,
    to_cm: mpsc::UnboundedSender<Frame>,
    _endpoint: quinn::Endpoint,
}

impl TestCore {
    /// A core named `member` with the cluster PKI in `pki`, answering
    /// `welcome`.
    pub fn start(pki: &Path, member: &str, welcome: Frame) -> TestCore {
        let paths = certs::PkiPaths::new(pki);
        let tls = certs::cluster_server_config(
            &paths.ca_cert(),
            &paths.core_cert(),
            &paths.core_key(),
            cm_protocol::ALPN,
        )
        .expect("core tls");
        let tls = quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("quic tls");
        let config = quinn::ServerConfig::with_crypto(Arc::new(tls));
        let endpoint =
            quinn::Endpoint::server(config, ([127, 0, 0, 1], 0).into()).expect("core endpoint");
        let addr = endpoint.local_addr().expect("core address");
        let (to_test, from_cm) = mpsc::unbounded_channel();
        let (to_cm, mut outgoing) = mpsc::unbounded_channel::<Frame>();
        let accepting = endpoint.clone();
        tokio::spawn(async move {
            let Some(incoming) = accepting.accept().await else {
                return;
            };
            let Ok(conn) = incoming.await else { return };
            let Ok((mut send, mut recv)) = conn.accept_bi().await else {
                return;
            };
            let mut decoder = FrameDecoder::new();
            let Ok(Some(Frame::Hello { .. })) = read_frame(&mut recv, &mut decoder).await else {
                return;
            };
            let mut out = BytesMut::new();
            welcome.encode(&mut out);
            if send.write_all(&out).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    frame = outgoing.recv() => {
                        let Some(frame) = frame else { return };
                        let mut out = BytesMut::new();
                        frame.encode(&mut out);
                        if send.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                    frame = read_frame(&mut recv, &mut decoder) => match frame {
                        Ok(Some(frame)) => {
                            let _ = to_test.send(frame);
                        }
                        _ => return,
                    },
                }
            }
        });
        TestCore {
            member: member.into(),
            addr,
            from_cm,
            to_cm,
            _endpoint: endpoint,
        }
    }

    /// Sends `frame` to the CM.
    pub fn send(&self, frame: Frame) {
        self.to_cm.send(frame).expect("core task");
    }

    /// The next frame from the CM; None once its link closed.
    pub async fn recv(&mut self) -> Option<Frame> {
        self.from_cm.recv().await
    }

    /// A frame the CM sent already, if any (without waiting).
    pub fn try_recv(&mut self) -> Option<Frame> {
        self.from_cm.try_recv().ok()
    }
}
