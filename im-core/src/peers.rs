//! Links from this core to its peers in a cluster of cores (issue 15): one
//! QUIC connection (mutual TLS with the cluster's core certificate, the
//! CM link's frame codec) to every other live core, dialed by this core.
//! On it this core says `Hello` (its member id), then its `SlotOwners`,
//! then the `Forward` frames the router emits; the peer answers `Welcome`
//! and a `ForwardDone` per forward, which go to the router. The peer's own
//! forwards come on the link it dials to this core (an ordinary node of
//! [`crate::links`]).
//!
//! `SlotOwners` is said whenever it changes (from a watch, never dropped);
//! a frame that finds no link (or a full one: its queue is bounded in
//! bytes) is refused to the router at
//! once, and the router sends it again when the link is back
//! ([`Input::PeerLink`]) or the recipient's slot moves.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use cm_protocol::{Frame, FrameDecoder, read_frame};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use xmpp_stream::pacing::Backoff;

use crate::driver::Event;
use crate::links::{LinkReceiver, LinkSender};
use crate::router::Input;

/// Bytes of frames queued per peer link at most (a forward beyond them is
/// refused to the router, which sends it again later).
pub const PEER_QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// Reconnection to a peer: 0.5–1 × 100 ms doubling to 2 s.
const RECONNECT: Backoff = Backoff::spread(Duration::from_millis(100), Duration::from_secs(2));

/// The sending ends of the links to the live peers, by member id.
#[derive(Clone, Default)]
pub struct PeerLinks {
    inner: Arc<Mutex<HashMap<String, Peer>>>,
}

struct Peer {
    address: String,
    tx: LinkSender,
    stop: CancellationToken,
}

/// What a peer link task needs.
#[derive(Clone)]
pub struct PeerSetup {
    /// This core's member id.
    pub member: String,
    /// The endpoint to dial from.
    pub endpoint: quinn::Endpoint,
    /// TLS for dialing peers (the core certificate as client certificate).
    pub client: quinn::ClientConfig,
    /// The router's events (for `ForwardDone`, and the link's state).
    pub router: mpsc::Sender<Event>,
    /// This core's latest `SlotOwners`, said first on every link.
    pub slot_owners: watch::Receiver<Option<Frame>>,
    /// Shutdown.
    pub shutdown: CancellationToken,
}

impl PeerLinks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Peer>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `frame` for `core`; gives it back if there is no link to it
    /// or its queue is full.
    pub fn send(&self, core: &str, frame: Frame) -> Result<(), Box<Frame>> {
        let peers = self.lock();
        let Some(peer) = peers.get(core) else {
            return Err(Box::new(frame));
        };
        peer.tx.try_send(frame).map_err(|(_, f)| f)
    }

    /// The live cores are `members` (member id, address): starts a link to
    /// each new one but this core, and stops those to cores gone.
    pub fn sync(&self, members: &[(String, String)], setup: &PeerSetup) {
        let mut peers = self.lock();
        peers.retain(|core, peer| {
            let live = members.iter().any(|(m, a)| m == core && *a == peer.address);
            if !live {
                peer.stop.cancel();
            }
            live
        });
        for (core, address) in members {
            if *core == setup.member || peers.contains_key(core) {
                continue;
            }
            let (tx, rx) = LinkSender::channel(PEER_QUEUE_BYTES);
            let stop = setup.shutdown.child_token();
            tokio::spawn(run(
                setup.clone(),
                core.clone(),
                address.clone(),
                rx,
                stop.clone(),
            ));
            peers.insert(
                core.clone(),
                Peer {
                    address: address.clone(),
                    tx,
                    stop,
                },
            );
        }
    }
}

