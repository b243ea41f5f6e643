//! Group chat (XEP-0045 multi-user chat) for the app: joining and leaving
//! rooms, talking in them, moderation (`muc#admin`), room configuration
//! and destruction (`muc#owner`), invitations (mediated, and direct ones
//! of XEP-0249), occupant ids (XEP-0421), self-ping (XEP-0410) and a
//! room's archive (XEP-0313 on the room's JID).
//!
//! The session tracks the rooms the app joined: it tells their presence
//! from a contact's and their messages from a chat, and turns them into
//! [`crate::Event::Occupant`], [`crate::Event::RoomMessage`],
//! [`crate::Event::RoomSubject`] and [`crate::Event::RoomDestroyed`]
//! (never also into [`crate::Event::Presence`] or
//! [`crate::Event::Message`]). After a new login (a session that could
//! not be resumed) it joins them again by itself, with the same nick and
//! password, asking for the history it missed
//! ([`crate::Event::RoomRejoined`], or [`crate::Event::RoomRejoinFailed`]).
//!
//! What this module builds and parses is in pure functions (the session
//! and the tests call them); the [`Client`] methods only send and wait.

use xmpp_stream::element::Element;
use xmpp_stream::ns;

use crate::client::new_id;
use crate::im::{HistoryPage, HistoryQuery};
use crate::session::{Answer, Command, Request};
use crate::{Client, ClientError};

/// The join namespace (the `<x/>` of a join presence).
pub const MUC: &str = "http://jabber.org/protocol/muc";
/// What a room says about its occupants and invitations.
pub const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
/// Moderation: roles and affiliations.
pub const MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
/// Room configuration and destruction.
pub const MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
/// The `FORM_TYPE` of a room's configuration form.
pub const MUC_ROOMCONFIG: &str = "http://jabber.org/protocol/muc#roomconfig";
/// Occupant ids (XEP-0421).
pub const OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
/// Direct invitations (XEP-0249).
pub const CONFERENCE: &str = "jabber:x:conference";

/// An occupant's role in a room: what they may do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// May kick, grant and revoke voice, change the subject.
    Moderator,
    /// Has voice: may talk.
    Participant,
    /// Present without voice (in a moderated room).
    Visitor,
    /// Not in the room (how a kick is asked for).
    None,
}

impl Role {
    /// Its name in the protocol.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Moderator => "moderator",
            Role::Participant => "participant",
            Role::Visitor => "visitor",
            Role::None => "none",
        }
    }

    /// The role named `s` (unknown names are `None`).
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("moderator") => Role::Moderator,
            Some("participant") => Role::Participant,
            Some("visitor") => Role::Visitor,
            _ => Role::None,
        }
    }
}

/// A user's lasting standing in a room, tied to their bare JID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Affiliation {
    /// Owns the room: configures and destroys it.
    Owner,
    /// Administers it: bans, grants membership and moderation.
    Admin,
    /// A member (may enter a members-only room).
    Member,
    /// Banned.
    Outcast,
    /// No affiliation.
    None,
}

impl Affiliation {
    /// Its name in the protocol.
    pub fn as_str(self) -> &'static str {
        match self {
            Affiliation::Owner => "owner",
            Affiliation::Admin => "admin",
            Affiliation::Member => "member",
            Affiliation::Outcast => "outcast",
            Affiliation::None => "none",
        }
    }

    /// The affiliation named `s` (unknown names are `None`).
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("owner") => Affiliation::Owner,
            Some("admin") => Affiliation::Admin,
            Some("member") => Affiliation::Member,
            Some("outcast") => Affiliation::Outcast,
            _ => Affiliation::None,
        }
    }
}

/// One occupant of a room, as its last presence showed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Occupant {
    /// Their nick (the resource of their occupant JID).
    pub nick: String,
    /// Their role.
    pub role: Role,
    /// Their affiliation.
    pub affiliation: Affiliation,
    /// Their real JID, if the room shows it to you (non-anonymous rooms,
    /// or you are a moderator).
    pub jid: Option<String>,
    /// Their stable id in this room (XEP-0421), the same across nick
    /// changes and devices; believable only from a room that announces
    /// `urn:xmpp:occupant-id:0` (it replaces whatever occupants send).
    pub occupant_id: Option<String>,
    /// `<show/>`: away, chat, dnd or xa.
    pub show: Option<String>,
    /// Their status text.
    pub status: Option<String>,
}

/// Why the room removed an occupant (an unavailable presence's status
/// code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    /// Kicked (307).
    Kicked,
    /// Banned (301).
    Banned,
    /// Their affiliation changed (321).
    AffiliationChanged,
    /// The room became members-only and they are no member (322).
    MembersOnly,
    /// The service is shutting down (332).
    Shutdown,
    /// A technical problem (333).
    Error,
}

impl Removal {
    fn of(codes: &[u16]) -> Option<Self> {
        [
            (301, Removal::Banned),
            (307, Removal::Kicked),
            (321, Removal::AffiliationChanged),
            (322, Removal::MembersOnly),
            (332, Removal::Shutdown),
            (333, Removal::Error),
        ]
        .into_iter()
        .find_map(|(code, r)| codes.contains(&code).then_some(r))
    }
}

/// An occupant's presence in a room the app joined: someone (or the app
/// itself, `is_self`) entered, changed, left, was renamed or removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OccupantPresence {
    /// The room's bare JID.
    pub room: String,
    /// The occupant.
    pub occupant: Occupant,
    /// In the room (else they left, were removed, or changed nick).
    pub available: bool,
    /// It is the app's own occupant (status code 110).
    pub is_self: bool,
    /// The status codes (XEP-0045 §15.6.2), e.g. 110 self, 201 created,
    /// 303 new nick, 307 kicked.
    pub status_codes: Vec<u16>,
    /// Their new nick (code 303): an available presence from it follows.
    pub new_nick: Option<String>,
    /// Why the room removed them, if it did.
    pub removal: Option<Removal>,
    /// The reason given for a removal or a change.
    pub reason: Option<String>,
    /// Who did it (their nick, else their JID), if the room says.
    pub actor: Option<String>,
}

/// A message in a room (type `groupchat`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomMessage {
    /// The room's bare JID.
    pub room: String,
    /// The sender's nick; `None` for the room itself (status notices).
    pub nick: Option<String>,
    /// The sender's id for it (the app's own messages come back with the
    /// id [`Client::send_groupchat`] returned).
    pub id: Option<String>,
    /// The room's stable id for it (XEP-0359, `by` the room), for paging
    /// its archive.
    pub stanza_id: Option<String>,
    /// The sender's occupant id (XEP-0421).
    pub occupant_id: Option<String>,
    /// Its text (none for a notice or a message without a body, such as a
    /// chat state).
    pub body: Option<String>,
    /// When the room received it (XEP-0203), for history.
    pub delay: Option<String>,
    /// It is history (sent again by the room at a join, or from its
    /// archive), not live.
    pub is_history: bool,
    /// A notice's status codes (e.g. 104: the configuration changed).
    pub status_codes: Vec<u16>,
}

