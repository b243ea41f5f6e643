//! The instant-messaging API on top of a session: roster (RFC 6121 §2),
//! presence subscriptions (§3), presence with show and status (§4), message
//! history (XEP-0313 with XEP-0059 paging), carbons (XEP-0280, on by
//! default: see [`crate::ConnectOptions::without_carbons`]), blocking
//! (XEP-0191), private XML storage (XEP-0049) and STUN/TURN servers for
//! calls (XEP-0215).

use xmpp_stream::element::Element;
use xmpp_stream::ns;

use crate::event::{Message, message_from};
use crate::session::{Answer, Request};
use crate::{Client, ClientError};

/// A subscription state (RFC 6121 §2.1.2.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subscription {
    /// Neither sees the other.
    None,
    /// You see the contact's presence.
    To,
    /// The contact sees yours.
    From,
    /// Both.
    Both,
    /// The contact was removed (in a roster push).
    Remove,
}

impl Subscription {
    fn parse(s: Option<&str>) -> Self {
        match s {
            Some("to") => Self::To,
            Some("from") => Self::From,
            Some("both") => Self::Both,
            Some("remove") => Self::Remove,
            _ => Self::None,
        }
    }
}

/// One contact.
#[derive(Clone, Debug, PartialEq, Eq)]
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

impl RosterItem {
    pub(crate) fn parse(item: &Element) -> Option<Self> {
        Some(Self {
            jid: item.attr("jid")?.to_owned(),
            name: item.attr("name").map(str::to_owned),
            groups: item
                .elements()
                .filter(|g| g.name == "group")
                .map(Element::text)
                .collect(),
            subscription: Subscription::parse(item.attr("subscription")),
            pending: item.attr("ask") == Some("subscribe"),
        })
    }
}

/// A STUN or TURN server (XEP-0215). Its `Debug` leaves the password out.
#[derive(Clone, PartialEq, Eq)]
pub struct ExternalService {
    /// `stun`, `turn`, `stuns` or `turns`.
    pub kind: String,
    /// Where it is.
    pub host: String,
    /// Its port, if not the default.
    pub port: Option<u16>,
    /// `udp` or `tcp`, if only one.
    pub transport: Option<String>,
    /// The user name to give it, if it needs credentials.
    pub username: Option<String>,
    /// The password to give it.
    pub password: Option<String>,
    /// When the credentials expire (XEP-0082).
    pub expires: Option<String>,
}

impl std::fmt::Debug for ExternalService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalService")
            .field("kind", &self.kind)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("transport", &self.transport)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "(set)"))
            .field("expires", &self.expires)
            .finish()
    }
}

impl ExternalService {
    fn parse(e: &Element) -> Option<Self> {
        let attr = |n: &str| e.attr(n).map(str::to_owned);
        Some(Self {
            kind: attr("type")?,
            host: attr("host")?,
            port: e.attr("port").and_then(|p| p.parse().ok()),
            transport: attr("transport"),
            username: attr("username"),
            password: attr("password"),
            expires: attr("expires"),
        })
    }
}

/// A subscription stanza from a contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscriptionRequest {
    /// They ask to see your presence: [`Client::approve`] or [`Client::deny`].
    Subscribe,
    /// They approved your request.
    Subscribed,
    /// They no longer want your presence.
    Unsubscribe,
    /// They denied or cancelled your subscription.
    Unsubscribed,
}

impl SubscriptionRequest {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "subscribe" => Self::Subscribe,
            "subscribed" => Self::Subscribed,
            "unsubscribe" => Self::Unsubscribe,
            "unsubscribed" => Self::Unsubscribed,
            _ => return None,
        })
    }
}

/// Availability detail (RFC 6121 §4.7.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

impl Show {
    fn as_str(self) -> &'static str {
        match self {
            Self::Away => "away",
            Self::Chat => "chat",
            Self::Dnd => "dnd",
            Self::Xa => "xa",
        }
    }
}

/// Which part of the archive to fetch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only the conversation with this bare JID.
    pub with: Option<String>,
    /// Not before (XEP-0082 timestamp).
    pub start: Option<String>,
    /// Not after (XEP-0082 timestamp).
    pub end: Option<String>,
    /// The page after this archive id (paging forward).
    pub after: Option<String>,
    /// The page before this archive id (paging back); with `latest`.
    pub before: Option<String>,
    /// Start from the newest messages (the last page) instead of the oldest.
    pub latest: bool,
    /// Most messages; more than 1000 (what the SDK keeps of one page) asks
    /// for 1000. The server may cap it lower, and picks without it
    /// (longlink: at most 250, 50 by default).
    pub max: Option<usize>,
}