/// Keeps a link to `core` at `address` until `stop`.
async fn run(
    setup: PeerSetup,
    core: String,
    address: String,
    mut rx: LinkReceiver,
    stop: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let result = tokio::select! {
            () = stop.cancelled() => return,
            r = connect_and_pump(&setup, &core, &address, &mut rx) => r,
        };
        let _ = setup
            .router
            .send(Event::Router(Input::PeerLink {
                core: core.clone(),
                up: false,
            }))
            .await;
        match result {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::info!(peer = core, %address, error = %e, "link to a peer core ended");
            }
        }
        let delay = RECONNECT.delay(failures, rand::random::<f64>());
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Why a peer link ended.
#[derive(Debug, thiserror::Error)]
enum PeerError {
    #[error("address {0}: {1}")]
    Address(String, std::io::Error),
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("{0}")]
    Frame(#[from] cm_protocol::ReadFrameError),
    #[error("protocol: {0}")]
    Protocol(&'static str),
}

async fn connect_and_pump(
    setup: &PeerSetup,
    core: &str,
    address: &str,
    rx: &mut LinkReceiver,
) -> Result<(), PeerError> {
    let addr = resolve(address).await?;
    let conn = setup
        .endpoint
        .connect_with(setup.client.clone(), addr, certs::CORE_SERVER_NAME)?
        .await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut out = BytesMut::new();
    Frame::Hello {
        node: setup.member.clone(),
        client_addr: String::new(),
        conn_index: 0,
        pool_size: 1,
        instance: 0,
    }
    .encode(&mut out);
    let mut owners = Some(setup.slot_owners.clone());
    if let Some(frame) = owners.as_mut().and_then(|o| o.borrow_and_update().clone()) {
        frame.encode(&mut out);
    }
    send.write_all(&out).await?;
    let mut decoder = FrameDecoder::new();
    match tokio::time::timeout(Duration::from_secs(10), read_frame(&mut recv, &mut decoder)).await {
        Ok(Ok(Some(Frame::Welcome { .. }))) => {}
        Ok(Err(e)) => return Err(e.into()),
        _ => return Err(PeerError::Protocol("no welcome")),
    }
    tracing::info!(peer = core, %address, "linked to a peer core");
    let _ = setup
        .router
        .send(Event::Router(Input::PeerLink {
            core: core.to_owned(),
            up: true,
        }))
        .await;
    loop {
        tokio::select! {
            frame = rx.recv() => {
                let Some(frame) = frame else { return Ok(()) };
                out.clear();
                if frame.try_encode(&mut out).is_err() {
                    continue;
                }
                // what else is queued goes in the same write
                while let Some(more) = rx.try_recv() {
                    let _ = more.try_encode(&mut out);
                }
                send.write_all(&out).await?;
            }
            // this core's slots changed: said on every link, never dropped
            Some(frame) = slot_owners_changed(&mut owners) => {
                out.clear();
                frame.encode(&mut out);
                send.write_all(&out).await?;
            }
            frame = read_frame(&mut recv, &mut decoder) => match frame? {
                None => return Ok(()),
                Some(Frame::ForwardDone { seq, accepted }) => {
                    if setup
                        .router
                        .send(Event::Router(Input::ForwardDone {
                            core: core.to_owned(),
                            seq,
                            accepted,
                        }))
                        .await
                        .is_err()
                    {
                        return Ok(());
                    }
                }
                // SlotOwners and the like also come on the peer's own link
                Some(_) => {}
            },
        }
    }
}

async fn resolve(address: &str) -> Result<SocketAddr, PeerError> {
    let mut addrs = tokio::net::lookup_host(address)
        .await
        .map_err(|e| PeerError::Address(address.to_owned(), e))?;
    addrs.next().ok_or_else(|| {
        PeerError::Address(
            address.to_owned(),
            std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
        )
    })
}

/// The latest `SlotOwners` once it changes (pending forever outside a
/// cluster, or once its sender is gone).
async fn slot_owners_changed(
    owners: &mut Option<tokio::sync::watch::Receiver<Option<Frame>>>,
) -> Option<Frame> {
    let Some(rx) = owners else {
        return std::future::pending().await;
    };
    loop {
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
        if let Some(frame) = rx.borrow_and_update().clone() {
            return Some(frame);
        }
    }
}
