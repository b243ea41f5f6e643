//! Stream negotiation on a fresh connection: stream header, SASL, then
//! resource binding or XEP-0198 resumption. Generic over the byte stream,
//! so tools (the interop harness) use it over TCP and TLS too.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::BytesMut;
use quinn::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use xmpp_sasl::{ChannelBindings, HtClient, HtMechanism, Mechanism, ScramClient};
use xmpp_stream::element::Element;
use xmpp_stream::framer::{FrameEvent, Framer, Limits};
use xmpp_stream::{ns, sasl2, stream};

use crate::{ClientError, event};

/// A client's XMPP stream over any byte stream (a QUIC stream, TLS over
/// TCP), driven step by step: what the session task and the interop harness
/// use before (and, for the harness, after) login.
pub struct Negotiation<W = SendStream, R = RecvStream> {
    /// Where bytes go.
    pub send: W,
    /// Where bytes come from.
    pub recv: R,
    /// The incoming stream's framer.
    pub framer: Framer,
}

impl<W: AsyncWrite + Unpin, R: AsyncRead + Unpin> Negotiation<W, R> {
    /// A negotiation over a fresh stream.
    pub fn new(send: W, recv: R) -> Self {
        Self {
            send,
            recv,
            framer: Framer::new(Limits {
                max_stanza_bytes: 1024 * 1024,
                ..Limits::default()
            }),
        }
    }

