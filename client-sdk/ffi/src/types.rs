//! The records and enums that cross the binding, and their conversions
//! from and to client-sdk's. Names avoid what the target languages
//! reserve or shadow: no field called `from`, `with` or `type` (Python
//! keywords), no variant named like a type (a Kotlin sealed class's
//! variants are nested classes that would hide it).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use client_sdk::im;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::LonglinkError;

/// Where the client trusts server certificates from.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum Trust {
    /// A PEM file of CA certificates, by path (e.g. the cluster CA copied
    /// into the app's files).
    CaFile {
        /// Its path.
        path: String,
    },
    /// CA certificates in PEM, as text (e.g. read from the app's assets
    /// or bundle).
    CaPem {
        /// The PEM text (one or more certificates).
        pem: String,
    },
}

/// A session to resume instead of logging in anew (XEP-0198): what
/// `Client.resumption()` gave before the app was stopped.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SessionToken {
    /// The stream management id.
    pub id: String,
    /// How many stanzas this side had handled.
    pub h: u32,
}

/// A FAST token (XEP-0484): logs in again in one round trip instead of
/// the password's two. Store it as a credential (Keychain, Keystore)
/// with the `user_agent_id` it belongs to, after every login.
#[derive(Clone, PartialEq, Eq, uniffi::Record)]
pub struct FastToken {
    /// The token.
    pub token: String,
    /// The mechanism it is bound to.
    pub mechanism: String,
    /// When it expires, seconds since the Unix epoch.
    pub expiry: i64,
    /// The count of its last use.
    pub count: u64,
}

impl std::fmt::Debug for FastToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // a credential: not for logs
        f.debug_struct("FastToken")
            .field("mechanism", &self.mechanism)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl From<client_sdk::FastToken> for FastToken {
    fn from(t: client_sdk::FastToken) -> Self {
        Self {
            token: t.token,
            mechanism: t.mechanism,
            expiry: t.expiry,
            count: t.count,
        }
    }
}

impl From<FastToken> for client_sdk::FastToken {
    fn from(t: FastToken) -> Self {
        Self {
            token: t.token,
            mechanism: t.mechanism,
            expiry: t.expiry,
            count: t.count,
        }
    }
}

/// How to connect and log in.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ConnectOptions {
    /// The server (the balancer) as `host:port`, e.g. `xmpp.example.org:5222`
    /// (a name is resolved at each connect, and its addresses tried in
    /// turn while one is unreachable).
    pub server: String,
    /// The account's bare JID, e.g. `alice@example.org`.
    pub jid: String,
    /// Its password.
    pub password: String,
    /// Which certificates to trust.
    pub trust: Trust,
    /// The resource to ask for. None (best): Bind2 binds `tag/random`
    /// (see `tag`) in the login's round trip. One asked for is bound the
    /// legacy way after SASL2: one more round trip.
    #[uniffi(default)]
    pub resource: Option<String>,
    /// The Bind2 tag (XEP-0386), naming the app: the resource becomes
    /// `tag/random` (none: `longlink`).
    #[uniffi(default)]
    pub tag: Option<String>,
    /// Log in with SASL2 (XEP-0388), Bind2 and inline resumption where the
    /// server offers them: one round trip for login, binding or
    /// resumption, stream management and carbons. Off: SASL, a stream
    /// restart, then each of those in turn.
    #[uniffi(default = true)]
    pub sasl2: bool,
    /// A session to resume first (see [`SessionToken`]).
    #[uniffi(default)]
    pub previous_session: Option<SessionToken>,
    /// Give up connecting and logging in after this many milliseconds.
    #[uniffi(default = 10000)]
    pub timeout_ms: u32,
    /// Report each sent message's progress as
    /// `Event.MessageStateChanged` (queued, sent, acknowledged, delivered).
    #[uniffi(default = true)]
    pub message_states: bool,
    /// Ask for and send delivery receipts (XEP-0184).
    #[uniffi(default = true)]
    pub receipts: bool,
    /// Get copies of what the account's other devices send and receive
    /// (XEP-0280).
    #[uniffi(default = true)]
    pub carbons: bool,
    /// How long (seconds) the server should keep the session for a resume
    /// after the connection is lost (0: the server's default).
    #[uniffi(default = 0)]
    pub resume_max_secs: u32,
    /// The app installation's stable id (a UUID the app makes once and
    /// keeps); FAST tokens are bound to it. None: a new one per client.
    #[uniffi(default)]
    pub user_agent_id: Option<String>,
    /// A FAST token saved from an earlier session (`Client.fastToken()`),
    /// with the same `user_agent_id`.
    #[uniffi(default)]
    pub fast_token: Option<FastToken>,
    /// Use FAST tokens and QUIC 0-RTT where the server offers them.
    #[uniffi(default = true)]
    pub fast: bool,
}

