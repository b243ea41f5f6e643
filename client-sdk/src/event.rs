//! Typed incoming events.

use xmpp_stream::element::Element;
use xmpp_stream::ns;

/// Something the server sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A message.
    Message(Message),
    /// A presence.
    Presence(Presence),
    /// A notification of a personal eventing node the app wants
    /// ([`crate::ConnectOptions::notify`]).
    Pep(crate::pep::PepEvent),
    /// An IQ result or error nobody was waiting for, or an IQ request.
    Iq(IqResponse),
    /// The server ended the stream with this condition.
    StreamError(String),
    /// A sent message moved on (see [`MessageState`]).
    MessageState {
        /// The id `send_message` returned.
        id: String,
        /// Its new state.
        state: MessageState,
    },
    /// The connection was lost; the client reconnects by itself if allowed.
    ConnectionLost(String),
    /// The client is connected again: `resumed` if the session continued
    /// (nothing lost, nothing repeated), else it logged in anew and resent
    /// what the server had not acknowledged.
    Reconnected {
        /// Whether the old session was resumed.
        resumed: bool,
    },
    /// The session is over for good.
    Disconnected,
    /// A contact's subscription stanza (RFC 6121 §3): a request to answer
    /// with [`crate::Client::approve`] or [`crate::Client::deny`], or their
    /// answer to yours.
    Subscription {
        /// The contact's bare JID.
        from: String,
        /// What they did.
        kind: crate::im::SubscriptionRequest,
    },
    /// The roster changed (from another device, or a subscription moved on).
    RosterPush(crate::im::RosterItem),
    /// A message in a room the app joined (never also an
    /// [`Event::Message`]).
    RoomMessage(crate::muc::RoomMessage),
    /// A room's subject: at a join (after the history), and when changed.
    RoomSubject {
        /// The room's bare JID.
        room: String,
        /// Who set it (`None`: the room).
        nick: Option<String>,
        /// The subject (empty: none).
        subject: String,
    },
    /// An occupant's presence in a room the app joined, the app's own
    /// included (never also an [`Event::Presence`]). After a rejoin
    /// ([`Event::RoomRejoined`]) the occupants arrive anew.
    Occupant(crate::muc::OccupantPresence),
    /// An invitation to a room (mediated by the room, or direct).
    RoomInvite(crate::muc::RoomInvite),
    /// A room the app was in was destroyed (it is forgotten).
    RoomDestroyed {
        /// The room's bare JID.
        room: String,
        /// Its owner's reason.
        reason: Option<String>,
        /// The room that replaces it, if any.
        alternate: Option<String>,
    },
    /// After a new login (the session could not be resumed), or when an
    /// XEP-0410 self-ping found the app out of the room (e.g. the server
    /// restarted and forgot its occupants; see
    /// [`crate::ConnectOptions::room_ping_interval`]), the SDK joined this
    /// room again by itself, with the same nick and password, asking for
    /// the history missed meanwhile. Its occupants came before as
    /// [`Event::Occupant`]; the history follows.
    RoomRejoined(crate::muc::RoomJoined),
    /// Joining a room again (after a new login or a self-ping, as for
    /// [`Event::RoomRejoined`]) failed (the room is forgotten): the room's
    /// stanza error (e.g. `forbidden`: banned meanwhile, `conflict`: the
    /// nick is taken), or `item-not-found` when the rejoin created the
    /// room anew (a temporary room gone meanwhile: the session left it at
    /// once). A rejoin left unanswered is no failure: the room stays, and
    /// is checked and joined again a minute later.
    RoomRejoinFailed {
        /// The room's bare JID.
        room: String,
        /// Why.
        error: crate::ClientError,
    },
}

/// Where a sent message is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageState {
    /// Waiting in the outbox for a connection.
    Queued,
    /// Written to the server.
    Sent,
    /// The server acknowledged it (XEP-0198): it is delivered or stored.
    Acknowledged,
    /// The recipient's client confirmed it (XEP-0184 receipt).
    Delivered,
    /// It cannot be sent (the outbox is full or the session ended).
    Failed(String),
}