    /// Writes raw XML.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let written = async {
            self.send.write_all(bytes).await?;
            self.send.flush().await
        };
        written
            .await
            .map_err(|e| ClientError::Disconnected(e.to_string()))
    }

    /// The next framing event (header, element, end).
    pub async fn next(&mut self) -> Result<FrameEvent, ClientError> {
        loop {
            if let Some(ev) = self
                .framer
                .next_event()
                .map_err(|e| ClientError::Protocol(e.to_string()))?
            {
                return Ok(ev);
            }
            let mut buf = BytesMut::with_capacity(16 * 1024);
            match self.recv.read_buf(&mut buf).await {
                Ok(0) => return Err(ClientError::Disconnected("stream closed".into())),
                Ok(_) => self.framer.push(&buf),
                Err(e) => return Err(ClientError::Disconnected(e.to_string())),
            }
        }
    }

    /// The next top-level element; stream errors become errors.
    pub async fn element(&mut self) -> Result<Element, ClientError> {
        match self.next().await? {
            FrameEvent::Element(raw) => {
                let el = Element::parse_in_stream(&raw)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                if el.name == "error" && el.ns == ns::STREAMS {
                    return Err(ClientError::Stream(event::stream_error_condition(&el)));
                }
                Ok(el)
            }
            FrameEvent::Open(_) => Err(ClientError::Protocol("unexpected stream header".into())),
            FrameEvent::Close => Err(ClientError::Disconnected("server closed the stream".into())),
        }
    }

    /// Opens (or restarts) the stream and waits for the server's header.
    pub async fn open(&mut self, domain: &str) -> Result<(), ClientError> {
        self.open_with(domain, &[]).await
    }

    /// [`Self::open`], writing `behind` in the same flight as the header
    /// (a pipelined first element).
    pub async fn open_with(&mut self, domain: &str, behind: &[u8]) -> Result<(), ClientError> {
        self.write_opening(domain, behind).await?;
        self.read_opening().await
    }

    /// Writes the stream header and `behind` in one flight.
    async fn write_opening(&mut self, domain: &str, behind: &[u8]) -> Result<(), ClientError> {
        self.framer.restart();
        let mut flight = stream::client_header(domain, None);
        flight.extend_from_slice(behind);
        self.write(&flight).await
    }

    /// Waits for the server's stream header.
    async fn read_opening(&mut self) -> Result<(), ClientError> {
        match self.next().await? {
            FrameEvent::Open(_) => Ok(()),
            _ => Err(ClientError::Protocol("expected a stream header".into())),
        }
    }

    /// Authenticates with `mechanism` (reads the features first).
    #[cfg_attr(not(feature = "tools"), allow(dead_code))] // (the tools' API)
    pub async fn authenticate(
        &mut self,
        username: &str,
        password: &str,
        mechanism: Mechanism,
    ) -> Result<(), ClientError> {
        self.authenticate_cached(username, password, mechanism, None)
            .await
    }

    /// [`Self::authenticate`], taking SCRAM SaltedPasswords from `cache`.
    #[cfg_attr(not(feature = "tools"), allow(dead_code))] // (the tools' API)
    pub async fn authenticate_cached(
        &mut self,
        username: &str,
        password: &str,
        mechanism: Mechanism,
        cache: Option<&std::sync::Arc<xmpp_sasl::SaltedCache>>,
    ) -> Result<(), ClientError> {
        let features = self.element().await?;
        self.sasl1(&features, username, password, mechanism, cache)
            .await
    }

    /// RFC 6120 SASL with `mechanism` on the `features` already read; the
    /// caller restarts the stream next.
    pub async fn sasl1(
        &mut self,
        features: &Element,
        username: &str,
        password: &str,
        mechanism: Mechanism,
        cache: Option<&std::sync::Arc<xmpp_sasl::SaltedCache>>,
    ) -> Result<(), ClientError> {
        let offered = features
            .child("mechanisms", ns::SASL)
            .map(|m| m.elements().map(|e| e.text()).collect::<Vec<_>>())
            .unwrap_or_default();
        if !offered.iter().any(|m| m == mechanism.name()) {
            return Err(ClientError::Auth("invalid-mechanism".into()));
        }
        let (scram, initial) = sasl_client(username, password, mechanism, cache);
        let auth = stream::sasl_element("auth", Some(mechanism.name()), Some(&B64.encode(initial)));
        self.write(&auth).await?;
        let mut verifier = Verifier::from(scram);
        self.exchange(&mut verifier, false).await.map(|_| ())
    }

    /// SASL2 (XEP-0388): `request` (its mechanism and initial response
    /// are filled in here) with its inline requests; on success, what the
    /// `<success/>` said, after the features that follow it were read (no
    /// stream restart). A `<failure/>` leaves the stream open for a retry
    /// ([`ClientError::Auth`]).
    #[cfg_attr(not(feature = "tools"), allow(dead_code))] // (the tools' API)
    pub async fn sasl2(
        &mut self,
        request: sasl2::Authenticate,
        username: &str,
        password: &str,
        mechanism: Mechanism,
    ) -> Result<Sasl2Outcome, ClientError> {
        let started = Sasl2Start::new(request, username, password, mechanism);
        self.write(&started.authenticate).await?;
        self.sasl2_finish(started).await
    }

    /// The rest of a SASL2 exchange whose `<authenticate/>` is written
    /// (by [`Self::sasl2`], or pipelined behind the stream header).
    pub(crate) async fn sasl2_finish(
        &mut self,
        mut started: Sasl2Start,
    ) -> Result<Sasl2Outcome, ClientError> {
        let success = self.exchange(&mut started.verifier, true).await?;
        let features = self.element().await?;
        Ok(Sasl2Outcome { success, features })
    }

    /// Runs a SASL exchange whose first element is written: challenges
    /// answered, the server's signature checked; returns the success.
    async fn exchange(
        &mut self,
        verifier: &mut Verifier,
        sasl2: bool,
    ) -> Result<sasl2::Success, ClientError> {
        let protocol = |_| ClientError::Protocol("SASL data is not base64".into());
        let namespace = if sasl2 { ns::SASL2 } else { ns::SASL };
        loop {
            let el = self.element().await?;
            if el.ns != namespace {
                return Err(ClientError::Protocol(format!(
                    "unexpected <{}/> in {} during SASL",
                    el.name, el.ns
                )));
            }
            match el.name.as_str() {
                "challenge" => {
                    let data = sasl2::read_data(&el).map_err(protocol)?;
                    let Verifier::Scram(scram) = verifier else {
                        return Err(ClientError::Protocol(
                            "challenge for a one-message mechanism".into(),
                        ));
                    };
                    let reply = scram
                        .handle_server_first(&data)
                        .map_err(|e| ClientError::Auth(e.condition().to_owned()))?;
                    let response = if sasl2 {
                        sasl2::data_element("response", &reply)
                    } else {
                        stream::sasl_element("response", None, Some(&B64.encode(reply)))
                    };
                    self.write(&response).await?;
                }
                "success" => {
                    let success = if sasl2 {
                        sasl2::Success::parse(&el).map_err(protocol)?
                    } else {
                        sasl2::Success {
                            additional_data: sasl2::read_data(&el).map_err(protocol)?,
                            ..sasl2::Success::default()
                        }
                    };
                    let verified = match verifier {
                        Verifier::Scram(scram) => {
                            scram.verify_server_final(&success.additional_data)
                        }
                        // (FAST: the server proves it knows the token)
                        Verifier::Ht(ht) => ht.verify_responder(&success.additional_data),
                        Verifier::None => Ok(()),
                    };
                    verified.map_err(|_| ClientError::Auth("server signature invalid".into()))?;
                    return Ok(success);
                }
                "failure" => {
                    let cond = if sasl2 {
                        sasl2::failure_condition(&el)
                    } else {
                        el.elements()
                            .find(|c| c.name != "text")
                            .map(|c| c.name.clone())
                            .unwrap_or_else(|| "not-authorized".into())
                    };
                    return Err(ClientError::Auth(cond));
                }
                other => {
                    return Err(ClientError::Protocol(format!(
                        "unexpected <{other}/> during SASL"
                    )));
                }
            }
        }
    }

    /// Binds a resource; `features` are the stream features already read.
    pub async fn bind(
        &mut self,
        features: &Element,
        resource: Option<&str>,
    ) -> Result<String, ClientError> {
        if features.child("bind", ns::BIND).is_none() {
            return Err(ClientError::Protocol(
                "server offers no resource binding".into(),
            ));
        }
        let mut bind = Element::new("bind", ns::BIND);
        if let Some(r) = resource {
            bind = bind.with_child(Element::new("resource", ns::BIND).with_text(r));
        }
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", "bind-1")
            .with_child(bind);
        self.write(&iq.to_bytes(ns::CLIENT)).await?;
        let reply = self.element().await?;
        if reply.attr("type") == Some("result") {
            return reply
                .child("bind", ns::BIND)
                .and_then(|b| b.child("jid", ns::BIND))
                .map(|j| j.text())
                .ok_or_else(|| ClientError::Protocol("bind result without a JID".into()));
        }
        Err(ClientError::StanzaError(
            event::stanza_error_condition(&reply).unwrap_or_else(|| "undefined-condition".into()),
        ))
    }

    /// XEP-0198 resumption: `Some(h)` of `<resumed/>`, or None if refused.
    pub async fn resume(&mut self, previd: &str, h: u32) -> Result<Option<u32>, ClientError> {
        self.write(&stream::sm_element(
            "resume",
            &[("previd", previd), ("h", &h.to_string())],
        ))
        .await?;
        let answer = self.element().await?;
        match (answer.ns.as_str(), answer.name.as_str()) {
            (ns::SM, "resumed") => answer
                .attr("h")
                .and_then(|h| h.parse().ok())
                .map(Some)
                .ok_or_else(|| ClientError::Protocol("<resumed/> without h".into())),
            (ns::SM, "failed") => Ok(None),
            _ => Err(ClientError::Protocol(format!(
                "unexpected <{}/> after <resume/>",
                answer.name
            ))),
        }
    }
}