impl ConnectOptions {
    /// Runs `attempt` with client-sdk's options for each address the
    /// server resolves to, until one is not unreachable (nor timed out);
    /// the last failure if none.
    pub(crate) async fn each_address<T, F, Fut>(self, attempt: F) -> Result<T, LonglinkError>
    where
        F: Fn(client_sdk::ConnectOptions) -> Fut,
        Fut: Future<Output = Result<T, client_sdk::ClientError>>,
    {
        let (opts, addrs) = self.resolve().await?;
        let mut last = None;
        for addr in addrs {
            let mut opts = opts.clone();
            opts.server = addr;
            match attempt(opts).await {
                Ok(done) => return Ok(done),
                Err(
                    e
                    @ (client_sdk::ClientError::Unreachable(_) | client_sdk::ClientError::Timeout),
                ) => last = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last.map_or_else(
            || LonglinkError::Unreachable {
                detail: "the server resolves to no address".into(),
            },
            Into::into,
        ))
    }

    /// client-sdk's options (with the first address), and every address
    /// the server resolves to.
    pub(crate) async fn resolve(
        self,
    ) -> Result<(client_sdk::ConnectOptions, Vec<SocketAddr>), LonglinkError> {
        let addrs = resolve_server(&self.server).await?;
        let mut opts = client_sdk::ConnectOptions::new(addrs[0], &self.jid, &self.password)
            .with_receipts(self.receipts)
            .with_resume_max(self.resume_max_secs);
        if let Some(tag) = &self.tag {
            opts = opts.with_tag(tag);
        }
        opts.sasl2 = self.sasl2;
        opts.trust = trust(&self.trust)?;
        opts.timeout = Duration::from_millis(u64::from(self.timeout_ms));
        opts.resource = self.resource;
        opts.previous_session = self.previous_session.map(|s| (s.id, s.h));
        opts.message_states = self.message_states;
        opts.carbons = self.carbons;
        opts.user_agent_id = self.user_agent_id;
        opts.fast_token = self.fast_token.map(Into::into);
        opts.fast = self.fast;
        opts.zero_rtt = self.fast;
        Ok((opts, addrs))
    }
}

/// The addresses `server` (`host:port`) resolves to, at least one. Not
/// `host:port` is a [`LonglinkError::Config`]; a failed lookup (no
/// network, no such name) is [`LonglinkError::Unreachable`].
async fn resolve_server(server: &str) -> Result<Vec<SocketAddr>, LonglinkError> {
    if let Ok(addr) = server.parse() {
        return Ok(vec![addr]);
    }
    let well_formed = server
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !well_formed {
        return Err(LonglinkError::Config {
            detail: format!("server {server:?}: not host:port"),
        });
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(server)
        .await
        .map_err(|e| LonglinkError::Unreachable {
            detail: format!("cannot resolve {server}: {e}"),
        })?
        .collect();
    if addrs.is_empty() {
        return Err(LonglinkError::Unreachable {
            detail: format!("{server} resolves to no address"),
        });
    }
    Ok(addrs)
}

/// client-sdk's trust for `trust`; PEM text is parsed here.
fn trust(trust: &Trust) -> Result<client_sdk::Trust, LonglinkError> {
    match trust {
        Trust::CaFile { path } => Ok(client_sdk::Trust::CaFile(path.into())),
        Trust::CaPem { pem } => {
            let bad = |e: String| LonglinkError::Config {
                detail: format!("CA PEM: {e}"),
            };
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| bad(e.to_string()))?;
                roots.add(cert).map_err(|e| bad(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(bad("no certificate found".into()));
            }
            Ok(client_sdk::Trust::Roots(Arc::new(roots)))
        }
    }
}

/// Where a sent message is.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum MessageState {
    /// Waiting in the outbox for a connection.
    Queued,
    /// Written to the server.
    Sent,
    /// The server acknowledged it: it is delivered or stored.
    Acknowledged,
    /// The recipient's device confirmed it (XEP-0184 receipt).
    Delivered,
    /// It cannot be sent (the outbox is full, or the session ended).
    Failed {
        /// Why.
        reason: String,
    },
}

impl From<client_sdk::MessageState> for MessageState {
    fn from(s: client_sdk::MessageState) -> Self {
        match s {
            client_sdk::MessageState::Queued => Self::Queued,
            client_sdk::MessageState::Sent => Self::Sent,
            client_sdk::MessageState::Acknowledged => Self::Acknowledged,
            client_sdk::MessageState::Delivered => Self::Delivered,
            client_sdk::MessageState::Failed(reason) => Self::Failed { reason },
        }
    }
}

/// Which side of a conversation a carbon copy shows (XEP-0280).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Carbon {
    /// Another of your devices sent it.
    Sent,
    /// Another of your devices received it.
    Received,
}