/// An invitation to a room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomInvite {
    /// The room's bare JID.
    pub room: String,
    /// Who invites.
    pub from: String,
    /// Their reason.
    pub reason: Option<String>,
    /// The room's password, if it has one.
    pub password: Option<String>,
    /// Sent by the inviter directly (XEP-0249), not through the room.
    pub direct: bool,
}

/// A joined room ([`Client::join_room`], or the session's rejoin after a
/// new login or a self-ping that found the app out of it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomJoined {
    /// The room's bare JID.
    pub room: String,
    /// The nick the room gave the app (it may differ from the one asked
    /// for: status code 210).
    pub nick: String,
    /// The app's own occupant.
    pub me: Occupant,
    /// The occupants the room showed before the app's own presence (those
    /// present when it joined).
    pub occupants: Vec<Occupant>,
    /// The status codes of the app's own presence (201: the room was
    /// created and waits for its configuration, 100 or 172: anyone sees
    /// real JIDs, 170: the room is logged, 210: the nick was changed).
    pub status_codes: Vec<u16>,
}

impl RoomJoined {
    /// The join created the room (201): it stays locked until its owner
    /// configures it ([`Client::configure_room`]; the default
    /// [`RoomConfig`] accepts the service's defaults, an instant room).
    pub fn created(&self) -> bool {
        self.status_codes.contains(&201)
    }

    /// Every occupant sees real JIDs (100 or 172).
    pub fn non_anonymous(&self) -> bool {
        self.status_codes.contains(&100) || self.status_codes.contains(&172)
    }
}

/// How to join a room.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinOptions {
    /// The room's password.
    pub password: Option<String>,
    /// At most this many messages of history (0: none); the room's default
    /// if not set. A rejoin (after a new login, or when a self-ping found
    /// the app out of the room) asks for what was missed, at most this
    /// many (none if 0: an app that reads the room's archive instead).
    pub history_max_stanzas: Option<u32>,
}

/// Who may see occupants' real JIDs (`muc#roomconfig_whois`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whois {
    /// Moderators only (semi-anonymous).
    Moderators,
    /// Anyone (non-anonymous).
    Anyone,
}

/// One field of a data form (XEP-0004), as the room sent it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FormField {
    /// Its name.
    pub var: String,
    /// Its type (`boolean`, `text-single`, `list-single`...).
    pub kind: Option<String>,
    /// Its label for people.
    pub label: Option<String>,
    /// Its values.
    pub values: Vec<String>,
    /// The values it may take (a list's options).
    pub options: Vec<String>,
}

/// A typed view of a room's configuration form (`muc#roomconfig`). Read
/// with [`Client::room_config`], changed and submitted with
/// [`Client::configure_room`]: fields left `None` are not submitted (the
/// room keeps them), `other` goes back as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomConfig {
    /// Its name (`muc#roomconfig_roomname`).
    pub name: Option<String>,
    /// Its description (`muc#roomconfig_roomdesc`).
    pub description: Option<String>,
    /// It outlives its last occupant (`muc#roomconfig_persistentroom`).
    pub persistent: Option<bool>,
    /// Listed in the service's rooms (`muc#roomconfig_publicroom`).
    pub public: Option<bool>,
    /// Only members may enter (`muc#roomconfig_membersonly`).
    pub members_only: Option<bool>,
    /// Only participants may talk (`muc#roomconfig_moderatedroom`).
    pub moderated: Option<bool>,
    /// It needs a password (`muc#roomconfig_passwordprotectedroom`).
    pub password_protected: Option<bool>,
    /// The password (`muc#roomconfig_roomsecret`).
    pub password: Option<String>,
    /// Who sees real JIDs (`muc#roomconfig_whois`).
    pub whois: Option<Whois>,
    /// Most occupants (`muc#roomconfig_maxusers`; a non-number such as
    /// `none` stays in `other`).
    pub max_users: Option<u32>,
    /// Occupants may change the subject (`muc#roomconfig_changesubject`).
    pub change_subject: Option<bool>,
    /// Occupants may invite (`muc#roomconfig_allowinvites`).
    pub allow_invites: Option<bool>,
    /// The room keeps an archive (`muc#roomconfig_enablearchiving`).
    pub archiving: Option<bool>,
    /// The form's other fields, as they came.
    pub other: Vec<FormField>,
}

const F_NAME: &str = "muc#roomconfig_roomname";
const F_DESC: &str = "muc#roomconfig_roomdesc";
const F_PERSISTENT: &str = "muc#roomconfig_persistentroom";
const F_PUBLIC: &str = "muc#roomconfig_publicroom";
const F_MEMBERS_ONLY: &str = "muc#roomconfig_membersonly";
const F_MODERATED: &str = "muc#roomconfig_moderatedroom";
const F_PASSWORD_PROTECTED: &str = "muc#roomconfig_passwordprotectedroom";
const F_SECRET: &str = "muc#roomconfig_roomsecret";
const F_WHOIS: &str = "muc#roomconfig_whois";
const F_MAX_USERS: &str = "muc#roomconfig_maxusers";
const F_CHANGE_SUBJECT: &str = "muc#roomconfig_changesubject";
const F_ALLOW_INVITES: &str = "muc#roomconfig_allowinvites";
const F_ARCHIVING: &str = "muc#roomconfig_enablearchiving";

/// Sets `slot` to `value` if there is one; whether there was.
fn set<T>(slot: &mut Option<T>, value: Option<T>) -> bool {
    let some = value.is_some();
    if some {
        *slot = value;
    }
    some
}

fn form_bool(values: &[String]) -> Option<bool> {
    match values.first().map(|v| v.trim()) {
        Some("1" | "true") => Some(true),
        Some("0" | "false") => Some(false),
        _ => None,
    }
}