/// One archived message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedMessage {
    /// Its stable archive id (XEP-0359 stanza-id).
    pub id: String,
    /// When the server archived it.
    pub stamp: Option<String>,
    /// The message.
    pub message: Message,
}

/// One page of history, oldest first: of the account's archive
/// ([`ArchivedMessage`]s), or of a room's
/// ([`crate::muc::RoomMessage`]s, whose `stanza_id` is the archive id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryPage<T = ArchivedMessage> {
    /// The messages.
    pub messages: Vec<T>,
    /// Nothing further in the paging direction.
    pub complete: bool,
    /// Id of the first message (page back with `before` = this).
    pub first: Option<String>,
    /// Id of the last message (page on with `after` = this).
    pub last: Option<String>,
}

impl<T> Default for HistoryPage<T> {
    fn default() -> Self {
        Self {
            messages: Vec::new(),
            complete: false,
            first: None,
            last: None,
        }
    }
}

/// Parses a `<result/>` of an archive query of the account `own` (a bare
/// JID). The server stamps a message with the id of its recipient's
/// archive (the same id in both archives).
pub(crate) fn archived(result: &Element, own: &str) -> Option<ArchivedMessage> {
    let forwarded = result.child("forwarded", ns::FORWARD)?;
    let inner = forwarded.child("message", ns::CLIENT)?;
    let trusted = crate::event::Trusted {
        archive: inner.attr("to").map(crate::event::bare),
        server: own.rsplit_once('@').map(|(_, d)| d),
    };
    Some(ArchivedMessage {
        id: result.attr("id")?.to_owned(),
        stamp: forwarded
            .child("delay", ns::DELAY)
            .and_then(|d| d.attr("stamp"))
            .map(str::to_owned),
        message: message_from(inner, trusted),
    })
}

/// The `<query/>` of an archive request for `q`; its results carry `query_id`.
pub(crate) fn history_query(q: &HistoryQuery, query_id: &str) -> Element {
    let field = |var: &str, value: &str| {
        Element::new("field", ns::DATA)
            .with_attr("var", var)
            .with_child(Element::new("value", ns::DATA).with_text(value))
    };
    let mut form = Element::new("x", ns::DATA)
        .with_attr("type", "submit")
        .with_child(field("FORM_TYPE", ns::MAM).with_attr("type", "hidden"));
    for (var, value) in [("with", &q.with), ("start", &q.start), ("end", &q.end)] {
        if let Some(v) = value {
            form = form.with_child(field(var, v));
        }
    }
    let mut set = Element::new("set", ns::RSM);
    if let Some(max) = q.max {
        set = set.with_child(Element::new("max", ns::RSM).with_text(max.to_string()));
    }
    if let Some(after) = &q.after {
        set = set.with_child(Element::new("after", ns::RSM).with_text(after.clone()));
    }
    if q.latest || q.before.is_some() {
        let mut before = Element::new("before", ns::RSM);
        if let Some(id) = &q.before {
            before = before.with_text(id.clone());
        }
        set = set.with_child(before);
    }
    Element::new("query", ns::MAM)
        .with_attr("queryid", query_id)
        .with_child(form)
        .with_child(set)
}

/// The page an archive query's result IQ (its `<fin/>`) closes.
pub(crate) fn history_page<T>(result: &Element, messages: Vec<T>) -> HistoryPage<T> {
    let fin = result.child("fin", ns::MAM);
    let rsm = fin.and_then(|f| f.child("set", ns::RSM));
    let text = |name: &str| rsm.and_then(|s| s.child(name, ns::RSM)).map(Element::text);
    HistoryPage {
        messages,
        complete: fin.and_then(|f| f.attr("complete")) == Some("true"),
        first: text("first"),
        last: text("last"),
    }
}