/// An incoming message.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Message {
    /// Its id, as its sender set it.
    pub id: Option<String>,
    /// The sender's full JID, as the server stamped it.
    pub from_jid: String,
    /// The recipient.
    pub to_jid: Option<String>,
    /// Its type: `chat`, `normal`, `error`…
    pub kind: String,
    /// The text.
    pub body: Option<String>,
    /// When it was sent, for a message stored while you were offline
    /// (XEP-0082 timestamp).
    pub delay: Option<String>,
    /// The stanza error condition of a `type='error'` message.
    pub error: Option<String>,
    /// The server's archive id for it (for history paging).
    pub stanza_id: Option<String>,
    /// A copy of a message of another of your devices, if it is one.
    pub carbon: Option<Carbon>,
}

impl From<client_sdk::Message> for Message {
    fn from(m: client_sdk::Message) -> Self {
        Self {
            id: m.id,
            from_jid: m.from,
            to_jid: m.to,
            kind: m.kind,
            body: m.body,
            delay: m.delay,
            error: m.error,
            stanza_id: m.stanza_id,
            carbon: m.carbon.map(|c| match c {
                client_sdk::Carbon::Sent => Carbon::Sent,
                client_sdk::Carbon::Received => Carbon::Received,
            }),
        }
    }
}

/// An incoming presence.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Presence {
    /// The contact's full JID.
    pub from_jid: String,
    /// Available, or gone.
    pub available: bool,
    /// The `type` attribute, if any (`unavailable`, `error`).
    pub kind: Option<String>,
    /// Its priority.
    pub priority: i8,
    /// The status text.
    pub status: Option<String>,
    /// `away`, `chat`, `dnd` or `xa`.
    pub show: Option<String>,
}

impl From<client_sdk::Presence> for Presence {
    fn from(p: client_sdk::Presence) -> Self {
        Self {
            from_jid: p.from,
            available: p.available,
            kind: p.kind,
            priority: p.priority,
            status: p.status,
            show: p.show,
        }
    }
}