impl RoomConfig {
    /// The typed view of a `jabber:x:data` form.
    pub fn from_form(form: &Element) -> Self {
        let mut config = RoomConfig::default();
        for f in form
            .elements()
            .filter(|f| f.name == "field" && f.ns == ns::DATA)
        {
            let Some(var) = f.attr("var") else { continue };
            if var == "FORM_TYPE" {
                continue;
            }
            let values: Vec<String> = f
                .elements()
                .filter(|v| v.name == "value")
                .map(Element::text)
                .collect();
            let text = values.first().cloned();
            let typed = match var {
                F_NAME => set(&mut config.name, text),
                F_DESC => set(&mut config.description, text),
                F_SECRET => set(&mut config.password, text),
                F_PERSISTENT => set(&mut config.persistent, form_bool(&values)),
                F_PUBLIC => set(&mut config.public, form_bool(&values)),
                F_MEMBERS_ONLY => set(&mut config.members_only, form_bool(&values)),
                F_MODERATED => set(&mut config.moderated, form_bool(&values)),
                F_PASSWORD_PROTECTED => set(&mut config.password_protected, form_bool(&values)),
                F_CHANGE_SUBJECT => set(&mut config.change_subject, form_bool(&values)),
                F_ALLOW_INVITES => set(&mut config.allow_invites, form_bool(&values)),
                F_ARCHIVING => set(&mut config.archiving, form_bool(&values)),
                F_WHOIS => {
                    let whois = match values.first().map(|v| v.trim()) {
                        Some("moderators") => Some(Whois::Moderators),
                        Some("anyone") => Some(Whois::Anyone),
                        _ => None,
                    };
                    set(&mut config.whois, whois)
                }
                F_MAX_USERS => set(
                    &mut config.max_users,
                    values.first().and_then(|v| v.trim().parse().ok()),
                ),
                _ => false,
            };
            if !typed {
                config.other.push(FormField {
                    var: var.to_owned(),
                    kind: f.attr("type").map(str::to_owned),
                    label: f.attr("label").map(str::to_owned),
                    values,
                    options: f
                        .elements()
                        .filter(|o| o.name == "option")
                        .filter_map(|o| o.child("value", ns::DATA))
                        .map(Element::text)
                        .collect(),
                });
            }
        }
        config
    }

    /// The form submitting this configuration: the typed fields that are
    /// set, then `other` (but for a field a typed one replaces, and fixed
    /// text).
    pub fn to_form(&self) -> Element {
        let field = |var: &str, values: &[&str]| {
            values.iter().fold(
                Element::new("field", ns::DATA).with_attr("var", var),
                |f, v| f.with_child(Element::new("value", ns::DATA).with_text(*v)),
            )
        };
        let flag = |b: bool| if b { "1" } else { "0" };
        let mut typed: Vec<(&str, String)> = Vec::new();
        let mut put = |var: &'static str, value: Option<String>| {
            if let Some(v) = value {
                typed.push((var, v));
            }
        };
        put(F_NAME, self.name.clone());
        put(F_DESC, self.description.clone());
        put(F_PERSISTENT, self.persistent.map(|b| flag(b).into()));
        put(F_PUBLIC, self.public.map(|b| flag(b).into()));
        put(F_MEMBERS_ONLY, self.members_only.map(|b| flag(b).into()));
        put(F_MODERATED, self.moderated.map(|b| flag(b).into()));
        put(
            F_PASSWORD_PROTECTED,
            self.password_protected.map(|b| flag(b).into()),
        );
        put(F_SECRET, self.password.clone());
        put(
            F_WHOIS,
            self.whois.map(|w| {
                match w {
                    Whois::Moderators => "moderators",
                    Whois::Anyone => "anyone",
                }
                .into()
            }),
        );
        put(F_MAX_USERS, self.max_users.map(|n| n.to_string()));
        put(
            F_CHANGE_SUBJECT,
            self.change_subject.map(|b| flag(b).into()),
        );
        put(F_ALLOW_INVITES, self.allow_invites.map(|b| flag(b).into()));
        put(F_ARCHIVING, self.archiving.map(|b| flag(b).into()));
        let mut form = Element::new("x", ns::DATA)
            .with_attr("type", "submit")
            .with_child(field("FORM_TYPE", &[MUC_ROOMCONFIG]).with_attr("type", "hidden"));
        for (var, value) in &typed {
            form = form.with_child(field(var, &[value]));
        }
        for f in &self.other {
            let replaced = typed.iter().any(|(var, _)| *var == f.var);
            if replaced || f.var == "FORM_TYPE" || f.kind.as_deref() == Some("fixed") {
                continue;
            }
            let values: Vec<&str> = f.values.iter().map(String::as_str).collect();
            form = form.with_child(field(&f.var, &values));
        }
        form
    }
}

/// One entry of a room's affiliation list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AffiliationItem {
    /// The user's bare JID.
    pub jid: String,
    /// Their affiliation.
    pub affiliation: Affiliation,
    /// Their reserved nick, if any.
    pub nick: Option<String>,
    /// The reason given (a ban's).
    pub reason: Option<String>,
}

/// What a self-ping says (XEP-0410 §3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelfPing {
    /// Still joined (a result, or `service-unavailable` /
    /// `feature-not-implemented` from a client of the app's that got the
    /// ping and does not answer pings).
    Joined,
    /// Joined, but the occupant's nick just changed (`item-not-found`:
    /// another client of the app renamed it).
    NickChanged,
    /// Not joined any more (`not-acceptable`, or any other error): join
    /// again.
    NotJoined,
    /// No answer in time, or the room's server is unreachable
    /// (`remote-server-not-found`, `remote-server-timeout`) or overloaded
    /// (`resource-constraint`: a join would be refused too; XEP-0410 §3.2
    /// would call it not joined, a deliberate deviation): nothing can be
    /// told; ask again later.
    Unreachable,
}

/// The verdict of a self-ping answered with `error` (`None`: a result).
pub(crate) fn self_ping_verdict(error: Option<&str>) -> SelfPing {
    match error {
        None | Some("service-unavailable" | "feature-not-implemented") => SelfPing::Joined,
        Some("item-not-found") => SelfPing::NickChanged,
        Some("remote-server-not-found" | "remote-server-timeout" | "resource-constraint") => {
            SelfPing::Unreachable
        }
        Some(_) => SelfPing::NotJoined,
    }
}

/// A checked room JID (bare, normalized as servers write it).
pub(crate) fn room_jid(room: &str) -> Result<jid::BareJid, ClientError> {
    let bare = jid::BareJid::new(room)
        .map_err(|e| ClientError::Config(format!("invalid room JID {room:?}: {e}")))?;
    if bare.node().is_none() {
        return Err(ClientError::Config(format!(
            "{room:?} is a service, not a room"
        )));
    }
    Ok(bare)
}

/// A checked occupant JID `room/nick`: the room's bare JID, the nick and
/// the occupant JID.
pub(crate) fn occupant_jid(room: &str, nick: &str) -> Result<(String, String), ClientError> {
    let room = room_jid(room)?;
    let full = room
        .with_resource_str(nick)
        .map_err(|e| ClientError::Config(format!("invalid nick {nick:?}: {e}")))?;
    Ok((room.to_string(), full.to_string()))
}

/// How much history a join asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HistoryWanted {
    /// At most this many messages.
    pub(crate) max_stanzas: Option<u32>,
    /// Only those of the last this many seconds.
    pub(crate) seconds: Option<u64>,
}

/// A join presence to `occupant` (`room/nick`), showing `caps`.
pub(crate) fn join_presence(
    occupant: &str,
    password: Option<&str>,
    history: HistoryWanted,
    caps: Option<Element>,
) -> Element {
    let mut x = Element::new("x", MUC);
    if history.max_stanzas.is_some() || history.seconds.is_some() {
        let mut h = Element::new("history", MUC);
        if let Some(max) = history.max_stanzas {
            h.set_attr("maxstanzas", max.to_string());
        }
        if let Some(seconds) = history.seconds {
            h.set_attr("seconds", seconds.to_string());
        }
        x = x.with_child(h);
    }
    if let Some(p) = password {
        x = x.with_child(Element::new("password", MUC).with_text(p));
    }
    let mut p = Element::new("presence", ns::CLIENT)
        .with_attr("to", occupant)
        .with_child(x);
    if let Some(c) = caps {
        p = p.with_child(c);
    }
    p
}