/// What a SASL2 login got: the `<success/>` and the stream features that
/// followed it.
#[derive(Clone, Debug)]
pub struct Sasl2Outcome {
    /// The success, with its inline answers.
    pub success: sasl2::Success,
    /// The features of the authenticated stream.
    pub features: Element,
}

/// What checks the server's side of an exchange.
enum Verifier {
    /// SCRAM: the server's signature.
    Scram(ScramClient),
    /// An HT mechanism (FAST): the responder message.
    Ht(HtClient),
    /// PLAIN: nothing.
    None,
}

impl From<Option<ScramClient>> for Verifier {
    fn from(scram: Option<ScramClient>) -> Self {
        scram.map_or(Verifier::None, Verifier::Scram)
    }
}

/// A SASL2 `<authenticate/>` ready to write, and the SASL client that
/// continues the exchange.
pub(crate) struct Sasl2Start {
    /// The element's bytes.
    pub(crate) authenticate: Vec<u8>,
    verifier: Verifier,
}

impl Sasl2Start {
    /// `request` with `mechanism`'s initial response filled in.
    pub(crate) fn new(
        mut request: sasl2::Authenticate,
        username: &str,
        password: &str,
        mechanism: Mechanism,
    ) -> Self {
        let (scram, initial) = sasl_client(username, password, mechanism, None);
        request.mechanism = mechanism.name().to_owned();
        request.initial_response = Some(initial);
        Self {
            authenticate: request.to_element().to_bytes(ns::CLIENT),
            verifier: Verifier::from(scram),
        }
    }

    /// `request` as a FAST token use: `token` with its HT `mechanism` over
    /// a connection with `bindings`; None if the mechanism is not an HT
    /// one or needs a binding this connection lacks.
    pub(crate) fn with_token(
        mut request: sasl2::Authenticate,
        username: &str,
        token: &str,
        mechanism: &str,
        bindings: &ChannelBindings,
    ) -> Option<Self> {
        let mechanism = HtMechanism::from_name(mechanism)?;
        let ht = HtClient::new(mechanism, username, token, bindings).ok()?;
        request.mechanism = mechanism.name().to_owned();
        request.initial_response = Some(ht.initial_response());
        Some(Self {
            authenticate: request.to_element().to_bytes(ns::CLIENT),
            verifier: Verifier::Ht(ht),
        })
    }
}