/// Availability detail (RFC 6121 §4.7.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Show {
    /// Away.
    Away,
    /// Free for chat.
    Chat,
    /// Do not disturb.
    Dnd,
    /// Away for long.
    Xa,
}

impl From<Show> for im::Show {
    fn from(s: Show) -> Self {
        match s {
            Show::Away => Self::Away,
            Show::Chat => Self::Chat,
            Show::Dnd => Self::Dnd,
            Show::Xa => Self::Xa,
        }
    }
}

/// Who sees whose presence (RFC 6121 §2.1.2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Subscription {
    /// Neither sees the other.
    Neither,
    /// You see the contact's presence.
    To,
    /// The contact sees yours.
    From,
    /// Both.
    Both,
    /// The contact was removed (in a roster change).
    Remove,
}

/// One contact.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct RosterItem {
    /// The contact's bare JID.
    pub jid: String,
    /// Your name for them.
    pub name: Option<String>,
    /// Your groups for them.
    pub groups: Vec<String>,
    /// Who sees whose presence.
    pub subscription: Subscription,
    /// You asked to see their presence and they have not answered.
    pub pending: bool,
}

impl From<im::RosterItem> for RosterItem {
    fn from(i: im::RosterItem) -> Self {
        Self {
            jid: i.jid,
            name: i.name,
            groups: i.groups,
            subscription: match i.subscription {
                im::Subscription::None => Subscription::Neither,
                im::Subscription::To => Subscription::To,
                im::Subscription::From => Subscription::From,
                im::Subscription::Both => Subscription::Both,
                im::Subscription::Remove => Subscription::Remove,
            },
            pending: i.pending,
        }
    }
}

/// What a contact did about presence subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum SubscriptionRequest {
    /// They ask to see your presence: `approve` or `deny`.
    Subscribe,
    /// They approved your request.
    Subscribed,
    /// They no longer want your presence.
    Unsubscribe,
    /// They denied or cancelled your subscription.
    Unsubscribed,
}

impl From<im::SubscriptionRequest> for SubscriptionRequest {
    fn from(r: im::SubscriptionRequest) -> Self {
        match r {
            im::SubscriptionRequest::Subscribe => Self::Subscribe,
            im::SubscriptionRequest::Subscribed => Self::Subscribed,
            im::SubscriptionRequest::Unsubscribe => Self::Unsubscribe,
            im::SubscriptionRequest::Unsubscribed => Self::Unsubscribed,
        }
    }
}

/// Which part of the message archive to fetch (XEP-0313).
#[derive(Debug, Clone, Default, PartialEq, Eq, uniffi::Record)]
pub struct HistoryQuery {
    /// Only the conversation with this bare JID.
    #[uniffi(default)]
    pub with_jid: Option<String>,
    /// Not before (XEP-0082 timestamp).
    #[uniffi(default)]
    pub start: Option<String>,
    /// Not after (XEP-0082 timestamp).
    #[uniffi(default)]
    pub end: Option<String>,
    /// The page after this archive id (paging forward).
    #[uniffi(default)]
    pub after: Option<String>,
    /// The page before this archive id (paging back).
    #[uniffi(default)]
    pub before: Option<String>,
    /// Start from the newest messages (the last page).
    #[uniffi(default)]
    pub latest: bool,
    /// At most this many messages (the server caps it too).
    #[uniffi(default)]
    pub max_results: Option<u32>,
}

impl From<HistoryQuery> for im::HistoryQuery {
    fn from(q: HistoryQuery) -> Self {
        Self {
            with: q.with_jid,
            start: q.start,
            end: q.end,
            after: q.after,
            before: q.before,
            latest: q.latest,
            max: q.max_results.map(|m| m as usize),
        }
    }
}

/// One archived message.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ArchivedMessage {
    /// Its archive id.
    pub id: String,
    /// When the server archived it (XEP-0082 timestamp).
    pub stamp: Option<String>,
    /// The message.
    pub message: Message,
}