/// An incoming message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Stanza id.
    pub id: Option<String>,
    /// Sender as stamped by the server.
    pub from: String,
    /// Recipient.
    pub to: Option<String>,
    /// `type` (chat, normal, error...).
    pub kind: String,
    /// Body text.
    pub body: Option<String>,
    /// XEP-0203 delay stamp, for messages stored offline.
    pub delay: Option<String>,
    /// Stanza error condition, for `type='error'`.
    pub error: Option<String>,
    /// The server's stable id for it (XEP-0359), for history paging.
    pub stanza_id: Option<String>,
    /// A copy of a message another device of yours sent or received
    /// (XEP-0280).
    pub carbon: Option<Carbon>,
}

/// Which side of a conversation a carbon copy shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carbon {
    /// Another of your devices sent it.
    Sent,
    /// Another of your devices received it.
    Received,
}

/// Whom a message's server claims must speak for to be believed: an id
/// only from the archive that holds the message (XEP-0359 §3.1: `by` is
/// that archive's JID), a delay only from the server (XEP-0203). The first
/// such child counts, whatever came before it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Trusted<'a> {
    /// The bare JID of the archive whose `<stanza-id/>` counts.
    pub archive: Option<&'a str>,
    /// The domain whose `<delay/>` counts.
    pub server: Option<&'a str>,
}

impl<'a> Trusted<'a> {
    /// For a message received by the account `own` (a bare JID): its
    /// archive (a room's, for groupchat) and its server.
    pub(crate) fn for_message(el: &'a Element, own: Option<&'a str>) -> Self {
        let archive = match el.attr("type") {
            Some("groupchat") => el.attr("from").map(bare),
            _ => own,
        };
        Trusted {
            archive,
            server: own.map(domain),
        }
    }
}

/// The bare part of a JID.
pub(crate) fn bare(jid: &str) -> &str {
    jid.split_once('/').map_or(jid, |(b, _)| b)
}

/// The domain of a JID.
fn domain(jid: &str) -> &str {
    let b = bare(jid);
    b.rsplit_once('@').map_or(b, |(_, d)| d)
}

/// A message element as a [`Message`], its server claims believed as
/// `trusted` says.
pub(crate) fn message_from(el: &Element, trusted: Trusted<'_>) -> Message {
    let attr = |k: &str| el.attr(k).map(str::to_owned);
    let claim = |name: &str, namespace: &str, entity: &str, trusted: Option<&str>| {
        el.elements()
            .filter(|c| c.name == name && c.ns == namespace)
            .find(|c| {
                c.attr(entity)
                    .zip(trusted)
                    .is_some_and(|(e, t)| e.eq_ignore_ascii_case(t))
            })
    };
    Message {
        id: attr("id"),
        from: attr("from").unwrap_or_default(),
        to: attr("to"),
        kind: attr("type").unwrap_or_else(|| "normal".into()),
        body: el.child("body", ns::CLIENT).map(Element::text),
        delay: claim("delay", ns::DELAY, "from", trusted.server)
            .and_then(|d| d.attr("stamp"))
            .map(str::to_owned),
        error: stanza_error_condition(el),
        stanza_id: claim("stanza-id", ns::SID, "by", trusted.archive)
            .and_then(|s| s.attr("id"))
            .map(str::to_owned),
        carbon: None,
    }
}

/// The message inside a carbon copy, if `el` is one, for the account
/// `own`. The server stamps a message with the id of its recipient's
/// archive: a copy of one the account sent carries its peer's.
fn carbon_of(el: &Element, own: Option<&str>) -> Option<Message> {
    let (kind, wrapper) = [(Carbon::Sent, "sent"), (Carbon::Received, "received")]
        .into_iter()
        .find_map(|(k, name)| el.child(name, ns::CARBONS).map(|w| (k, w)))?;
    let inner = wrapper
        .child("forwarded", ns::FORWARD)?
        .child("message", ns::CLIENT)?;
    let archive = match kind {
        Carbon::Sent => inner.attr("to").map(bare),
        Carbon::Received => own,
    };
    let trusted = Trusted {
        archive,
        server: own.map(domain),
    };
    let mut m = message_from(inner, trusted);
    m.carbon = Some(kind);
    Some(m)
}