/// The presence leaving a room (to the app's occupant JID).
pub(crate) fn leave_presence(occupant: &str, status: Option<&str>) -> Element {
    let mut p = Element::new("presence", ns::CLIENT)
        .with_attr("to", occupant)
        .with_attr("type", "unavailable");
    if let Some(s) = status {
        p = p.with_child(Element::new("status", ns::CLIENT).with_text(s));
    }
    p
}

/// The presence asking for a new nick (to the new occupant JID).
pub(crate) fn nick_presence(new_occupant: &str) -> Element {
    Element::new("presence", ns::CLIENT).with_attr("to", new_occupant)
}

/// A message to everyone in `room`.
pub(crate) fn groupchat_message(room: &str, id: &str, body: &str) -> Element {
    Element::new("message", ns::CLIENT)
        .with_attr("to", room)
        .with_attr("type", "groupchat")
        .with_attr("id", id)
        .with_child(Element::new("body", ns::CLIENT).with_text(body))
}

/// The message changing `room`'s subject.
pub(crate) fn subject_message(room: &str, id: &str, subject: &str) -> Element {
    Element::new("message", ns::CLIENT)
        .with_attr("to", room)
        .with_attr("type", "groupchat")
        .with_attr("id", id)
        .with_child(Element::new("subject", ns::CLIENT).with_text(subject))
}

/// A mediated invitation of `to` (sent to the room, which passes it on).
pub(crate) fn mediated_invite(room: &str, id: &str, to: &str, reason: Option<&str>) -> Element {
    let mut invite = Element::new("invite", MUC_USER).with_attr("to", to);
    if let Some(r) = reason {
        invite = invite.with_child(Element::new("reason", MUC_USER).with_text(r));
    }
    Element::new("message", ns::CLIENT)
        .with_attr("to", room)
        .with_attr("id", id)
        .with_child(Element::new("x", MUC_USER).with_child(invite))
}

/// A direct invitation (XEP-0249) of `to` to `room`.
pub(crate) fn direct_invite(
    to: &str,
    id: &str,
    room: &str,
    reason: Option<&str>,
    password: Option<&str>,
) -> Element {
    let mut x = Element::new("x", CONFERENCE).with_attr("jid", room);
    if let Some(r) = reason {
        x.set_attr("reason", r);
    }
    if let Some(p) = password {
        x.set_attr("password", p);
    }
    Element::new("message", ns::CLIENT)
        .with_attr("to", to)
        .with_attr("id", id)
        .with_child(x)
}

/// A `muc#admin` query with one `item`.
fn admin_query(item: Element) -> Element {
    Element::new("query", MUC_ADMIN).with_child(item)
}

fn with_reason(item: Element, ns: &str, reason: Option<&str>) -> Element {
    match reason {
        Some(r) => item.with_child(Element::new("reason", ns).with_text(r)),
        None => item,
    }
}

/// The `muc#admin` query giving the occupant `nick` a role (`none`:
/// a kick).
pub(crate) fn role_query(nick: &str, role: Role, reason: Option<&str>) -> Element {
    let item = Element::new("item", MUC_ADMIN)
        .with_attr("nick", nick)
        .with_attr("role", role.as_str());
    admin_query(with_reason(item, MUC_ADMIN, reason))
}

/// The `muc#admin` query giving `jid` an affiliation (`outcast`: a ban).
pub(crate) fn affiliation_query(
    jid: &str,
    affiliation: Affiliation,
    reason: Option<&str>,
) -> Element {
    let item = Element::new("item", MUC_ADMIN)
        .with_attr("jid", jid)
        .with_attr("affiliation", affiliation.as_str());
    admin_query(with_reason(item, MUC_ADMIN, reason))
}

/// The `muc#admin` query asking for the users of one affiliation.
pub(crate) fn affiliation_list_query(affiliation: Affiliation) -> Element {
    admin_query(Element::new("item", MUC_ADMIN).with_attr("affiliation", affiliation.as_str()))
}

