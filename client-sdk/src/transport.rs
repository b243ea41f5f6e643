//! Reaching an XMPP server over any transport clients use: plain TCP,
//! TCP with STARTTLS (RFC 6120 §5), direct TLS (XEP-0368) or QUIC
//! (XEP-0467). The stream comes back opened (the server's header read) as
//! a [`Negotiation`] over boxed byte streams, for tools that drive XMPP
//! step by step: the interop harness and the load tool.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncRead, AsyncWrite};
use xmpp_stream::element::Element;
use xmpp_stream::ns;

use crate::ClientError;
use crate::negotiation::Negotiation;

/// A client stream over any transport.
pub type Io = Negotiation<Box<dyn AsyncWrite + Unpin + Send>, Box<dyn AsyncRead + Unpin + Send>>;

/// How to reach the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TCP without TLS (only servers configured to allow it).
    Plain,
    /// TCP, then STARTTLS.
    Starttls,
    /// TLS from the first byte, ALPN `xmpp-client`.
    Tls,
    /// QUIC, ALPN `xmpp-client`, one bidirectional stream.
    Quic,
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "plain" => Ok(Self::Plain),
            "tcp" | "starttls" => Ok(Self::Starttls),
            "tls" => Ok(Self::Tls),
            "quic" => Ok(Self::Quic),
            other => Err(format!(
                "unknown transport {other} (plain, starttls, tls or quic)"
            )),
        }
    }
}

/// An open stream, with the QUIC connection that carries it, if any.
pub struct Connected {
    /// The stream, its header exchanged.
    pub io: Io,
    /// The QUIC connection (kept open while the stream is used).
    pub quic: Option<quinn::Connection>,
}

/// Connects clients to one server.
#[derive(Clone)]
pub struct Dialer {
    server: SocketAddr,
    domain: String,
    transport: Transport,
    /// TLS for STARTTLS (no ALPN) and for direct TLS (ALPN `xmpp-client`).
    starttls: Arc<rustls::ClientConfig>,
    direct: Arc<rustls::ClientConfig>,
    quic: Option<quinn::ClientConfig>,
    /// Local addresses TCP connections leave from, in turn (empty: the
    /// system's choice), and the next one's index.
    sources: Arc<[IpAddr]>,
    next_source: Arc<AtomicUsize>,
}

impl Dialer {
    /// A dialer trusting `roots` for the server's certificate (issued for
    /// `domain`).
    pub fn new(
        server: SocketAddr,
        domain: &str,
        transport: Transport,
        roots: rustls::RootCertStore,
    ) -> Result<Self, ClientError> {
        let config = |alpn: &[&[u8]]| crate::tls::client_config(roots.clone(), alpn).map(Arc::new);
        let direct = config(&[b"xmpp-client"])?;
        let quic = match transport {
            Transport::Quic => {
                let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(direct.clone())
                    .map_err(|e| ClientError::Config(e.to_string()))?;
                Some(quinn::ClientConfig::new(Arc::new(crypto)))
            }
            _ => None,
        };
        Ok(Self {
            server,
            domain: domain.to_owned(),
            transport,
            starttls: config(&[])?,
            direct,
            quic,
            sources: Arc::from([]),
            next_source: Arc::default(),
        })
    }

    /// TCP connections leave from `sources` in turn: more connections to one
    /// server than one address pair has ephemeral ports (about 28 000 on
    /// Linux), as a load tool on loopback needs (127.0.0.1, 127.0.0.2, …).
    pub fn with_tcp_sources(mut self, sources: Vec<IpAddr>) -> Self {
        self.sources = Arc::from(sources);
        self
    }

    /// A TCP connection to the server, from the next source if any.
    async fn tcp(&self) -> std::io::Result<tokio::net::TcpStream> {
        if self.sources.is_empty() {
            return tokio::net::TcpStream::connect(self.server).await;
        }
        let source =
            self.sources[self.next_source.fetch_add(1, Ordering::Relaxed) % self.sources.len()];
        let socket = match source {
            IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(source, 0))?;
        socket.connect(self.server).await
    }

    /// The XMPP domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The transport.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// A QUIC client endpoint on a fresh UDP port, for [`Self::connect`]
    /// (one endpoint carries many connections; one per client lets each
    /// move on its own).
    pub fn endpoint(&self) -> Result<quinn::Endpoint, ClientError> {
        let bind: SocketAddr = if self.server.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let mut ep = quinn::Endpoint::client(bind)
            .map_err(|e| ClientError::Config(format!("UDP socket: {e}")))?;
        if let Some(c) = &self.quic {
            ep.set_default_client_config(c.clone());
        }
        Ok(ep)
    }