/// Creates the account `opts.jid` with `opts.password` by in-band
/// registration (XEP-0077), where the server offers it. Log in afterwards
/// with [`Client::connect`]. The error is the server's stanza condition
/// (`conflict`: the name is taken; `not-acceptable`; `not-allowed`:
/// registration is off; `resource-constraint`: try later).
pub async fn register(opts: &crate::ConnectOptions) -> Result<(), ClientError> {
    let bare = jid::BareJid::new(&opts.jid)
        .map_err(|e| ClientError::Config(format!("invalid JID: {e}")))?;
    let username = bare
        .node()
        .map(|n| n.to_string())
        .ok_or_else(|| ClientError::Config("the JID needs a user part".into()))?;
    let domain = bare.domain().to_string();
    let endpoint = crate::connection::client_endpoint(opts)?;
    let conn = endpoint
        .connect(opts.server, &domain)
        .map_err(|e| ClientError::Unreachable(e.to_string()))?
        .await
        .map_err(ClientError::from_connection)?;
    let (send, recv) = conn.open_bi().await.map_err(ClientError::from_connection)?;
    let mut nego = crate::negotiation::Negotiation::new(send, recv);
    let outcome = async {
        nego.open(&domain).await?;
        let features = nego.element().await?;
        if features.child("register", ns::REGISTER_FEATURE).is_none() {
            return Err(ClientError::StanzaError("not-allowed".into()));
        }
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", "register")
            .with_child(
                Element::new("query", ns::REGISTER)
                    .with_child(Element::new("username", ns::REGISTER).with_text(username))
                    .with_child(
                        Element::new("password", ns::REGISTER).with_text(opts.password.clone()),
                    ),
            );
        nego.write(&iq.to_bytes(ns::CLIENT)).await?;
        let answer = nego.element().await?;
        match answer.attr("type") {
            Some("result") => Ok(()),
            _ => Err(ClientError::StanzaError(
                crate::event::stanza_error_condition(&answer)
                    .unwrap_or_else(|| "undefined-condition".into()),
            )),
        }
    };
    let result = tokio::time::timeout(opts.timeout, outcome)
        .await
        .unwrap_or(Err(ClientError::Timeout));
    conn.close(0u32.into(), b"registered");
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), endpoint.wait_idle()).await;
    result
}

impl Client {
    /// The roster (also subscribes this session to roster pushes, which
    /// arrive as [`crate::Event::RosterPush`]).
    pub async fn roster(&self) -> Result<Vec<RosterItem>, ClientError> {
        let Answer::Iq(r) = self.ask(Request::Roster).await? else {
            return Err(ClientError::Closed);
        };
        if let Some(condition) = r.error {
            return Err(ClientError::StanzaError(condition));
        }
        Ok(r.element
            .child("query", ns::ROSTER)
            .map(|q| q.elements().filter_map(RosterItem::parse).collect())
            .unwrap_or_default())
    }

    /// Adds a contact or changes its name and groups (a rename is this
    /// with the new name).
    pub async fn set_contact(
        &self,
        jid: &str,
        name: Option<&str>,
        groups: &[&str],
    ) -> Result<(), ClientError> {
        let mut item = Element::new("item", ns::ROSTER).with_attr("jid", jid);
        if let Some(n) = name {
            item.set_attr("name", n);
        }
        for g in groups {
            item = item.with_child(Element::new("group", ns::ROSTER).with_text(*g));
        }
        self.request("set", Element::new("query", ns::ROSTER).with_child(item))
            .await
            .map(drop)
    }

    /// Removes a contact (and both subscriptions with it).
    pub async fn remove_contact(&self, jid: &str) -> Result<(), ClientError> {
        let item = Element::new("item", ns::ROSTER)
            .with_attr("jid", jid)
            .with_attr("subscription", "remove");
        self.request("set", Element::new("query", ns::ROSTER).with_child(item))
            .await
            .map(drop)
    }

    /// Asks to see `jid`'s presence.
    pub async fn subscribe(&self, jid: &str) -> Result<(), ClientError> {
        self.subscription(jid, "subscribe").await
    }

    /// Lets `jid` see your presence (answers their request).
    pub async fn approve(&self, jid: &str) -> Result<(), ClientError> {
        self.subscription(jid, "subscribed").await
    }

    /// Refuses `jid`'s request, or revokes their subscription.
    pub async fn deny(&self, jid: &str) -> Result<(), ClientError> {
        self.subscription(jid, "unsubscribed").await
    }

    /// Stops seeing `jid`'s presence.
    pub async fn unsubscribe(&self, jid: &str) -> Result<(), ClientError> {
        self.subscription(jid, "unsubscribe").await
    }

    async fn subscription(&self, jid: &str, ptype: &str) -> Result<(), ClientError> {
        let p = Element::new("presence", ns::CLIENT)
            .with_attr("to", jid)
            .with_attr("type", ptype);
        self.send_raw(&p.to_bytes(ns::CLIENT)).await
    }