/// The entries of an affiliation list's result.
pub(crate) fn affiliation_list(result: &Element) -> Vec<AffiliationItem> {
    result
        .child("query", MUC_ADMIN)
        .map(|q| {
            q.elements()
                .filter(|i| i.name == "item")
                .filter_map(|i| {
                    Some(AffiliationItem {
                        jid: i.attr("jid")?.to_owned(),
                        affiliation: Affiliation::parse(i.attr("affiliation")),
                        nick: i.attr("nick").map(str::to_owned),
                        reason: i.child("reason", MUC_ADMIN).map(Element::text),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The `muc#owner` query submitting `config`.
pub(crate) fn configure_query(config: &RoomConfig) -> Element {
    Element::new("query", MUC_OWNER).with_child(config.to_form())
}

/// The `muc#owner` query destroying a room.
pub(crate) fn destroy_query(reason: Option<&str>) -> Element {
    Element::new("query", MUC_OWNER).with_child(with_reason(
        Element::new("destroy", MUC_OWNER),
        MUC_OWNER,
        reason,
    ))
}

/// The XEP-0199 ping of the app's own occupant.
pub(crate) fn self_ping_iq(occupant: &str) -> Element {
    Element::new("iq", ns::CLIENT)
        .with_attr("type", "get")
        .with_attr("to", occupant)
        .with_child(Element::new("ping", ns::PING))
}

/// The resource of a JID, if it has one.
pub(crate) fn resource(jid: &str) -> Option<&str> {
    jid.split_once('/').map(|(_, r)| r)
}

/// The `<x xmlns='muc#user'/>` of a stanza.
fn muc_user(el: &Element) -> Option<&Element> {
    el.child("x", MUC_USER)
}

/// The status codes of a `muc#user` `<x/>`.
fn status_codes(x: Option<&Element>) -> Vec<u16> {
    x.map(|x| {
        x.elements()
            .filter(|s| s.name == "status" && s.ns == MUC_USER)
            .filter_map(|s| s.attr("code")?.trim().parse().ok())
            .collect()
    })
    .unwrap_or_default()
}

/// The occupant id (XEP-0421) a room stamped on a stanza.
fn occupant_id(el: &Element) -> Option<String> {
    el.child("occupant-id", OCCUPANT_ID)
        .and_then(|o| o.attr("id"))
        .map(str::to_owned)
}

/// An occupant's presence (available or unavailable) from `room`; `own`
/// is the app's full JID (its own occupant shows it in a room that shows
/// real JIDs). `None` if it is not one (no nick, another type).
pub(crate) fn occupant_presence(el: &Element, room: &str, own: &str) -> Option<OccupantPresence> {
    let available = match el.attr("type") {
        None => true,
        Some("unavailable") => false,
        Some(_) => return None,
    };
    let nick = resource(el.attr("from")?)?.to_owned();
    let x = muc_user(el);
    let item = x.and_then(|x| x.child("item", MUC_USER));
    let codes = status_codes(x);
    let jid = item.and_then(|i| i.attr("jid")).map(str::to_owned);
    let is_self = codes.contains(&110)
        || jid
            .as_deref()
            .is_some_and(|j| crate::session::same_jid(j, own));
    let new_nick = if codes.contains(&303) {
        item.and_then(|i| i.attr("nick")).map(str::to_owned)
    } else {
        None
    };
    let actor = item
        .and_then(|i| i.child("actor", MUC_USER))
        .and_then(|a| a.attr("nick").or_else(|| a.attr("jid")).map(str::to_owned));
    Some(OccupantPresence {
        room: room.to_owned(),
        occupant: Occupant {
            nick,
            role: Role::parse(item.and_then(|i| i.attr("role"))),
            affiliation: Affiliation::parse(item.and_then(|i| i.attr("affiliation"))),
            jid,
            occupant_id: occupant_id(el),
            show: el.child("show", ns::CLIENT).map(Element::text),
            status: el.child("status", ns::CLIENT).map(Element::text),
        },
        available,
        is_self,
        removal: if available { None } else { Removal::of(&codes) },
        status_codes: codes,
        new_nick,
        reason: item
            .and_then(|i| i.child("reason", MUC_USER))
            .map(Element::text),
        actor,
    })
}

/// The room's destruction an unavailable presence announces: its reason
/// and the room that replaces it.
pub(crate) fn destroyed(el: &Element) -> Option<(Option<String>, Option<String>)> {
    if el.attr("type") != Some("unavailable") {
        return None;
    }
    let d = muc_user(el)?.child("destroy", MUC_USER)?;
    Some((
        d.child("reason", MUC_USER).map(Element::text),
        d.attr("jid").map(str::to_owned),
    ))
}

/// A groupchat message of a room, as the app sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RoomStanza {
    /// A message.
    Message(RoomMessage),
    /// A subject (a message with a subject and no body).
    Subject {
        /// Who set it (`None`: the room).
        nick: Option<String>,
        /// The subject (empty: none).
        subject: String,
    },
}

/// A groupchat message from `room` (its bare JID). A `<stanza-id/>` counts
/// only `by` the room, a `<delay/>` only `from` the room or its service.
pub(crate) fn room_message(el: &Element, room: &str) -> RoomStanza {
    let nick = el.attr("from").and_then(resource).map(str::to_owned);
    let body = el.child("body", ns::CLIENT).map(Element::text);
    if body.is_none()
        && let Some(subject) = el.child("subject", ns::CLIENT)
    {
        return RoomStanza::Subject {
            nick,
            subject: subject.text(),
        };
    }
    let service = room.rsplit_once('@').map_or(room, |(_, d)| d);
    let by_room = |c: &&Element, attr: &str| {
        c.attr(attr)
            .is_some_and(|a| a.eq_ignore_ascii_case(room) || a.eq_ignore_ascii_case(service))
    };
    let delay = el
        .elements()
        .filter(|c| c.name == "delay" && c.ns == ns::DELAY)
        .find(|c| by_room(c, "from"))
        .and_then(|d| d.attr("stamp"))
        .map(str::to_owned);
    let stanza_id = el
        .elements()
        .filter(|c| c.name == "stanza-id" && c.ns == ns::SID)
        .find(|c| c.attr("by").is_some_and(|b| b.eq_ignore_ascii_case(room)))
        .and_then(|s| s.attr("id"))
        .map(str::to_owned);
    RoomStanza::Message(RoomMessage {
        room: room.to_owned(),
        nick,
        id: el.attr("id").map(str::to_owned),
        stanza_id,
        occupant_id: occupant_id(el),
        body,
        is_history: delay.is_some(),
        delay,
        status_codes: status_codes(muc_user(el)),
    })
}

/// A `<result/>` of a query of `room`'s archive, as a room message: its
/// archive id is the result's, its time the archive's stamp. (An archived
/// subject change is left out.)
pub(crate) fn archived(result: &Element, room: &str) -> Option<RoomMessage> {
    let forwarded = result.child("forwarded", ns::FORWARD)?;
    let inner = forwarded.child("message", ns::CLIENT)?;
    let RoomStanza::Message(mut m) = room_message(inner, room) else {
        return None;
    };
    m.stanza_id = Some(result.attr("id")?.to_owned());
    let stamp = forwarded
        .child("delay", ns::DELAY)
        .and_then(|d| d.attr("stamp"))
        .map(str::to_owned);
    m.delay = stamp.or(m.delay);
    m.is_history = true;
    Some(m)
}

/// The invitation a message carries, if any: a mediated one (from a
/// room's bare JID) or a direct one (XEP-0249).
pub(crate) fn invite_of(el: &Element) -> Option<RoomInvite> {
    if matches!(el.attr("type"), Some("error" | "groupchat")) {
        return None;
    }
    let from = el.attr("from")?;
    if let Some(x) = muc_user(el)
        && let Some(invite) = x.child("invite", MUC_USER)
        && resource(from).is_none()
    {
        return Some(RoomInvite {
            room: from.to_owned(),
            from: invite.attr("from")?.to_owned(),
            reason: invite.child("reason", MUC_USER).map(Element::text),
            password: x.child("password", MUC_USER).map(Element::text),
            direct: false,
        });
    }
    let x = el.child("x", CONFERENCE)?;
    let room = x.attr("jid").filter(|j| !j.is_empty())?;
    Some(RoomInvite {
        room: room.to_owned(),
        from: from.to_owned(),
        reason: x.attr("reason").map(str::to_owned),
        password: x.attr("password").map(str::to_owned),
        direct: true,
    })
}

impl Client {
    /// Joins `room` (a bare JID such as `team@conference.example.org`) as
    /// `nick`, and waits (30 s at most) for the room's presence of the
    /// app's own occupant. The occupants already there come first, also
    /// as [`crate::Event::Occupant`]; history and the subject follow as
    /// events. A room that refuses answers with a stanza error:
    /// `not-authorized` (a password is needed or wrong),
    /// `registration-required` (members only), `forbidden` (banned),
    /// `conflict` (the nick is taken), `service-unavailable` (full),
    /// `item-not-found` (locked, being created by someone else),
    /// `not-allowed` (room creation refused).
    ///
    /// The session keeps the room: after a new login it joins it again
    /// by itself. Joining a room joined already joins it again.
    pub async fn join_room(
        &self,
        room: &str,
        nick: &str,
        opts: JoinOptions,
    ) -> Result<RoomJoined, ClientError> {
        let (room, occupant) = occupant_jid(room, nick)?;
        let nick = resource(&occupant).unwrap_or(nick).to_owned();
        let request = Request::JoinRoom {
            room,
            nick,
            password: opts.password,
            history: opts.history_max_stanzas,
        };
        match self.ask(request).await? {
            Answer::RoomJoined(joined) => Ok(joined),
            _ => Err(ClientError::Closed),
        }
    }

    /// Leaves `room`, with a status text for the others; the session
    /// forgets it (the room's last presence still arrives as an event).
    pub async fn leave_room(&self, room: &str, status: Option<&str>) -> Result<(), ClientError> {
        let room = room_jid(room)?.to_string();
        self.command(Command::LeaveRoom {
            room,
            status: status.map(str::to_owned),
        })
        .await
    }

    /// Sends `body` to everyone in `room`; returns its id. Like
    /// [`Client::send_message`] it goes through the outbox and stream
    /// management, and its progress arrives as
    /// [`crate::Event::MessageState`]; the room sends it back to the app
    /// as a [`crate::Event::RoomMessage`] with the same id.
    pub async fn send_groupchat(&self, room: &str, body: &str) -> Result<String, ClientError> {
        let room = room_jid(room)?.to_string();
        let id = new_id();
        let m = groupchat_message(&room, &id, body);
        self.send_stanza(m, Some(id.clone())).await?;
        Ok(id)
    }

    /// Changes `room`'s subject (refused with a message error if the app
    /// may not).
    pub async fn set_subject(&self, room: &str, subject: &str) -> Result<(), ClientError> {
        let room = room_jid(room)?.to_string();
        self.send_stanza(subject_message(&room, &new_id(), subject), None)
            .await
    }

    /// Changes the app's nick in `room`; returns the nick the room gave.
    /// Refused with `conflict` if taken, `not-acceptable` if another's
    /// reserved nick.
    pub async fn change_nick(&self, room: &str, new_nick: &str) -> Result<String, ClientError> {
        let (room, occupant) = occupant_jid(room, new_nick)?;
        let nick = resource(&occupant).unwrap_or(new_nick).to_owned();
        match self.ask(Request::ChangeNick { room, nick }).await? {
            Answer::NickChanged(nick) => Ok(nick),
            _ => Err(ClientError::Closed),
        }
    }

    /// Kicks the occupant `nick` out of `room` (a moderator's right).
    pub async fn kick(
        &self,
        room: &str,
        nick: &str,
        reason: Option<&str>,
    ) -> Result<(), ClientError> {
        self.set_role(room, nick, Role::None, reason).await
    }

    /// Gives the occupant `nick` a role: `Participant` grants voice,
    /// `Visitor` revokes it, `Moderator` makes a moderator, `None` kicks.
    pub async fn set_role(
        &self,
        room: &str,
        nick: &str,
        role: Role,
        reason: Option<&str>,
    ) -> Result<(), ClientError> {
        let room = room_jid(room)?.to_string();
        self.request_to("set", Some(&room), role_query(nick, role, reason))
            .await
            .map(drop)
    }

    /// Gives the user `jid` (a bare JID) an affiliation with `room`:
    /// `Outcast` bans, `Member` grants membership, `None` removes it.
    pub async fn set_affiliation(
        &self,
        room: &str,
        jid: &str,
        affiliation: Affiliation,
        reason: Option<&str>,
    ) -> Result<(), ClientError> {
        let room = room_jid(room)?.to_string();
        self.request_to(
            "set",
            Some(&room),
            affiliation_query(jid, affiliation, reason),
        )
        .await
        .map(drop)
    }

    /// The users with `affiliation` in `room` (e.g. the banned ones).
    pub async fn affiliations(
        &self,
        room: &str,
        affiliation: Affiliation,
    ) -> Result<Vec<AffiliationItem>, ClientError> {
        let room = room_jid(room)?.to_string();
        let result = self
            .request_to("get", Some(&room), affiliation_list_query(affiliation))
            .await?;
        Ok(affiliation_list(&result))
    }

    /// `room`'s configuration (its owner's right).
    pub async fn room_config(&self, room: &str) -> Result<RoomConfig, ClientError> {
        let room = room_jid(room)?.to_string();
        let result = self
            .request_to("get", Some(&room), Element::new("query", MUC_OWNER))
            .await?;
        result
            .child("query", MUC_OWNER)
            .and_then(|q| q.child("x", ns::DATA))
            .map(RoomConfig::from_form)
            .ok_or_else(|| ClientError::Protocol("no configuration form".into()))
    }

    /// Submits `room`'s configuration (`RoomConfig::default()`: the
    /// service's defaults, which unlocks a room just created).
    pub async fn configure_room(&self, room: &str, config: &RoomConfig) -> Result<(), ClientError> {
        let room = room_jid(room)?.to_string();
        self.request_to("set", Some(&room), configure_query(config))
            .await
            .map(drop)
    }

    /// Destroys `room` (its owner's right); its occupants are told the
    /// reason.
    pub async fn destroy_room(&self, room: &str, reason: Option<&str>) -> Result<(), ClientError> {
        let room = room_jid(room)?.to_string();
        self.request_to("set", Some(&room), destroy_query(reason))
            .await
            .map(drop)
    }

    /// Invites `jid` into `room` through the room (which adds its
    /// password, and makes them a member of a members-only room if the
    /// app may).
    pub async fn invite(
        &self,
        room: &str,
        jid: &str,
        reason: Option<&str>,
    ) -> Result<(), ClientError> {
        let room = room_jid(room)?.to_string();
        self.send_stanza(mediated_invite(&room, &new_id(), jid, reason), None)
            .await
    }

    /// Invites `jid` into `room` directly (XEP-0249), giving the password.
    pub async fn invite_direct(
        &self,
        room: &str,
        jid: &str,
        reason: Option<&str>,
        password: Option<&str>,
    ) -> Result<(), ClientError> {
        let room = room_jid(room)?.to_string();
        self.send_stanza(direct_invite(jid, &new_id(), &room, reason, password), None)
            .await
    }

    /// Whether the app is still in `room` as `nick` (XEP-0410): a ping of
    /// its own occupant. No answer in 30 s is [`SelfPing::Unreachable`].
    pub async fn self_ping(&self, room: &str, nick: &str) -> Result<SelfPing, ClientError> {
        let (_, occupant) = occupant_jid(room, nick)?;
        match self.iq(self_ping_iq(&occupant)).await {
            Ok(r) if r.kind == "result" => Ok(SelfPing::Joined),
            Ok(r) => Ok(self_ping_verdict(Some(
                r.error.as_deref().unwrap_or("undefined-condition"),
            ))),
            Err(ClientError::Timeout) => Ok(SelfPing::Unreachable),
            Err(e) => Err(e),
        }
    }

    /// Checks now that the app is still in every room it joined (an
    /// XEP-0410 self-ping of each, as the session also does by itself
    /// every [`crate::ConnectOptions::room_ping_interval`] and after each
    /// resumption): a room that lost the app is joined again, reported as
    /// [`crate::Event::RoomRejoined`] or [`crate::Event::RoomRejoinFailed`].
    /// Nothing is sent while offline (the next connection checks them).
    /// Returns once the check is handed to the session, not its outcome.
    pub async fn check_rooms(&self) -> Result<(), ClientError> {
        self.command(Command::CheckRooms).await
    }

    /// One page of `room`'s archive (XEP-0313 asked of the room), oldest
    /// first; `q.with` is ignored by most rooms. Each message's
    /// `stanza_id` is its archive id, for paging (after a rejoin, the
    /// page `after` the last `stanza_id` seen fills any gap).
    pub async fn room_history(
        &self,
        room: &str,
        q: &HistoryQuery,
    ) -> Result<HistoryPage<RoomMessage>, ClientError> {
        let room = room_jid(room)?.to_string();
        match self
            .ask(Request::RoomHistory {
                room,
                query: q.clone(),
            })
            .await?
        {
            Answer::RoomHistory(page) => Ok(page),
            _ => Err(ClientError::Closed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xml(s: &str) -> Element {
        Element::parse_in_stream(s.as_bytes()).unwrap()
    }

    fn text(el: &Element) -> String {
        String::from_utf8(el.to_bytes(ns::CLIENT)).unwrap()
    }

    const ROOM: &str = "coven@conference.example.org";

    #[test]
    fn a_join_presence_carries_the_password_and_the_history_wanted() {
        let p = join_presence(
            "coven@conference.example.org/thirdwitch",
            Some("cauldron"),
            HistoryWanted {
                max_stanzas: Some(20),
                seconds: None,
            },
            None,
        );
        assert_eq!(
            text(&p),
            "<presence to=\"coven@conference.example.org/thirdwitch\">\
             <x xmlns=\"http://jabber.org/protocol/muc\"><history maxstanzas=\"20\"/>\
             <password>cauldron</password></x></presence>"
        );
        let p = join_presence(
            "coven@conference.example.org/thirdwitch",
            None,
            HistoryWanted {
                max_stanzas: None,
                seconds: None,
            },
            Some(Element::new("c", ns::CAPS)),
        );
        assert_eq!(
            text(&p),
            "<presence to=\"coven@conference.example.org/thirdwitch\">\
             <x xmlns=\"http://jabber.org/protocol/muc\"/>\
             <c xmlns=\"http://jabber.org/protocol/caps\"/></presence>"
        );
    }

    #[test]
    fn leaving_renaming_talking_and_the_subject_are_plain_stanzas() {
        assert_eq!(
            text(&leave_presence(&format!("{ROOM}/me"), Some("bye"))),
            "<presence to=\"coven@conference.example.org/me\" type=\"unavailable\">\
             <status>bye</status></presence>"
        );
        assert_eq!(
            text(&nick_presence(&format!("{ROOM}/new"))),
            "<presence to=\"coven@conference.example.org/new\"/>"
        );
        assert_eq!(
            text(&groupchat_message(ROOM, "g1", "hi <all>")),
            "<message to=\"coven@conference.example.org\" type=\"groupchat\" id=\"g1\">\
             <body>hi &lt;all></body></message>"
        );
        assert_eq!(
            text(&subject_message(ROOM, "s1", "Spells")),
            "<message to=\"coven@conference.example.org\" type=\"groupchat\" id=\"s1\">\
             <subject>Spells</subject></message>"
        );
    }

    #[test]
    fn invitations_mediated_and_direct() {
        assert_eq!(
            text(&mediated_invite(
                ROOM,
                "i1",
                "hecate@example.org",
                Some("join us")
            )),
            "<message to=\"coven@conference.example.org\" id=\"i1\">\
             <x xmlns=\"http://jabber.org/protocol/muc#user\">\
             <invite to=\"hecate@example.org\"><reason>join us</reason></invite></x></message>"
        );
        assert_eq!(
            text(&direct_invite(
                "hecate@example.org",
                "i2",
                ROOM,
                None,
                Some("pw")
            )),
            "<message to=\"hecate@example.org\" id=\"i2\">\
             <x xmlns=\"jabber:x:conference\" jid=\"coven@conference.example.org\" password=\"pw\"/></message>"
        );
    }

    #[test]
    fn moderation_queries() {
        assert_eq!(
            text(&role_query("pistol", Role::None, Some("Avaunt"))),
            "<query xmlns=\"http://jabber.org/protocol/muc#admin\">\
             <item nick=\"pistol\" role=\"none\"><reason>Avaunt</reason></item></query>"
        );
        assert_eq!(
            text(&role_query("pistol", Role::Participant, None)),
            "<query xmlns=\"http://jabber.org/protocol/muc#admin\">\
             <item nick=\"pistol\" role=\"participant\"/></query>"
        );
        assert_eq!(
            text(&affiliation_query(
                "earl@example.org",
                Affiliation::Outcast,
                Some("treason")
            )),
            "<query xmlns=\"http://jabber.org/protocol/muc#admin\">\
             <item jid=\"earl@example.org\" affiliation=\"outcast\"><reason>treason</reason></item></query>"
        );
        assert_eq!(
            text(&affiliation_list_query(Affiliation::Member)),
            "<query xmlns=\"http://jabber.org/protocol/muc#admin\"><item affiliation=\"member\"/></query>"
        );
        let result = xml(
            "<iq type='result'><query xmlns='http://jabber.org/protocol/muc#admin'>\
             <item affiliation='outcast' jid='earl@example.org'><reason>treason</reason></item>\
             <item affiliation='member' jid='hag@example.org' nick='hag'/>\
             <item affiliation='member'/></query></iq>",
        );
        assert_eq!(
            affiliation_list(&result),
            vec![
                AffiliationItem {
                    jid: "earl@example.org".into(),
                    affiliation: Affiliation::Outcast,
                    nick: None,
                    reason: Some("treason".into()),
                },
                AffiliationItem {
                    jid: "hag@example.org".into(),
                    affiliation: Affiliation::Member,
                    nick: Some("hag".into()),
                    reason: None,
                },
            ]
        );
    }

    #[test]
    fn owner_queries_destroy_and_configure() {
        assert_eq!(
            text(&destroy_query(Some("done"))),
            "<query xmlns=\"http://jabber.org/protocol/muc#owner\">\
             <destroy><reason>done</reason></destroy></query>"
        );
        // the default configuration accepts the service's (an instant room)
        assert_eq!(
            text(&configure_query(&RoomConfig::default())),
            "<query xmlns=\"http://jabber.org/protocol/muc#owner\">\
             <x xmlns=\"jabber:x:data\" type=\"submit\"><field var=\"FORM_TYPE\" type=\"hidden\">\
             <value>http://jabber.org/protocol/muc#roomconfig</value></field></x></query>"
        );
    }

    #[test]
    fn a_configuration_form_reads_typed_and_goes_back_with_the_changes() {
        let form = xml("<x xmlns='jabber:x:data' type='form'>\
             <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/muc#roomconfig</value></field>\
             <field type='fixed'><value>Room settings</value></field>\
             <field var='muc#roomconfig_roomname' type='text-single' label='Name'><value>Coven</value></field>\
             <field var='muc#roomconfig_roomdesc' type='text-single'><value/></field>\
             <field var='muc#roomconfig_persistentroom' type='boolean'><value>1</value></field>\
             <field var='muc#roomconfig_publicroom' type='boolean'><value>false</value></field>\
             <field var='muc#roomconfig_membersonly' type='boolean'><value>0</value></field>\
             <field var='muc#roomconfig_moderatedroom' type='boolean'><value>true</value></field>\
             <field var='muc#roomconfig_passwordprotectedroom' type='boolean'><value>0</value></field>\
             <field var='muc#roomconfig_roomsecret' type='text-private'/>\
             <field var='muc#roomconfig_whois' type='list-single'><value>moderators</value>\
               <option label='Moderators'><value>moderators</value></option><option><value>anyone</value></option></field>\
             <field var='muc#roomconfig_maxusers' type='list-single'><value>none</value>\
               <option><value>10</value></option><option><value>none</value></option></field>\
             <field var='muc#roomconfig_changesubject' type='boolean'><value>1</value></field>\
             <field var='muc#roomconfig_allowinvites' type='boolean'><value>0</value></field>\
             <field var='muc#roomconfig_enablearchiving' type='boolean'><value>1</value></field>\
             <field var='muc#roomconfig_lang' type='text-single'><value>en</value></field>\
             </x>");
        let mut config = RoomConfig::from_form(&form);
        assert_eq!(config.name.as_deref(), Some("Coven"));
        assert_eq!(config.description.as_deref(), Some(""));
        assert_eq!(config.persistent, Some(true));
        assert_eq!(config.public, Some(false));
        assert_eq!(config.members_only, Some(false));
        assert_eq!(config.moderated, Some(true));
        assert_eq!(config.password_protected, Some(false));
        assert_eq!(config.password, None, "no value");
        assert_eq!(config.whois, Some(Whois::Moderators));
        assert_eq!(config.max_users, None, "'none' is no number");
        assert_eq!(config.change_subject, Some(true));
        assert_eq!(config.allow_invites, Some(false));
        assert_eq!(config.archiving, Some(true));
        let others: Vec<_> = config.other.iter().map(|f| f.var.as_str()).collect();
        assert_eq!(
            others,
            [
                "muc#roomconfig_roomsecret",
                "muc#roomconfig_maxusers",
                "muc#roomconfig_lang"
            ]
        );
        assert_eq!(config.other[1].options, ["10", "none"]);
        // changed: members only with a password and at most 10
        config.members_only = Some(true);
        config.password_protected = Some(true);
        config.password = Some("s3cret".into());
        config.max_users = Some(10);
        config.whois = Some(Whois::Anyone);
        let submitted = text(&config.to_form());
        for field in [
            "<field var=\"muc#roomconfig_membersonly\"><value>1</value></field>",
            "<field var=\"muc#roomconfig_passwordprotectedroom\"><value>1</value></field>",
            "<field var=\"muc#roomconfig_roomsecret\"><value>s3cret</value></field>",
            "<field var=\"muc#roomconfig_maxusers\"><value>10</value></field>",
            "<field var=\"muc#roomconfig_whois\"><value>anyone</value></field>",
            "<field var=\"muc#roomconfig_lang\"><value>en</value></field>",
            "<field var=\"muc#roomconfig_roomname\"><value>Coven</value></field>",
        ] {
            assert!(submitted.contains(field), "{field} in {submitted}");
        }
        assert_eq!(submitted.matches("muc#roomconfig_maxusers").count(), 1);
        assert_eq!(submitted.matches("muc#roomconfig_roomsecret").count(), 1);
        assert!(
            !submitted.contains("Room settings"),
            "fixed text is not sent"
        );
        assert!(submitted.starts_with("<x xmlns=\"jabber:x:data\" type=\"submit\">"));
    }

    #[test]
    fn self_ping_follows_xep_0410() {
        assert_eq!(self_ping_verdict(None), SelfPing::Joined);
        assert_eq!(
            self_ping_verdict(Some("service-unavailable")),
            SelfPing::Joined
        );
        assert_eq!(
            self_ping_verdict(Some("feature-not-implemented")),
            SelfPing::Joined
        );
        assert_eq!(
            self_ping_verdict(Some("item-not-found")),
            SelfPing::NickChanged
        );
        assert_eq!(
            self_ping_verdict(Some("not-acceptable")),
            SelfPing::NotJoined
        );
        assert_eq!(self_ping_verdict(Some("not-allowed")), SelfPing::NotJoined);
        assert_eq!(self_ping_verdict(Some("bad-request")), SelfPing::NotJoined);
        assert_eq!(
            self_ping_verdict(Some("remote-server-not-found")),
            SelfPing::Unreachable
        );
        assert_eq!(
            self_ping_verdict(Some("resource-constraint")),
            SelfPing::Unreachable
        );
        assert_eq!(
            text(&self_ping_iq(&format!("{ROOM}/me"))),
            "<iq type=\"get\" to=\"coven@conference.example.org/me\"><ping xmlns=\"urn:xmpp:ping\"/></iq>"
        );
    }

    #[test]
    fn room_and_nick_are_checked_and_normalized() {
        assert_eq!(
            occupant_jid("Coven@Conference.Example.org", "Third Witch"),
            Ok((
                "coven@conference.example.org".into(),
                "coven@conference.example.org/Third Witch".into()
            ))
        );
        assert!(matches!(
            occupant_jid("conference.example.org", "me"),
            Err(ClientError::Config(_))
        ));
        assert!(matches!(
            occupant_jid(ROOM, ""),
            Err(ClientError::Config(_))
        ));
    }

    #[test]
    fn an_archived_room_message_takes_the_archive_id_and_stamp() {
        let result = xml("<result xmlns='urn:xmpp:mam:2' queryid='q' id='arch-1'>\
             <forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' stamp='2026-01-01T00:00:00Z'/>\
             <message xmlns='jabber:client' from='coven@conference.example.org/hag' type='groupchat' id='m1'>\
             <body>boil</body><occupant-id xmlns='urn:xmpp:occupant-id:0' id='occ-hag'/></message>\
             </forwarded></result>");
        let m = archived(&result, ROOM).expect("a message");
        assert_eq!(m.stanza_id.as_deref(), Some("arch-1"));
        assert_eq!(m.delay.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert!(m.is_history);
        assert_eq!(m.nick.as_deref(), Some("hag"));
        assert_eq!(m.occupant_id.as_deref(), Some("occ-hag"));
        assert_eq!(m.body.as_deref(), Some("boil"));
    }
}