/// One page of history, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct HistoryPage {
    /// The messages.
    pub messages: Vec<ArchivedMessage>,
    /// Nothing further in the paging direction.
    pub complete: bool,
    /// The first message's archive id (page back with `before`).
    pub first: Option<String>,
    /// The last message's archive id (page on with `after`).
    pub last: Option<String>,
}

impl From<im::HistoryPage> for HistoryPage {
    fn from(p: im::HistoryPage) -> Self {
        Self {
            messages: p
                .messages
                .into_iter()
                .map(|m| ArchivedMessage {
                    id: m.id,
                    stamp: m.stamp,
                    message: m.message.into(),
                })
                .collect(),
            complete: p.complete,
            first: p.first,
            last: p.last,
        }
    }
}

/// One field of a push registration's publish-options (what the app
/// server needs with each notification: a secret, a token).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct PushOption {
    /// The field's name.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// Something that happened in the session.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum Event {
    /// A message arrived.
    MessageReceived {
        /// The message.
        message: Message,
    },
    /// A contact's presence arrived.
    PresenceReceived {
        /// The presence.
        presence: Presence,
    },
    /// A message you sent moved on (with `message_states` on).
    MessageStateChanged {
        /// The id `send_message` returned.
        id: String,
        /// Where it is now.
        state: MessageState,
    },
    /// A contact asks to see your presence, or answered your request.
    SubscriptionReceived {
        /// The contact's bare JID.
        from_jid: String,
        /// What they did.
        request: SubscriptionRequest,
    },
    /// The roster changed (from another device, or a subscription moved on).
    RosterChanged {
        /// The changed contact.
        item: RosterItem,
    },
    /// The connection was lost; the library reconnects by itself.
    ConnectionLost {
        /// Why.
        reason: String,
    },
    /// Connected again: `resumed` if the session went on (nothing lost,
    /// nothing repeated), else it logged in anew and resent what the
    /// server had not acknowledged.
    Reconnected {
        /// Whether the session was resumed.
        resumed: bool,
    },
    /// The server ended the stream with this condition.
    StreamError {
        /// The condition.
        condition: String,
    },
    /// The session is over for good; no event follows.
    Disconnected,
    /// An event of a part of the protocol this binding does not expose
    /// yet (rooms, personal eventing, IQ requests), by name.
    Unsupported {
        /// Which: `room_message`, `pep`, `iq`…
        name: String,
    },
}

