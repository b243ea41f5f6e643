//! One QUIC connection of a client: the endpoint every connection of a
//! [`crate::Client`] shares, dialing and negotiating (stream header, SASL,
//! then resumption or binding), and the live connection with its reader.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::SendStream;
use tokio::sync::mpsc;
use xmpp_sasl::Mechanism;
use xmpp_stream::element::Element;
use xmpp_stream::framer::{FrameEvent, Framer};
use xmpp_stream::{ns, sasl2};

use crate::negotiation::{Negotiation, Sasl2Outcome, Sasl2Start, channel_bindings, dial};
use crate::session::Negotiated;
use crate::{ALPN, ClientError, ConnectOptions, FastToken};

/// A FAST token is not used this close to its expiry (clocks differ).
const TOKEN_MARGIN_SECS: i64 = 60;
/// The HT mechanism bound to the connection's `tls-exporter`.
const HT_SHA_256_EXPR: &str = "HT-SHA-256-EXPR";
/// The HT mechanism without channel binding (the one usable in 0-RTT).
const HT_SHA_256_NONE: &str = "HT-SHA-256-NONE";
/// SASL conditions a refused token is answered with.
const NOT_AUTHORIZED: &str = "not-authorized";
const CREDENTIALS_EXPIRED: &str = "credentials-expired";
const INVALID_MECHANISM: &str = "invalid-mechanism";

/// Elements read ahead of the session task, per connection.
const INBOUND_QUEUE: usize = 256;