    /// Connects and opens the stream (after STARTTLS where asked). QUIC
    /// needs an `endpoint` from [`Self::endpoint`].
    pub async fn connect(
        &self,
        endpoint: Option<&quinn::Endpoint>,
    ) -> Result<Connected, ClientError> {
        self.connect_with(endpoint, &[]).await
    }

    /// [`Self::connect`], writing `behind` (a pipelined `<authenticate/>`)
    /// in the stream header's flight.
    pub async fn connect_with(
        &self,
        endpoint: Option<&quinn::Endpoint>,
        behind: &[u8],
    ) -> Result<Connected, ClientError> {
        let name = rustls::pki_types::ServerName::try_from(self.domain.clone())
            .map_err(|e| ClientError::Config(e.to_string()))?;
        let (mut io, quic): (Io, _) = match self.transport {
            Transport::Quic => {
                let ep =
                    endpoint.ok_or_else(|| ClientError::Config("QUIC needs an endpoint".into()))?;
                let conn = ep
                    .connect(self.server, &self.domain)
                    .map_err(|e| ClientError::Unreachable(e.to_string()))?
                    .await
                    .map_err(ClientError::from_connection)?;
                let (send, recv) = conn.open_bi().await.map_err(ClientError::from_connection)?;
                (Negotiation::new(Box::new(send), Box::new(recv)), Some(conn))
            }
            Transport::Plain | Transport::Starttls | Transport::Tls => {
                let mut tcp = self
                    .tcp()
                    .await
                    .map_err(|e| ClientError::Unreachable(e.to_string()))?;
                let _ = tcp.set_nodelay(true);
                let tls = match self.transport {
                    Transport::Plain => None,
                    Transport::Starttls => {
                        tcp = starttls(tcp, &self.domain).await?;
                        Some(&self.starttls)
                    }
                    _ => Some(&self.direct),
                };
                match tls {
                    None => {
                        let (r, w) = tcp.into_split();
                        (Negotiation::new(Box::new(w), Box::new(r)), None)
                    }
                    Some(config) => {
                        let tls = tokio_rustls::TlsConnector::from(config.clone())
                            .connect(name, tcp)
                            .await
                            .map_err(|e| ClientError::Unreachable(format!("TLS: {e}")))?;
                        let (r, w) = tokio::io::split(tls);
                        (Negotiation::new(Box::new(w), Box::new(r)), None)
                    }
                }
            }
        };
        io.open_with(&self.domain, behind).await?;
        Ok(Connected { io, quic })
    }
}

/// RFC 6120 §5 from the client side; returns the stream to wrap in TLS.
async fn starttls(
    tcp: tokio::net::TcpStream,
    domain: &str,
) -> Result<tokio::net::TcpStream, ClientError> {
    let (r, w) = tokio::io::split(tcp);
    let mut plain = Negotiation::new(w, r);
    plain.open(domain).await?;
    let features = plain.element().await?;
    if features.child("starttls", ns::TLS).is_none() {
        return Err(ClientError::Protocol("no <starttls/> offered".into()));
    }
    let start = Element::new("starttls", ns::TLS).to_bytes(ns::CLIENT);
    plain.write(&start).await?;
    let proceed = plain.element().await?;
    if proceed.name != "proceed" {
        return Err(ClientError::Protocol(format!(
            "expected <proceed/>, got <{}/>",
            proceed.name
        )));
    }
    let Negotiation { send, recv, .. } = plain;
    Ok(recv.unsplit(send))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tcp_connections_leave_from_the_given_sources_in_turn() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let server = listener.local_addr().expect("address");
        let sources: Vec<IpAddr> = vec![[127, 0, 0, 2].into(), [127, 0, 0, 3].into()];
        let dialer = Dialer::new(
            server,
            "example.test",
            Transport::Plain,
            rustls::RootCertStore::empty(),
        )
        .expect("dialer")
        .with_tcp_sources(sources.clone());
        let mut seen = Vec::new();
        for _ in 0..3 {
            let _client = dialer.tcp().await.expect("connected");
            let (_, peer) = listener.accept().await.expect("accepted");
            seen.push(peer.ip());
        }
        assert_eq!(seen, vec![sources[0], sources[1], sources[0]]);
    }
}