impl From<client_sdk::Event> for Event {
    fn from(e: client_sdk::Event) -> Self {
        use client_sdk::Event as E;
        let unsupported = |name: &str| Self::Unsupported {
            name: name.to_owned(),
        };
        match e {
            E::Message(m) => Self::MessageReceived { message: m.into() },
            E::Presence(p) => Self::PresenceReceived { presence: p.into() },
            E::MessageState { id, state } => Self::MessageStateChanged {
                id,
                state: state.into(),
            },
            E::Subscription { from, kind } => Self::SubscriptionReceived {
                from_jid: from,
                request: kind.into(),
            },
            E::RosterPush(item) => Self::RosterChanged { item: item.into() },
            E::ConnectionLost(reason) => Self::ConnectionLost { reason },
            E::Reconnected { resumed } => Self::Reconnected { resumed },
            E::StreamError(condition) => Self::StreamError { condition },
            E::Disconnected => Self::Disconnected,
            E::Pep(_) => unsupported("pep"),
            E::Iq(_) => unsupported("iq"),
            E::RoomMessage(_) => unsupported("room_message"),
            E::RoomSubject { .. } => unsupported("room_subject"),
            E::Occupant(_) => unsupported("occupant"),
            E::RoomInvite(_) => unsupported("room_invite"),
            E::RoomDestroyed { .. } => unsupported("room_destroyed"),
            E::RoomRejoined(_) => unsupported("room_rejoined"),
            E::RoomRejoinFailed { .. } => unsupported("room_rejoin_failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(trust: Trust) -> ConnectOptions {
        ConnectOptions {
            server: "127.0.0.1:5222".into(),
            jid: "alice@example.org".into(),
            password: "pw".into(),
            trust,
            resource: Some("phone".into()),
            tag: Some("app".into()),
            sasl2: false,
            previous_session: Some(SessionToken {
                id: "sm-1".into(),
                h: 7,
            }),
            timeout_ms: 2500,
            message_states: true,
            receipts: false,
            carbons: false,
            resume_max_secs: 600,
            user_agent_id: Some("ua-1".into()),
            fast_token: Some(FastToken {
                token: "t".into(),
                mechanism: "HT-SHA-256-NONE".into(),
                expiry: 9,
                count: 3,
            }),
            fast: false,
        }
    }

    #[tokio::test]
    async fn connect_options_carry_every_setting_to_the_sdk() {
        let (opts, addrs) = options(Trust::CaFile {
            path: "/data/ca.pem".into(),
        })
        .resolve()
        .await
        .unwrap();
        assert_eq!(addrs, vec![opts.server]);
        assert_eq!(opts.tag, "app");
        assert!(!opts.sasl2);
        assert_eq!(opts.server, "127.0.0.1:5222".parse().unwrap());
        assert_eq!(opts.jid, "alice@example.org");
        assert_eq!(opts.resource.as_deref(), Some("phone"));
        assert_eq!(opts.previous_session, Some(("sm-1".into(), 7)));
        assert_eq!(opts.timeout, Duration::from_millis(2500));
        assert!(opts.message_states && !opts.receipts && !opts.carbons);
        assert_eq!(opts.resume_max_secs, 600);
        assert_eq!(opts.user_agent_id.as_deref(), Some("ua-1"));
        assert_eq!(opts.fast_token.as_ref().map(|t| t.count), Some(3));
        assert!(!opts.fast && !opts.zero_rtt);
        assert!(
            matches!(&opts.trust, client_sdk::Trust::CaFile(p) if p.to_str() == Some("/data/ca.pem"))
        );
    }

    #[tokio::test]
    async fn pem_text_without_a_certificate_and_a_server_not_host_port_are_config_errors() {
        let no_cert = options(Trust::CaPem {
            pem: "not a certificate".into(),
        });
        assert!(matches!(
            no_cert.resolve().await,
            Err(LonglinkError::Config { .. })
        ));
        let mut bad_server = options(Trust::CaFile { path: "x".into() });
        bad_server.server = "no port here".into();
        assert!(matches!(
            bad_server.resolve().await,
            Err(LonglinkError::Config { .. })
        ));
    }

    #[tokio::test]
    async fn a_name_resolves_to_every_address_and_sasl2_is_on_by_default() {
        let mut named = options(Trust::CaFile { path: "x".into() });
        named.server = "localhost:5222".into();
        named.tag = None;
        named.sasl2 = true;
        let (opts, addrs) = named.resolve().await.unwrap();
        assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()));
        assert!(addrs.iter().all(|a| a.port() == 5222));
        assert_eq!(opts.tag, "longlink");
        assert!(opts.sasl2);
    }

    #[test]
    fn sdk_events_map_to_binding_events() {
        let state = client_sdk::Event::MessageState {
            id: "m1".into(),
            state: client_sdk::MessageState::Failed("outbox full".into()),
        };
        assert_eq!(
            Event::from(state),
            Event::MessageStateChanged {
                id: "m1".into(),
                state: MessageState::Failed {
                    reason: "outbox full".into()
                }
            }
        );
        assert_eq!(
            Event::from(client_sdk::Event::Reconnected { resumed: true }),
            Event::Reconnected { resumed: true }
        );
        assert_eq!(
            Event::from(client_sdk::Event::StreamError("conflict".into())),
            Event::StreamError {
                condition: "conflict".into()
            }
        );
    }
}