/// The QUIC endpoint of a client: one per [`crate::Client`], kept across
/// reconnections so TLS session tickets make them cheaper.
pub(crate) fn client_endpoint(opts: &ConnectOptions) -> Result<quinn::Endpoint, ClientError> {
    let roots = crate::tls::roots(&opts.trust)?;
    let mut tls = crate::tls::client_config(roots, &[ALPN])?;
    // QUIC 0-RTT: a reconnection's first flight rides with its handshake
    // (the session tickets stay in this config, kept across reconnections)
    tls.enable_early_data = opts.zero_rtt;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ClientError::Config(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    // Phones: a keep-alive inside common NAT/firewall UDP timeouts (30 s),
    // and an idle timeout after which the connection counts as lost.
    transport
        .keep_alive_interval(Some(Duration::from_secs(25)))
        .max_idle_timeout(Duration::from_secs(90).try_into().ok());
    config.transport_config(Arc::new(transport));
    let bind: SocketAddr = if opts.server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let mut endpoint =
        quinn::Endpoint::client(bind).map_err(|e| ClientError::Unreachable(e.to_string()))?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// Everything needed to open a connection for one account.
#[derive(Clone)]
pub(crate) struct Dialer {
    /// The client's endpoint (shared by all its connections).
    pub(crate) endpoint: quinn::Endpoint,
    /// The CM or balancer.
    pub(crate) server: SocketAddr,
    /// The XMPP domain (also the TLS server name).
    pub(crate) domain: String,
    /// The SASL user name.
    pub(crate) username: String,
    /// The password.
    pub(crate) password: String,
    /// The SASL mechanism.
    pub(crate) mechanism: Mechanism,
    /// Log in with SASL2, Bind2 and inline resumption where offered.
    pub(crate) sasl2: bool,
    /// The Bind2 tag (the resource becomes `tag/random`).
    pub(crate) tag: String,
    /// Enable stream management (with this resumption time; 0: the
    /// server's default).
    pub(crate) stream_management: Option<u32>,
    /// Enable carbons.
    pub(crate) carbons: bool,
    /// The SASL2 offer of the last connection that used it, shared by the
    /// dialer's clones: the next connection writes its `<authenticate/>`
    /// right behind the stream header instead of waiting a round trip
    /// for the features. Forgotten when a server answers such an attempt
    /// otherwise than with a success (see [`Dialer::connect`]).
    pub(crate) known_offer: Arc<std::sync::Mutex<Option<sasl2::Offer>>>,
    /// Use FAST tokens (XEP-0484) where offered.
    pub(crate) fast: bool,
    /// The `<user-agent id/>` FAST tokens are bound to.
    pub(crate) user_agent_id: String,
    /// The FAST token, shared by the dialer's clones and the app's handle.
    pub(crate) tokens: Arc<std::sync::Mutex<TokenState>>,
    /// Send a pipelined login as QUIC 0-RTT data where the server takes
    /// FAST tokens in early data.
    pub(crate) zero_rtt: bool,
}

/// A client's FAST token and how many logins used one.
#[derive(Debug, Default)]
pub(crate) struct TokenState {
    /// The token to log in with next, if any.
    pub(crate) token: Option<FastToken>,
    /// Logins (first or reconnections) that authenticated with a token.
    pub(crate) logins: u64,
    /// Logins whose `<authenticate/>` the server took as QUIC 0-RTT data.
    pub(crate) early_logins: u64,
}

/// A SASL2 `<authenticate/>` about to be written, and what it used.
struct Started {
    sasl2: Sasl2Start,
    /// It authenticates with the FAST token (else the password).
    by_token: bool,
    /// It goes as QUIC 0-RTT data.
    early: bool,
    /// The mechanism a token granted in its success is bound to.
    grant_mechanism: Option<String>,
}

impl Dialer {
    /// Dials and logs in: SASL2 with an inline resumption of `resumption`
    /// and a Bind2 binding (SM and carbons inline) if the server offers it
    /// and no exact `resource` is asked for (Bind2 makes `tag/random`;
    /// with one, the legacy bind follows the SASL2 success on the same
    /// stream); otherwise SASL, a stream restart, then resumption or bind.
    pub(crate) async fn connect(
        self,
        resumption: Option<(String, u32)>,
        resource: Option<String>,
    ) -> Result<(Live, Negotiated), ClientError> {
        if let Some(offer) = self.known() {
            match self
                .pipelined(&offer, resumption.clone(), resource.clone())
                .await
            {
                Pipelined::Done(done) => return done,
                // (the new connection offers less than the request used:
                // dialed again below, reading the features first)
                Pipelined::Incompatible => self.remember(None),
            }
        }
        let (conn, mut nego, features, (), _) =
            dial(&self.endpoint, self.server, &self.domain, false, |_, _| {
                (Vec::new(), ())
            })
            .await?;
        if let Some(offer) = self.usable(&features) {
            let bind2 = resource.is_none();
            let started = self.start(&offer, resumption.clone(), bind2, &conn, false);
            nego.write(&started.sasl2.authenticate).await?;
            let outcome = self
                .sasl2_login(&mut nego, &conn, started, &offer, resumption, bind2)
                .await?;
            let negotiated = self.conclude(&mut nego, &offer, outcome, resource).await?;
            self.remember(Some(offer));
            return Ok((Live::start(conn, nego), negotiated));
        }
        self.remember(None);
        nego.sasl1(
            &features,
            &self.username,
            &self.password,
            self.mechanism,
            None,
        )
        .await?;
        nego.open(&self.domain).await?;
        let features = nego.element().await?;
        let mut resumed = None;
        if let Some((id, h)) = resumption
            && features.child("sm", ns::SM).is_some()
        {
            resumed = nego.resume(&id, h).await?;
        }
        let jid = match resumed {
            Some(_) => None,
            None => Some(nego.bind(&features, resource.as_deref()).await?),
        };
        Ok((
            Live::start(conn, nego),
            Negotiated {
                resumed,
                jid,
                ..Negotiated::default()
            },
        ))
    }

    /// A SASL2 login whose `<authenticate/>` (built from the `offer` of
    /// an earlier connection) rides in the stream header's flight: one
    /// round trip less than waiting for the features. The offer is kept
    /// through a failed dial (a phone's first attempt after a loss often
    /// finds no network yet) and forgotten once a server answered
    /// otherwise than with a success.
    async fn pipelined(
        &self,
        offer: &sasl2::Offer,
        resumption: Option<(String, u32)>,
        resource: Option<String>,
    ) -> Pipelined {
        let bind2 = resource.is_none();
        // 0-RTT only with a token usable without the connection's binding
        // (the server refuses anything else in early data)
        let zero_rtt = self.zero_rtt
            && offer.fast_0rtt
            && self
                .usable_token(offer)
                .is_some_and(|t| t.mechanism == HT_SHA_256_NONE);
        let dialed = dial(
            &self.endpoint,
            self.server,
            &self.domain,
            zero_rtt,
            |conn, early| {
                let started = self.start(offer, resumption.clone(), bind2, conn, early);
                (started.sasl2.authenticate.clone(), started)
            },
        )
        .await;
        let (conn, mut nego, features, started, early) = match dialed {
            Ok(dialed) => dialed,
            Err(e) => return Pipelined::Done(Err(e)),
        };
        if early {
            self.with_tokens(|t| t.early_logins += 1);
        }
        let Some(now) = self.usable(&features).filter(|now| now.serves(offer)) else {
            return Pipelined::Incompatible;
        };
        let done = async {
            let outcome = self
                .sasl2_login(&mut nego, &conn, started, offer, resumption, bind2)
                .await?;
            self.conclude(&mut nego, offer, outcome, resource).await
        }
        .await;
        match done {
            Ok(negotiated) => {
                self.remember(Some(now));
                Pipelined::Done(Ok((Live::start(conn, nego), negotiated)))
            }
            Err(e) => {
                // (a server's answer, not a lost link, ends the offer)
                if matches!(
                    e,
                    ClientError::Auth(_) | ClientError::Protocol(_) | ClientError::Stream(_)
                ) {
                    self.remember(None);
                }
                Pipelined::Done(Err(e))
            }
        }
    }

    /// The `<authenticate/>` for `offer` on `conn` (in 0-RTT data if
    /// `early`: no channel binding is known yet): with the FAST token if
    /// there is a usable one (its count raised, and kept, before it is
    /// sent), else with the password, asking for a token where FAST is
    /// offered.
    fn start(
        &self,
        offer: &sasl2::Offer,
        resumption: Option<(String, u32)>,
        bind2: bool,
        conn: &quinn::Connection,
        early: bool,
    ) -> Started {
        let mut request = self.request(offer, resumption, bind2);
        let bindings = if early {
            xmpp_sasl::ChannelBindings::none()
        } else {
            channel_bindings(conn)
        };
        if let Some(token) = self.usable_token(offer) {
            let count = token.count.saturating_add(1);
            request.fast = Some(sasl2::FastUse {
                count: Some(count),
                invalidate: false,
            });
            let started = Sasl2Start::with_token(
                request.clone(),
                &self.username,
                &token.token,
                &token.mechanism,
                &bindings,
            );
            if let Some(sasl2) = started {
                self.with_tokens(|t| {
                    if let Some(kept) = t.token.as_mut().filter(|k| k.token == token.token) {
                        kept.count = kept.count.max(count);
                    }
                });
                return Started {
                    sasl2,
                    by_token: true,
                    early,
                    grant_mechanism: Some(token.mechanism),
                };
            }
            request.fast = None;
        }
        self.password_start(request, offer, bindings.tls_exporter.is_some())
    }

    /// A password `<authenticate/>` from `request`, asking for a FAST
    /// token where offered: bound to the exporter if this connection has
    /// one and the server takes no token in 0-RTT (where no binding is
    /// known yet), else `HT-SHA-256-NONE`.
    fn password_start(
        &self,
        mut request: sasl2::Authenticate,
        offer: &sasl2::Offer,
        exporter: bool,
    ) -> Started {
        let offered = |m: &str| offer.fast.iter().any(|o| o == m);
        let mechanism = if !self.fast {
            None
        } else if exporter && !offer.fast_0rtt && offered(HT_SHA_256_EXPR) {
            Some(HT_SHA_256_EXPR)
        } else {
            offered(HT_SHA_256_NONE).then_some(HT_SHA_256_NONE)
        };
        request.request_token = mechanism.map(str::to_owned);
        request.fast = None;
        Started {
            sasl2: Sasl2Start::new(request, &self.username, &self.password, self.mechanism),
            by_token: false,
            early: false,
            grant_mechanism: mechanism.map(str::to_owned),
        }
    }

    /// The rest of a SASL2 login whose `<authenticate/>` is written; a
    /// token in the success is kept for the next login. A token the server
    /// refuses (`not-authorized`, `credentials-expired`) is forgotten and
    /// the password sent on the same stream — after one more try with the
    /// token and the next count if the refused attempt went as 0-RTT data
    /// (a copy of it may have won its count, docs/design/sasl2-fast.md
    /// §6.2); `invalid-mechanism` (not offered here) uses the password but
    /// keeps the token; anything else (`temporary-auth-failure`, a server
    /// that cannot prove it knows the token) fails the attempt, the token
    /// kept for the next one.
    async fn sasl2_login(
        &self,
        nego: &mut Negotiation,
        conn: &quinn::Connection,
        started: Started,
        offer: &sasl2::Offer,
        resumption: Option<(String, u32)>,
        bind2: bool,
    ) -> Result<Sasl2Outcome, ClientError> {
        let Started {
            sasl2,
            by_token,
            early,
            grant_mechanism,
        } = started;
        let condition = match nego.sasl2_finish(sasl2).await {
            Err(ClientError::Auth(condition)) if by_token => condition,
            outcome => return self.granted(outcome?, grant_mechanism, by_token),
        };
        match condition.as_str() {
            NOT_AUTHORIZED if early => {
                let again = self.start(offer, resumption.clone(), bind2, conn, false);
                if again.by_token {
                    tracing::debug!("FAST token refused in 0-RTT; once more with the next count");
                    nego.write(&again.sasl2.authenticate).await?;
                    match nego.sasl2_finish(again.sasl2).await {
                        Err(ClientError::Auth(c))
                            if c == NOT_AUTHORIZED || c == CREDENTIALS_EXPIRED => {}
                        outcome => {
                            return self.granted(outcome?, again.grant_mechanism, true);
                        }
                    }
                }
                self.with_tokens(|t| t.token = None);
            }
            NOT_AUTHORIZED | CREDENTIALS_EXPIRED => self.with_tokens(|t| t.token = None),
            INVALID_MECHANISM => {}
            _ => return Err(ClientError::Auth(condition)),
        }
        tracing::debug!(
            condition,
            "FAST token refused; logging in with the password"
        );
        let request = self.request(offer, resumption, bind2);
        let exporter = channel_bindings(conn).tls_exporter.is_some();
        let retry = self.password_start(request, offer, exporter);
        nego.write(&retry.sasl2.authenticate).await?;
        let outcome = nego.sasl2_finish(retry.sasl2).await?;
        self.granted(outcome, retry.grant_mechanism, false)
    }

    /// Keeps a token the success grants (count 0), and counts a login by token.
    fn granted(
        &self,
        outcome: Sasl2Outcome,
        mechanism: Option<String>,
        by_token: bool,
    ) -> Result<Sasl2Outcome, ClientError> {
        let grant = outcome
            .success
            .inline("token", ns::FAST)
            .and_then(sasl2::Token::parse);
        self.with_tokens(|t| {
            if by_token {
                t.logins += 1;
            }
            if let (Some(grant), Some(mechanism)) = (grant, mechanism) {
                t.token = Some(FastToken {
                    token: grant.token,
                    mechanism,
                    expiry: grant.expiry,
                    count: 0,
                });
            }
        });
        Ok(outcome)
    }

    /// The FAST token, if this client uses FAST, it is not about to
    /// expire and `offer` offers its mechanism.
    fn usable_token(&self, offer: &sasl2::Offer) -> Option<FastToken> {
        if !self.fast {
            return None;
        }
        let token = self.tokens.lock().ok()?.token.clone()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let fresh = token.expiry > now.saturating_add(TOKEN_MARGIN_SECS);
        (fresh && offer.fast.contains(&token.mechanism)).then_some(token)
    }

    fn with_tokens(&self, f: impl FnOnce(&mut TokenState)) {
        if let Ok(mut t) = self.tokens.lock() {
            f(&mut t);
        }
    }

    /// The SASL2 offer in `features`, if this client uses it.
    fn usable(&self, features: &Element) -> Option<sasl2::Offer> {
        sasl2::Offer::from_features(features)
            .filter(|o| self.sasl2 && o.mechanisms.iter().any(|m| m == self.mechanism.name()))
    }

    /// The offer a connection may pipeline against.
    fn known(&self) -> Option<sasl2::Offer> {
        let known = self.known_offer.lock().ok()?.clone();
        known.filter(|_| self.sasl2)
    }

    fn remember(&self, offer: Option<sasl2::Offer>) {
        if let Ok(mut known) = self.known_offer.lock() {
            *known = offer;
        }
    }

    /// The `<authenticate/>` for `offer`: an inline resumption of
    /// `resumption`, and a Bind2 binding unless an exact resource is
    /// wanted (`bind2`).
    fn request(
        &self,
        offer: &sasl2::Offer,
        resumption: Option<(String, u32)>,
        bind2: bool,
    ) -> sasl2::Authenticate {
        let bind = (offer.bind2 && bind2).then(|| sasl2::BindRequest {
            tag: Some(self.tag.clone()),
            sm: self
                .stream_management
                .filter(|_| offer.bind2_offers(ns::SM))
                .map(|max| sasl2::SmEnable { resume: true, max }),
            carbons: self.carbons && offer.bind2_offers(ns::CARBONS),
            inactive: false,
        });
        sasl2::Authenticate {
            user_agent: Some(sasl2::UserAgent {
                id: Some(self.user_agent_id.clone()),
                software: Some("longlink-sdk".into()),
                ..sasl2::UserAgent::default()
            }),
            resume: resumption
                .filter(|_| offer.sm)
                .map(|(previd, h)| sasl2::Resume { previd, h }),
            bind,
            ..sasl2::Authenticate::default()
        }
    }

    /// What a SASL2 success says: resumed, bound, or (an exact resource
    /// wanted) bound now the legacy way on the same stream.
    async fn conclude(
        &self,
        nego: &mut Negotiation,
        offer: &sasl2::Offer,
        outcome: Sasl2Outcome,
        resource: Option<String>,
    ) -> Result<Negotiated, ClientError> {
        let success = &outcome.success;
        if let Some(resumed) = success.inline("resumed", ns::SM) {
            let h = resumed
                .attr("h")
                .and_then(|h| h.parse().ok())
                .ok_or_else(|| ClientError::Protocol("<resumed/> without h".into()))?;
            return Ok(Negotiated {
                resumed: Some(h),
                sasl2: true,
                ..Negotiated::default()
            });
        }
        if let Some(bound) = success.inline("bound", ns::BIND2) {
            let sm_enabled = bound
                .child("enabled", ns::SM)
                .map(|e| e.attr("id").map(str::to_owned));
            return Ok(Negotiated {
                resumed: None,
                jid: Some(success.authorization_identifier.clone()),
                sasl2: true,
                sm_enabled,
                carbons_enabled: self.carbons && offer.bind2_offers(ns::CARBONS),
            });
        }
        // Authenticated, not bound: the legacy bind on this stream.
        let jid = nego.bind(&outcome.features, resource.as_deref()).await?;
        Ok(Negotiated {
            jid: Some(jid),
            sasl2: true,
            ..Negotiated::default()
        })
    }
}

/// How a pipelined login went.
enum Pipelined {
    /// Logged in, or failed (the error is the attempt's).
    Done(Result<(Live, Negotiated), ClientError>),
    /// The server's offer no longer covers what was written: dial again.
    Incompatible,
}

/// What the reader of a connection hands over.
pub(crate) enum Inbound {
    /// A top-level element.
    Element(Element),
    /// A top-level element that frames but does not parse (the SDK's
    /// reader is stricter than the server's writer, or the server is wrong).
    Unreadable {
        /// It was a stanza: it counts for stream management.
        stanza: bool,
        /// Why it does not parse.
        error: String,
    },
    /// The stream or the connection ended, for this reason.
    End(String),
}

/// A negotiated connection: where to write, and what its reader read.
pub(crate) struct Live {
    /// The QUIC connection.
    pub(crate) conn: quinn::Connection,
    /// Its XMPP stream's sending side.
    pub(crate) send: SendStream,
    /// What its reader task read.
    inbound: mpsc::Receiver<Inbound>,
    /// A write failed: nothing more is written on it.
    pub(crate) broken: bool,
}

impl Live {
    /// Starts reading the connection's stream.
    fn start(conn: quinn::Connection, nego: Negotiation) -> Self {
        let (tx, inbound) = mpsc::channel(INBOUND_QUEUE);
        let Negotiation { send, recv, framer } = nego;
        tokio::spawn(read_loop(recv, framer, tx));
        Self {
            conn,
            send,
            inbound,
            broken: false,
        }
    }

    /// The next element or the end of the stream.
    pub(crate) async fn next(&mut self) -> Inbound {
        self.inbound
            .recv()
            .await
            .unwrap_or_else(|| Inbound::End("reader ended".into()))
    }
}

/// What the reader hands over for one top-level element of the server's
/// stream: the element, or, if the SDK cannot parse it, whether it was a
/// stanza (it still counts for stream management).
pub(crate) fn read_element(raw: &[u8]) -> Inbound {
    match Element::parse_in_stream(raw) {
        Ok(el) => Inbound::Element(el),
        Err(e) => Inbound::Unreadable {
            stanza: is_stanza(raw),
            error: e.to_string(),
        },
    }
}

/// Whether a framed top-level element is a stanza (`message`, `presence`
/// or `iq`, unprefixed or prefixed: the server relays a client's prefixed
/// stanza as it came, and counts it), from its start tag.
fn is_stanza(raw: &[u8]) -> bool {
    let name_end = raw
        .iter()
        .position(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'/' | b'>'))
        .unwrap_or(raw.len());
    let name = raw.get(1..name_end).unwrap_or_default();
    let local = match name.iter().rposition(|&b| b == b':') {
        Some(colon) => &name[colon + 1..],
        None => name,
    };
    matches!(local, b"message" | b"presence" | b"iq")
}

/// Reads and frames the server's stream until it ends.
async fn read_loop(mut recv: quinn::RecvStream, mut framer: Framer, tx: mpsc::Sender<Inbound>) {
    let reason = 'outer: loop {
        loop {
            match framer.next_event() {
                Ok(Some(FrameEvent::Element(raw))) => {
                    if tx.send(read_element(&raw)).await.is_err() {
                        return;
                    }
                }
                Ok(Some(FrameEvent::Close)) => break 'outer "server closed the stream".to_owned(),
                Ok(Some(FrameEvent::Open(_))) => {}
                Ok(None) => break,
                Err(e) => break 'outer format!("malformed data from the server: {e}"),
            }
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(c)) => framer.push(&c.bytes),
            Ok(None) => break "stream ended".to_owned(),
            Err(e) => break e.to_string(),
        }
    };
    let _ = tx.send(Inbound::End(reason)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_element_counts_as_a_stanza_by_its_local_name_prefixed_or_not() {
        for (raw, stanza) in [
            (&b"<message><x:y/></message>"[..], true),
            (b"<c:message><body/></c:message>", true),
            (b"<c:iq type='get'><x:q/></c:iq>", true),
            (b"<presence><x:y/></presence>", true),
            (b"<messages><x:y/></messages>", false),
            (b"<stream:features><x:y/></stream:features>", false),
        ] {
            match read_element(raw) {
                Inbound::Unreadable { stanza: s, .. } => {
                    assert_eq!(s, stanza, "{}", String::from_utf8_lossy(raw))
                }
                _ => panic!("readable: {}", String::from_utf8_lossy(raw)),
            }
        }
    }
}