    /// Sets your presence (sent again after every new login).
    pub async fn set_presence(
        &self,
        show: Option<Show>,
        status: Option<&str>,
        priority: i8,
    ) -> Result<(), ClientError> {
        let mut p = Element::new("presence", ns::CLIENT);
        if let Some(s) = show {
            p = p.with_child(Element::new("show", ns::CLIENT).with_text(s.as_str()));
        }
        if let Some(s) = status {
            p = p.with_child(Element::new("status", ns::CLIENT).with_text(s));
        }
        if priority != 0 {
            p = p.with_child(Element::new("priority", ns::CLIENT).with_text(priority.to_string()));
        }
        self.presence(p).await
    }

    /// The JIDs you block (XEP-0191).
    pub async fn blocklist(&self) -> Result<Vec<String>, ClientError> {
        let result = self
            .request("get", Element::new("blocklist", ns::BLOCKING))
            .await?;
        Ok(result
            .child("blocklist", ns::BLOCKING)
            .map(|l| {
                l.elements()
                    .filter_map(|i| i.attr("jid"))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Blocks `jids` (XEP-0191): a bare JID, a full one, or a domain. The
    /// server refuses their messages and IQs to you and your stanzas to
    /// them (`not-acceptable`), and presence stops both ways.
    pub async fn block(&self, jids: &[&str]) -> Result<(), ClientError> {
        self.request("set", block_items("block", jids))
            .await
            .map(drop)
    }

    /// Unblocks `jids`; everyone if `jids` is empty.
    pub async fn unblock(&self, jids: &[&str]) -> Result<(), ClientError> {
        self.request("set", block_items("unblock", jids))
            .await
            .map(drop)
    }

    /// Your private XML element `name` of `namespace` (XEP-0049), as
    /// stored; an empty one if nothing is.
    pub async fn private_data(&self, name: &str, namespace: &str) -> Result<Element, ClientError> {
        let query = Element::new("query", ns::PRIVATE).with_child(Element::new(name, namespace));
        let result = self.request("get", query).await?;
        Ok(result
            .child("query", ns::PRIVATE)
            .and_then(|q| q.elements().next().cloned())
            .unwrap_or_else(|| Element::new(name, namespace)))
    }

    /// Stores `element` as private XML (XEP-0049) under its namespace,
    /// replacing what was there. `jabber:` namespaces are refused.
    pub async fn set_private_data(&self, element: Element) -> Result<(), ClientError> {
        let query = Element::new("query", ns::PRIVATE).with_child(element);
        self.request("set", query).await.map(drop)
    }

    /// The STUN and TURN servers the server tells of (XEP-0215), with
    /// credentials for those that need them.
    pub async fn external_services(&self) -> Result<Vec<ExternalService>, ClientError> {
        let result = self
            .request("get", Element::new("services", ns::EXTDISCO))
            .await?;
        Ok(result
            .child("services", ns::EXTDISCO)
            .map(|l| l.elements().filter_map(ExternalService::parse).collect())
            .unwrap_or_default())
    }

    /// One page of the archive (XEP-0313).
    pub async fn history(&self, q: &HistoryQuery) -> Result<HistoryPage, ClientError> {
        match self.ask(Request::History(q.clone())).await? {
            Answer::History(page) => Ok(page),
            _ => Err(ClientError::Closed),
        }
    }

    /// An IQ to the own account with one child; the result element, or the
    /// stanza error.
    async fn request(&self, itype: &str, child: Element) -> Result<Element, ClientError> {
        self.request_to(itype, None, child).await
    }

    /// An IQ with one child to `to` (none: the own account); the result
    /// element, or the stanza error.
    pub(crate) async fn request_to(
        &self,
        itype: &str,
        to: Option<&str>,
        child: Element,
    ) -> Result<Element, ClientError> {
        let mut iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", itype)
            .with_child(child);
        if let Some(to) = to {
            iq.set_attr("to", to);
        }
        let r = self.iq(iq).await?;
        match r.error {
            None => Ok(r.element),
            Some(cond) => Err(ClientError::StanzaError(cond)),
        }
    }
}

/// A `<block/>` or `<unblock/>` naming `jids`.
fn block_items(name: &str, jids: &[&str]) -> Element {
    jids.iter().fold(Element::new(name, ns::BLOCKING), |e, j| {
        e.with_child(Element::new("item", ns::BLOCKING).with_attr("jid", *j))
    })
}