/// An incoming presence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Presence {
    /// Sender.
    pub from: String,
    /// Available (no type) or not.
    pub available: bool,
    /// `type` attribute if any.
    pub kind: Option<String>,
    /// Priority.
    pub priority: i8,
    /// Status text.
    pub status: Option<String>,
    /// `<show/>`: away, chat, dnd or xa.
    pub show: Option<String>,
}

/// The item of a roster push (an IQ set from the own account, RFC 6121
/// §2.1.6), if `el` is one.
pub(crate) fn roster_push(el: &Element, own: Option<&str>) -> Option<crate::im::RosterItem> {
    if el.name != "iq" || el.attr("type") != Some("set") {
        return None;
    }
    if let Some(from) = el.attr("from")
        && Some(from) != own
    {
        return None;
    }
    crate::im::RosterItem::parse(el.child("query", ns::ROSTER)?.child("item", ns::ROSTER)?)
}

/// An IQ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IqResponse {
    /// Id.
    pub id: String,
    /// Sender.
    pub from: Option<String>,
    /// `type`.
    pub kind: String,
    /// Stanza error condition for `type='error'`.
    pub error: Option<String>,
    /// The whole element.
    pub element: Element,
}

/// The condition of a `<stream:error/>`.
pub(crate) fn stream_error_condition(el: &Element) -> String {
    el.elements()
        .find(|c| c.ns == ns::STREAM_ERRORS && c.name != "text")
        .map(|c| c.name.clone())
        .unwrap_or_else(|| "undefined-condition".into())
}

/// The condition of a stanza `<error/>`, if any.
pub(crate) fn stanza_error_condition(el: &Element) -> Option<String> {
    el.child("error", ns::CLIENT)?
        .elements()
        .find(|c| c.ns == ns::STANZA_ERRORS && c.name != "text")
        .map(|c| c.name.clone())
}

/// An IQ as the app sees it.
pub(crate) fn iq_response(el: Element) -> IqResponse {
    let attr = |k: &str| el.attr(k).map(str::to_owned);
    IqResponse {
        id: attr("id").unwrap_or_default(),
        from: attr("from"),
        kind: attr("type").unwrap_or_default(),
        error: stanza_error_condition(&el),
        element: el,
    }
}

/// Turns a stanza into an event. `own` is the account's bare JID (carbons
/// and roster pushes must come from it).
pub(crate) fn classify(el: Element, own: Option<&str>) -> Option<Event> {
    if el.ns == ns::STREAMS && el.name == "error" {
        return Some(Event::StreamError(stream_error_condition(&el)));
    }
    if el.ns != ns::CLIENT {
        return None;
    }
    if el.name == "message"
        && let Some(ev) = crate::pep::event_of(&el)
    {
        return Some(Event::Pep(ev));
    }
    let attr = |k: &str| el.attr(k).map(str::to_owned);
    match el.name.as_str() {
        // A carbon copy must come from the own account (XEP-0280 §11).
        "message" => Some(Event::Message(
            carbon_of(&el, own)
                .filter(|_| own.is_some_and(|own| attr("from").as_deref() == Some(own)))
                .unwrap_or_else(|| message_from(&el, Trusted::for_message(&el, own))),
        )),
        "presence" => {
            if let Some(kind) = el
                .attr("type")
                .and_then(crate::im::SubscriptionRequest::parse)
            {
                let from = attr("from").unwrap_or_default();
                let from = from
                    .split_once('/')
                    .map_or(from.clone(), |(b, _)| b.to_owned());
                return Some(Event::Subscription { from, kind });
            }
            Some(Event::Presence(Presence {
                from: attr("from").unwrap_or_default(),
                available: el.attr("type").is_none(),
                kind: attr("type"),
                priority: el
                    .child("priority", ns::CLIENT)
                    .and_then(|p| p.text().trim().parse().ok())
                    .unwrap_or(0),
                status: el.child("status", ns::CLIENT).map(Element::text),
                show: el.child("show", ns::CLIENT).map(Element::text),
            }))
        }
        "iq" => Some(match roster_push(&el, own) {
            Some(item) => Event::RosterPush(item),
            None => Event::Iq(iq_response(el)),
        }),
        _ => None,
    }
}