/// The channel bindings of a QUIC connection as FAST's HT mechanisms use
/// them: its `tls-exporter` (RFC 9266; TLS 1.3 makes QUIC's empty context
/// the same as none).
pub(crate) fn channel_bindings(conn: &quinn::Connection) -> ChannelBindings {
    let mut exporter = [0u8; xmpp_sasl::channel_binding::TLS_EXPORTER_LEN];
    let known = conn
        .export_keying_material(
            &mut exporter,
            xmpp_sasl::channel_binding::TLS_EXPORTER_LABEL,
            b"",
        )
        .is_ok();
    ChannelBindings {
        tls_exporter: known.then(|| exporter.to_vec()),
        tls_server_end_point: None,
    }
}

/// The SASL client for `mechanism` and its initial response.
fn sasl_client(
    username: &str,
    password: &str,
    mechanism: Mechanism,
    cache: Option<&std::sync::Arc<xmpp_sasl::SaltedCache>>,
) -> (Option<ScramClient>, Vec<u8>) {
    let scram = mechanism.scram_hash().map(|h| {
        let client = ScramClient::new(h, username, password);
        match cache {
            Some(c) => client.with_cache(c.clone()),
            None => client,
        }
    });
    let initial = match &scram {
        Some(s) => s.client_first(),
        None => xmpp_sasl::plain_message(username, password),
    };
    (scram, initial)
}

/// How long a 0-RTT attempt waits for the server's handshake before it
/// dials again in 1-RTT: a handshake answers in one round trip, or after
/// a lost first flight in quinn's first retransmission (about 1 s) plus
/// one, so 3 s covers round trips up to about 2 s with one loss.
const ZERO_RTT_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Opens a QUIC connection and its XMPP stream, with what `behind`
/// makes of the connection written in the stream header's flight;
/// returns the stream's features, what `behind` made, and whether the
/// flight went as 0-RTT data. With `zero_rtt`, and a session ticket that
/// allows it, the flight goes with the handshake (`behind` is told it is
/// early: no channel binding yet); if the server rejects early data, the
/// flight is lost and `behind` makes it again for a new stream.
pub(crate) async fn dial<T>(
    endpoint: &quinn::Endpoint,
    server: std::net::SocketAddr,
    domain: &str,
    zero_rtt: bool,
    mut behind: impl FnMut(&quinn::Connection, bool) -> (Vec<u8>, T),
) -> Result<(quinn::Connection, Negotiation, Element, T, bool), ClientError> {
    let connect = || {
        endpoint
            .connect(server, domain)
            .map_err(|e| ClientError::Unreachable(e.to_string()))
    };
    let mut handshaken = None;
    if zero_rtt {
        match connect()?.into_0rtt() {
            Ok((conn, accepted)) => {
                let (send, recv) = conn.open_bi().await.map_err(ClientError::from_connection)?;
                let mut nego = Negotiation::new(send, recv);
                let (flight, made) = behind(&conn, true);
                nego.write_opening(domain, &flight).await?;
                // (the server's answer comes in the same flight as its
                // handshake: waiting for the verdict costs nothing)
                match tokio::time::timeout(ZERO_RTT_WAIT, accepted).await {
                    Ok(true) => {
                        nego.read_opening().await?;
                        let features = nego.element().await?;
                        return Ok((conn, nego, features, made, true));
                    }
                    Ok(false) => {
                        tracing::debug!("0-RTT rejected; the login goes again after the handshake");
                        handshaken = Some(conn);
                    }
                    Err(_) => {
                        // An unanswered 0-RTT handshake: the network, or a
                        // copy of this flight that reached the server first
                        // and holds its connection id (a server routes the
                        // original to the copy's connection, which drops
                        // it): a fresh connection, in 1-RTT.
                        tracing::debug!("0-RTT handshake unanswered; dialing again");
                        conn.close(0u32.into(), b"unanswered");
                    }
                }
            }
            Err(connecting) => {
                handshaken = Some(connecting.await.map_err(ClientError::from_connection)?);
            }
        }
    }
    let conn = match handshaken {
        Some(conn) => conn,
        None => connect()?.await.map_err(ClientError::from_connection)?,
    };
    let (send, recv) = conn.open_bi().await.map_err(ClientError::from_connection)?;
    let mut nego = Negotiation::new(send, recv);
    let (flight, made) = behind(&conn, false);
    nego.open_with(domain, &flight).await?;
    let features = nego.element().await?;
    Ok((conn, nego, features, made, false))
}
