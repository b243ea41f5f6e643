//! One room's state: its configuration, affiliations (kept), occupants
//! and history (in memory), and the record a persistent room is stored as.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Most messages of history a room keeps (and sends on join).
pub const MAX_HISTORY: usize = 50;
/// Bytes of history a room keeps at most.
pub const MAX_HISTORY_BYTES: usize = 256 * 1024;
/// Most affiliations a room keeps (members, admins, owners, outcasts).
pub const MAX_AFFILIATIONS: usize = 10_000;
/// Most occupants a room can be configured for.
pub const MAX_OCCUPANTS: u32 = 100_000;
/// Longest nickname, in bytes.
pub const MAX_NICK_BYTES: usize = 256;
/// Longest subject, name, description or password, in bytes.
pub const MAX_TEXT_BYTES: usize = 4096;

/// A user's long-lived standing in a room (XEP-0045 §5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Affiliation {
    /// Banned.
    Outcast,
    /// No affiliation.
    None,
    /// A member.
    Member,
    /// An administrator.
    Admin,
    /// An owner.
    Owner,
}

impl Affiliation {
    /// The protocol name.
    pub fn name(self) -> &'static str {
        match self {
            Affiliation::Outcast => "outcast",
            Affiliation::None => "none",
            Affiliation::Member => "member",
            Affiliation::Admin => "admin",
            Affiliation::Owner => "owner",
        }
    }

    /// Parses a protocol name.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Affiliation::Outcast,
            Affiliation::None,
            Affiliation::Member,
            Affiliation::Admin,
            Affiliation::Owner,
        ]
        .into_iter()
        .find(|a| a.name() == name)
    }
}

/// An occupant's role while in the room (XEP-0045 §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Not in the room (kicked, left).
    None,
    /// May read, not speak (a moderated room).
    Visitor,
    /// May speak.
    Participant,
    /// May kick and give or take voice.
    Moderator,
}

impl Role {
    /// The protocol name.
    pub fn name(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Visitor => "visitor",
            Role::Participant => "participant",
            Role::Moderator => "moderator",
        }
    }

    /// Parses a protocol name.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Role::None,
            Role::Visitor,
            Role::Participant,
            Role::Moderator,
        ]
        .into_iter()
        .find(|r| r.name() == name)
    }
}

/// Who may see occupants' real JIDs (`muc#roomconfig_whois`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Whois {
    /// Moderators only (semi-anonymous).
    Moderators,
    /// Every occupant (non-anonymous).
    Anyone,
}

/// A room's configuration (the `muc#roomconfig` form).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoomConfig {
    /// Natural-language name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Kept when the last occupant leaves (and stored).
    pub persistent: bool,
    /// Listed in the service's disco#items.
    pub public: bool,
    /// Only members (and admins, owners) may enter.
    pub members_only: bool,
    /// Only occupants with voice may speak; others enter as visitors.
    pub moderated: bool,
    /// The password to enter, if any.
    pub password: Option<String>,
    /// Who sees real JIDs.
    pub whois: Whois,
    /// Most occupants at once.
    pub max_users: u32,
    /// Participants (not only moderators) may change the subject.
    pub change_subject: bool,
    /// Participants may invite others (else only admins and owners; in a
    /// members-only room an invitation by an admin makes a member).
    pub allow_invites: bool,
    /// Occupants may send private messages to each other.
    pub allow_pm: bool,
    /// Messages are kept in the room's archive (XEP-0313 on the room JID;
    /// persistent rooms only).
    pub archive: bool,
    /// Whose presence is broadcast, by role
    /// (`muc#roomconfig_presencebroadcast`): a big room that shows only
    /// its moderators spares every newcomer the whole occupant list.
    pub presence_broadcast: RoleSet,
}

/// A set of roles (moderator, participant, visitor).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleSet {
    /// Moderators.
    pub moderator: bool,
    /// Participants.
    pub participant: bool,
    /// Visitors.
    pub visitor: bool,
}

impl RoleSet {
    /// Every role.
    pub const ALL: RoleSet = RoleSet {
        moderator: true,
        participant: true,
        visitor: true,
    };

    /// Whether `role` is in the set (never [`Role::None`]).
    pub fn contains(self, role: Role) -> bool {
        match role {
            Role::Moderator => self.moderator,
            Role::Participant => self.participant,
            Role::Visitor => self.visitor,
            Role::None => false,
        }
    }
}

impl Default for RoleSet {
    fn default() -> Self {
        Self::ALL
    }
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            description: String::new(),
            persistent: false,
            public: true,
            members_only: false,
            moderated: false,
            password: None,
            whois: Whois::Moderators,
            max_users: 1000,
            change_subject: false,
            allow_invites: false,
            allow_pm: true,
            archive: true,
            presence_broadcast: RoleSet::ALL,
        }
    }
}

/// The subject and who set it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// The nick that set it (empty: the room).
    pub nick: String,
    /// The text.
    pub text: String,
}

/// What a persistent room is stored as (JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoomRecord {
    /// The configuration.
    pub config: RoomConfig,
    /// Affiliations other than none, by bare JID.
    pub affiliations: BTreeMap<String, Affiliation>,
    /// The subject.
    pub subject: Subject,
}

/// One occupant: a nick and the sessions of one user joined under it.
#[derive(Clone, Debug)]
pub struct Occupant {
    /// The user's bare JID.
    pub bare: String,
    /// The user's sessions joined under this nick (full JIDs).
    pub sessions: Vec<String>,
    /// The role.
    pub role: Role,
    /// The occupant's stable id (XEP-0421).
    pub occupant_id: String,
    /// The children of its latest presence (show, status, caps...).
    pub presence: Vec<xmpp_stream::element::Element>,
}

/// A message of the room's history, with when it was sent.
#[derive(Clone, Debug)]
pub struct Said {
    /// Unix seconds.
    pub at: u64,
    /// The message as broadcast (no `to`).
    pub payload: Bytes,
}

/// One room (see the module docs).
#[derive(Debug)]
pub struct Room {
    /// The configuration.
    pub config: RoomConfig,
    /// Affiliations other than none, by bare JID.
    pub affiliations: BTreeMap<String, Affiliation>,
    /// The subject.
    pub subject: Subject,
    /// Occupants by nick.
    pub occupants: HashMap<String, Occupant>,
    /// Nick by session full JID.
    pub nicks: HashMap<String, String>,
    /// The newest messages, oldest first.
    pub history: VecDeque<Said>,
    history_bytes: usize,
    /// Created and not yet configured by its owner: nobody else may enter
    /// (XEP-0045 §10.1).
    pub locked: bool,
}

impl Room {
    /// A room from its stored record.
    pub fn from_record(record: RoomRecord) -> Self {
        Self {
            config: record.config,
            affiliations: record.affiliations,
            subject: record.subject,
            occupants: HashMap::new(),
            nicks: HashMap::new(),
            history: VecDeque::new(),
            history_bytes: 0,
            locked: false,
        }
    }

    /// A new room, locked, owned by `owner` (a bare JID).
    pub fn created(owner: &str, config: RoomConfig) -> Self {
        let mut room = Self::from_record(RoomRecord {
            config,
            ..RoomRecord::default()
        });
        room.affiliations
            .insert(owner.to_owned(), Affiliation::Owner);
        room.locked = true;
        room
    }

    /// The record to store.
    pub fn record(&self) -> RoomRecord {
        RoomRecord {
            config: self.config.clone(),
            affiliations: self.affiliations.clone(),
            subject: self.subject.clone(),
        }
    }

    /// `bare`'s affiliation.
    pub fn affiliation(&self, bare: &str) -> Affiliation {
        self.affiliations
            .get(bare)
            .copied()
            .unwrap_or(Affiliation::None)
    }

    /// Sets `bare`'s affiliation; false if the table is full.
    pub fn set_affiliation(&mut self, bare: &str, affiliation: Affiliation) -> bool {
        if affiliation == Affiliation::None {
            self.affiliations.remove(bare);
            return true;
        }
        if !self.affiliations.contains_key(bare) && self.affiliations.len() >= MAX_AFFILIATIONS {
            return false;
        }
        self.affiliations.insert(bare.to_owned(), affiliation);
        true
    }

    /// The role an entering user with `affiliation` gets.
    pub fn entry_role(&self, affiliation: Affiliation) -> Role {
        match affiliation {
            Affiliation::Owner | Affiliation::Admin => Role::Moderator,
            Affiliation::Member => Role::Participant,
            _ if self.config.moderated => Role::Visitor,
            _ => Role::Participant,
        }
    }

    /// The occupant a session is joined as, with its nick.
    pub fn occupant_of(&self, full: &str) -> Option<(&str, &Occupant)> {
        let nick = self.nicks.get(full)?;
        Some((nick.as_str(), self.occupants.get(nick)?))
    }

    /// Every session joined, with whether it may see real JIDs.
    pub fn audience(&self) -> impl Iterator<Item = (&str, bool)> {
        let anyone = self.config.whois == Whois::Anyone;
        self.occupants.values().flat_map(move |o| {
            let sees = anyone || o.role == Role::Moderator;
            o.sessions.iter().map(move |s| (s.as_str(), sees))
        })
    }

    /// Remembers a broadcast message for the history.
    pub fn remember(&mut self, at: u64, payload: Bytes) {
        self.history_bytes += payload.len();
        self.history.push_back(Said { at, payload });
        while self.history.len() > MAX_HISTORY || self.history_bytes > MAX_HISTORY_BYTES {
            match self.history.pop_front() {
                Some(old) => self.history_bytes -= old.payload.len(),
                None => break,
            }
        }
    }

    /// Whether its messages go to its archive: a persistent room's, when
    /// configured so (a temporary room keeps only its in-memory history).
    pub fn archives(&self) -> bool {
        self.config.persistent && self.config.archive
    }

    /// Nobody is in the room.
    pub fn is_empty(&self) -> bool {
        self.occupants.is_empty()
    }
}
