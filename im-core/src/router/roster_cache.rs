//! The rosters the router keeps in memory, and the frames waiting for one.
//!
//! The router keeps the rosters of users with a session (loaded when the
//! first one binds) and of users a subscription stanza is addressed to
//! (loaded for that stanza, dropped after). A frame that needs a roster not
//! yet loaded waits, with every later frame of its session, until the
//! driver reports the roster ([`super::Input::RosterLoaded`]); so the
//! router never blocks on storage and a session's frames keep their order.
//! A roster with a change being written is not ready either: frames that
//! need it, and frames of its user's sessions, wait the same way until the
//! change's outcome is known (see `roster_writes`).

use std::collections::HashMap;
use std::sync::Arc;

use cm_protocol::{Frame, Kind};
use jid::Jid;
use xmpp_stream::element::Element;
use xmpp_stream::ns;

use super::contains;
use super::subscriptions::SubType;
use crate::routing::{NodeId, SessionAddr};
use crate::storage::{Roster, RosterItem, Subscription};

/// Most items in one roster.
pub const MAX_ROSTER_ITEMS: usize = 2000;
/// Most bytes of names, JIDs and groups in one roster, so that the whole
/// roster fits one stanza (and one CM↔core frame) with room to spare.
pub const MAX_ROSTER_BYTES: usize = 256 * 1024;
/// Most requests a user has not answered yet, kept beyond the roster.
const MAX_PENDING_IN: usize = 500;
/// Most frames of one session waiting for a roster to load (stanzas and
/// the control frames its client causes, such as `<r/>` and `<a/>`); past
/// it, or past [`MAX_DEFERRED_BYTES`], the session is ended and its further
/// frames are dropped, except its end and the stanzas its CM bounces, which
/// still wait in order (see [`exempt_from_bound`]).
pub const MAX_DEFERRED: usize = 1024;
/// Most stanza bytes of one session waiting for a roster to load.
pub const MAX_DEFERRED_BYTES: usize = 1 << 20;

/// Bare JIDs that rosters in memory name, interned: a roster holds a
/// number per contact, and each JID is kept once however many rosters name
/// it. Counted references free a JID when the last roster naming it goes.
#[derive(Debug, Default)]
struct Contacts {
    ids: HashMap<Arc<str>, u32>,
    jids: Vec<Option<Interned>>,
    free: Vec<u32>,
}

/// One interned JID and how many references rosters hold to it.
#[derive(Debug)]
struct Interned {
    jid: Arc<str>,
    refs: u32,
}

impl Contacts {
    /// The id of `jid`, taking one reference to it.
    fn intern(&mut self, jid: &str) -> u32 {
        if let Some(&id) = self.ids.get(jid) {
            if let Some(Some(i)) = self.jids.get_mut(id as usize) {
                i.refs += 1;
            }
            return id;
        }
        let jid: Arc<str> = Arc::from(jid);
        let interned = Some(Interned {
            jid: jid.clone(),
            refs: 1,
        });
        let id = match self.free.pop() {
            Some(id) => {
                self.jids[id as usize] = interned;
                id
            }
            None => {
                self.jids.push(interned);
                (self.jids.len() - 1) as u32
            }
        };
        self.ids.insert(jid, id);
        id
    }

    /// Gives back one reference to `id`; the last one frees it.
    fn release(&mut self, id: u32) {
        let Some(slot) = self.jids.get_mut(id as usize) else {
            return;
        };
        let Some(i) = slot else { return };
        i.refs -= 1;
        if i.refs == 0 {
            self.ids.remove(&i.jid);
            *slot = None;
            self.free.push(id);
        }
        // Shrink what a burst of many JIDs left behind.
        if self.ids.capacity() > 1024 && self.ids.len() < self.ids.capacity() / 4 {
            self.ids.shrink_to(self.ids.len() * 2);
        }
    }

    /// The id of `jid`, if a roster in memory names it.
    fn id(&self, jid: &str) -> Option<u32> {
        self.ids.get(jid).copied()
    }

    /// The JID of `id`.
    fn jid(&self, id: u32) -> &str {
        match self.jids.get(id as usize) {
            Some(Some(i)) => &i.jid,
            _ => "",
        }
    }
}

/// A roster in memory, compact: its items' contact ids, sorted, and their
/// flags beside them (five bytes an item); the few items with a name or
/// groups keep them apart.
#[derive(Debug, Default)]
struct CachedRoster {
    /// The account exists (rosters of unknown users stay empty).
    exists: bool,
    version: u64,
    contacts: Vec<u32>,
    flags: Vec<u8>,
    /// Names and groups, by contact id, sorted.
    extras: Vec<(u32, Extra)>,
    /// The JIDs the user blocks (XEP-0191); none for most users.
    blocked: Option<Box<BlockList>>,
}

/// A user's block list (XEP-0191): JIDs, sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct BlockList(Vec<String>);

impl CachedRoster {
    /// Where `contact`'s item is, or would go.
    fn find(&self, contact: u32) -> Result<usize, usize> {
        self.contacts.binary_search(&contact)
    }

    /// The item at `at`.
    fn at(&self, at: usize) -> Item {
        Item {
            contact: self.contacts[at],
            flags: self.flags[at],
        }
    }

    /// The items, in contact order.
    fn iter(&self) -> impl Iterator<Item = Item> + '_ {
        self.contacts
            .iter()
            .zip(&self.flags)
            .map(|(&contact, &flags)| Item { contact, flags })
    }

    /// Removes the item at `at`.
    fn remove_at(&mut self, at: usize) {
        self.contacts.remove(at);
        self.flags.remove(at);
    }
}

/// One roster item in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Item {
    contact: u32,
    flags: u8,
}

/// What few items have: the user's name for the contact and groups.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Extra {
    name: Option<String>,
    groups: Vec<String>,
}

const SUB_TO: u8 = 1;
const SUB_FROM: u8 = 2;
const ASK: u8 = 4;
const PENDING_IN: u8 = 8;
const LISTED: u8 = 16;

impl Item {
    fn subscription(self) -> Subscription {
        Subscription::with(self.flags & SUB_TO != 0, self.flags & SUB_FROM != 0)
    }
}

/// The flags of `item`.
fn flags_of(item: &RosterItem) -> u8 {
    let bit = |on: bool, b: u8| if on { b } else { 0 };
    bit(item.subscription.to(), SUB_TO)
        | bit(item.subscription.from(), SUB_FROM)
        | bit(item.ask, ASK)
        | bit(item.pending_in, PENDING_IN)
        | bit(item.listed, LISTED)
}

/// A roster item as the router reads it, borrowed from the cache.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ItemRef<'a> {
    /// The contact's bare JID.
    pub(crate) jid: &'a str,
    /// Subscription state.
    pub(crate) subscription: Subscription,
    /// The contact asked to subscribe and waits for the user.
    pub(crate) pending_in: bool,
}

/// A roster in memory, as the router reads it.
#[derive(Clone, Copy)]
pub(crate) struct RosterView<'a> {
    roster: &'a CachedRoster,
    contacts: &'a Contacts,
}

impl<'a> RosterView<'a> {
    /// Whether the account exists.
    pub(crate) fn exists(&self) -> bool {
        self.roster.exists
    }

    /// The roster's version (XEP-0237).
    pub(crate) fn version(&self) -> u64 {
        self.roster.version
    }

    /// The item for `contact`, if any, as an owned item.
    pub(crate) fn item(&self, contact: &str) -> Option<RosterItem> {
        let id = self.contacts.id(contact)?;
        let at = self.roster.find(id).ok()?;
        Some(self.owned(self.roster.at(at)))
    }

    /// The items the user sees (not the unanswered requests), owned.
    pub(crate) fn listed(&self) -> impl Iterator<Item = RosterItem> + 'a {
        let view = *self;
        self.roster
            .iter()
            .filter(|i| i.flags & LISTED != 0)
            .map(move |i| view.owned(i))
    }

    /// The JIDs the user blocks (XEP-0191), sorted.
    pub(crate) fn blocked(&self) -> &'a [String] {
        self.roster.blocked.as_deref().map_or(&[], |b| &b.0)
    }

    /// Whether the roster still fits its bounds with `item` in it (in place
    /// of any item with its JID).
    pub(crate) fn fits(&self, item: &RosterItem) -> bool {
        let old = self.item(&item.jid);
        let all = || self.roster.iter().map(|i| self.owned(i));
        let bytes: usize = all().map(|i| item_bytes(&i)).sum::<usize>()
            - old.as_ref().map_or(0, item_bytes)
            + item_bytes(item);
        let count = |listed: bool| {
            all().filter(|i| i.listed == listed).count()
                - usize::from(old.as_ref().is_some_and(|o| o.listed == listed))
                + usize::from(item.listed == listed)
        };
        bytes <= MAX_ROSTER_BYTES
            && count(true) <= MAX_ROSTER_ITEMS
            && count(false) <= MAX_PENDING_IN
    }

    /// `item` as the owned type storage and stanzas use.
    fn owned(&self, item: Item) -> RosterItem {
        let extra = self
            .roster
            .extras
            .binary_search_by_key(&item.contact, |(id, _)| *id)
            .ok()
            .map(|at| self.roster.extras[at].1.clone())
            .unwrap_or_default();
        RosterItem {
            jid: self.contacts.jid(item.contact).to_owned(),
            name: extra.name,
            groups: extra.groups,
            subscription: item.subscription(),
            ask: item.flags & ASK != 0,
            pending_in: item.flags & PENDING_IN != 0,
            listed: item.flags & LISTED != 0,
        }
    }
}

/// A roster as it was before a change, to put back if the change fails.
#[derive(Clone, Debug)]
pub(crate) struct RosterSnapshot {
    exists: bool,
    roster: Roster,
}

/// A block list in its cached form (none if empty).
fn block_list(mut jids: Vec<String>) -> Option<Box<BlockList>> {
    jids.sort();
    jids.dedup();
    (!jids.is_empty()).then(|| Box::new(BlockList(jids)))
}

/// Roughly what an item takes in a roster result.
fn item_bytes(i: &RosterItem) -> usize {
    64 + i.jid.len()
        + i.name.as_ref().map_or(0, String::len)
        + i.groups.iter().map(|g| g.len() + 16).sum::<usize>()
}

/// What became of a frame put to wait for a roster.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Deferred {
    /// It waits; `load`: the roster must be asked for.
    Waiting {
        /// First frame for this roster: ask the driver to load it.
        load: bool,
    },
    /// Dropped: its session has too many frames or bytes waiting; `kick`:
    /// the session just went over the bound (end it).
    Dropped {
        /// End the session now.
        kick: bool,
    },
}

/// The roster cache (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct RosterCache {
    /// Rosters of users with sessions (and of users a frame waits for), by
    /// the user's interned bare JID.
    /// (Boxed, so the table itself stays small: see `SmSessions`.)
    rosters: HashMap<u32, Box<CachedRoster>>,
    /// The JIDs rosters name, their users' own included.
    contacts: Contacts,
    /// Frames waiting for a user's roster, by bare JID.
    loading: HashMap<String, Vec<(NodeId, Frame)>>,
    /// Sessions with a waiting frame: the roster they wait for, and how
    /// much of theirs waits.
    waiting: HashMap<SessionAddr, Waiting>,
    /// Rosters with a change being written (bare JID → changes in flight):
    /// frames that need them wait as during a load.
    writing: HashMap<String, u32>,
    /// Frames waiting in `loading`, all users together.
    deferred: usize,
}

/// What one session has waiting for a roster.
#[derive(Debug)]
struct Waiting {
    /// The roster (bare JID).
    user: String,
    /// Frames waiting, its end and bounces aside.
    frames: usize,
    /// Stanza bytes waiting.
    bytes: usize,
    /// It went over a bound: everything but its end and bounces is dropped.
    over: bool,
}

impl RosterCache {
    /// The roster of `bare`, if loaded.
    pub(crate) fn get(&self, bare: &str) -> Option<RosterView<'_>> {
        let roster = self.rosters.get(&self.contacts.id(bare)?)?;
        Some(RosterView {
            roster,
            contacts: &self.contacts,
        })
    }

    /// Whether the roster of `bare` is loaded.
    fn contains(&self, bare: &str) -> bool {
        self.contacts
            .id(bare)
            .is_some_and(|id| self.rosters.contains_key(&id))
    }

    /// Whether the roster of `bare` is loaded and no change of it is being
    /// written (frames that need it can be handled now).
    pub(crate) fn is_ready(&self, bare: &str) -> bool {
        self.contains(bare) && !self.is_writing(bare)
    }

    /// Whether a change of `bare`'s roster is being written.
    pub(crate) fn is_writing(&self, bare: &str) -> bool {
        !self.writing.is_empty() && self.writing.contains_key(bare)
    }

    /// Whether any roster change is being written.
    pub(crate) fn any_writing(&self) -> bool {
        !self.writing.is_empty()
    }

    /// A change of `bare`'s roster went to storage.
    pub(crate) fn write_started(&mut self, bare: &str) {
        *self.writing.entry(bare.to_owned()).or_default() += 1;
    }

    /// A change of `bare`'s roster committed or failed.
    pub(crate) fn write_done(&mut self, bare: &str) {
        if let Some(n) = self.writing.get_mut(bare) {
            *n -= 1;
            if *n == 0 {
                self.writing.remove(bare);
            }
        }
    }

    /// `bare`'s roster as it is, to put back if a change fails.
    pub(crate) fn snapshot(&self, bare: &str) -> Option<RosterSnapshot> {
        let view = self.get(bare)?;
        Some(RosterSnapshot {
            exists: view.exists(),
            roster: Roster {
                version: view.version(),
                items: view.roster.iter().map(|i| view.owned(i)).collect(),
                blocked: view.blocked().to_vec(),
            },
        })
    }

    /// Puts `bare`'s roster back as it was before a change that failed.
    pub(crate) fn restore(&mut self, bare: &str, snapshot: RosterSnapshot) {
        let roster = snapshot.exists.then_some(snapshot.roster);
        self.put(bare, roster);
    }

    /// Keeps `bare`'s roster (`None`: no such account), replacing any.
    fn put(&mut self, bare: &str, roster: Option<Roster>) {
        let user = self.contacts.intern(bare);
        let cached = match roster {
            Some(r) => self.build(r),
            None => CachedRoster::default(),
        };
        if let Some(old) = self.rosters.insert(user, Box::new(cached)) {
            self.drop_roster(*old);
            // the user's own reference was held already
            self.contacts.release(user);
        }
    }

    /// A loaded roster in its compact form: every JID interned once, the
    /// items sorted by id in one pass (a later duplicate of a JID wins, as
    /// with item-by-item inserts).
    fn build(&mut self, r: Roster) -> CachedRoster {
        let mut items: Vec<(u32, u8, Extra)> = r
            .items
            .into_iter()
            .map(|item| {
                let id = self.contacts.intern(&item.jid);
                let flags = flags_of(&item);
                let extra = Extra {
                    name: item.name,
                    groups: item.groups,
                };
                (id, flags, extra)
            })
            .collect();
        // stable: of equal ids the last stays last
        items.sort_by_key(|(id, _, _)| *id);
        let mut cached = CachedRoster {
            exists: true,
            version: r.version,
            contacts: Vec::with_capacity(items.len()),
            flags: Vec::with_capacity(items.len()),
            extras: Vec::new(),
            blocked: block_list(r.blocked),
        };
        let mut items = items.into_iter().peekable();
        while let Some((id, flags, extra)) = items.next() {
            if items.peek().is_some_and(|(next, _, _)| *next == id) {
                // a duplicate: its reference goes, the later item stays
                self.contacts.release(id);
                continue;
            }
            cached.contacts.push(id);
            cached.flags.push(flags);
            if extra != Extra::default() {
                cached.extras.push((id, extra));
            }
        }
        cached.extras.shrink_to_fit();
        cached
    }

    /// Adds or replaces `item` in `roster`, interning its JID.
    fn insert_item(&mut self, roster: &mut CachedRoster, item: RosterItem) {
        let flags = flags_of(&item);
        let extra = Extra {
            name: item.name,
            groups: item.groups,
        };
        let contact = match self.contacts.id(&item.jid) {
            Some(id) if roster.find(id).is_ok() => id,
            _ => self.contacts.intern(&item.jid),
        };
        match roster.find(contact) {
            Ok(at) => roster.flags[at] = flags,
            Err(at) => {
                roster.contacts.insert(at, contact);
                roster.flags.insert(at, flags);
            }
        }
        let found = roster.extras.binary_search_by_key(&contact, |(id, _)| *id);
        match (found, extra == Extra::default()) {
            (Ok(at), true) => {
                roster.extras.remove(at);
            }
            (Ok(at), false) => roster.extras[at].1 = extra,
            (Err(at), false) => roster.extras.insert(at, (contact, extra)),
            (Err(_), true) => {}
        }
    }

    /// Gives back the references a roster held to its contacts.
    fn drop_roster(&mut self, roster: CachedRoster) {
        for contact in roster.contacts {
            self.contacts.release(contact);
        }
    }

    /// The frames that waited for `bare`'s roster while it was written.
    pub(crate) fn settled(&mut self, bare: &str) -> Vec<(NodeId, Frame)> {
        self.take_waiting(bare)
    }

    /// The user's roster items (none if not loaded).
    pub(crate) fn items(&self, bare: &str) -> impl Iterator<Item = ItemRef<'_>> {
        let roster = self.contacts.id(bare).and_then(|id| self.rosters.get(&id));
        roster.into_iter().flat_map(|r| {
            r.iter().map(|i| ItemRef {
                jid: self.contacts.jid(i.contact),
                subscription: i.subscription(),
                pending_in: i.flags & PENDING_IN != 0,
            })
        })
    }

    /// Frames waiting for rosters, all users together.
    pub(crate) fn deferred(&self) -> usize {
        self.deferred
    }

    /// The roster a session's frames wait for, if any (its next frame
    /// waits behind them).
    pub(crate) fn waited_for(&self, addr: SessionAddr) -> Option<String> {
        if self.waiting.is_empty() {
            return None;
        }
        self.waiting.get(&addr).map(|w| w.user.clone())
    }

    /// Keeps `frame` until `user`'s roster is loaded; later frames of its
    /// session wait behind it.
    pub(crate) fn defer(&mut self, user: String, node: NodeId, frame: Frame) -> Deferred {
        if let Some(sid) = frame.sid() {
            let waiting = self.waiting.entry((node, sid)).or_insert_with(|| Waiting {
                user: user.clone(),
                frames: 0,
                bytes: 0,
                over: false,
            });
            if !exempt_from_bound(&frame) {
                let bytes = match &frame {
                    Frame::Stanza { payload, .. } => payload.len(),
                    _ => 0,
                };
                if waiting.over
                    || waiting.frames >= MAX_DEFERRED
                    || waiting.bytes + bytes > MAX_DEFERRED_BYTES
                {
                    let kick = !waiting.over;
                    if kick {
                        tracing::warn!(user, "a session floods frames while its roster loads");
                    }
                    waiting.over = true;
                    return Deferred::Dropped { kick };
                }
                waiting.frames += 1;
                waiting.bytes += bytes;
            }
        }
        // A roster in memory being written is not loaded again.
        let mut load = false;
        let loaded = self.contains(&user);
        self.loading
            .entry(user)
            .or_insert_with(|| {
                load = !loaded;
                Vec::new()
            })
            .push((node, frame));
        self.deferred += 1;
        Deferred::Waiting { load }
    }

    /// A roster was loaded (`None`: no such account): keeps it and returns
    /// the frames that waited for it, in order.
    pub(crate) fn loaded(&mut self, user: &str, roster: Option<Roster>) -> Vec<(NodeId, Frame)> {
        if !self.contains(user) {
            self.put(user, roster);
        }
        self.take_waiting(user)
    }

    /// A roster could not be read: the frames that waited for it.
    pub(crate) fn failed(&mut self, user: &str) -> Vec<(NodeId, Frame)> {
        self.take_waiting(user)
    }

    /// The frames waiting for `user`'s roster, their sessions no longer
    /// marked as waiting for it.
    fn take_waiting(&mut self, user: &str) -> Vec<(NodeId, Frame)> {
        let queue = self.loading.remove(user).unwrap_or_default();
        self.deferred -= queue.len();
        for (node, frame) in &queue {
            if let Some(sid) = frame.sid()
                && self
                    .waiting
                    .get(&(*node, sid))
                    .is_some_and(|w| w.user == user)
            {
                self.waiting.remove(&(*node, sid));
            }
        }
        queue
    }

    /// Drops a roster once its user has no session (`in_use` false), no
    /// frame waits for it and no change of it is being written.
    pub(crate) fn forget_if_unused(&mut self, bare: &str, in_use: bool) {
        if in_use || self.loading.contains_key(bare) || self.is_writing(bare) {
            return;
        }
        let Some(user) = self.contacts.id(bare) else {
            return;
        };
        if let Some(old) = self.rosters.remove(&user) {
            self.drop_roster(*old);
            self.contacts.release(user);
            if self.rosters.capacity() > 1024 && self.rosters.len() < self.rosters.capacity() / 4 {
                self.rosters.shrink_to(self.rosters.len() * 2);
            }
        }
    }

    /// Frames from `node` that wait for rosters are dropped with the node.
    pub(crate) fn forget_node(&mut self, node: NodeId) {
        for queue in self.loading.values_mut() {
            let before = queue.len();
            queue.retain(|(n, _)| *n != node);
            self.deferred -= before - queue.len();
        }
        self.waiting.retain(|(n, _), _| *n != node);
    }

    /// Stores a changed item; returns the roster's new version and whether
    /// the item was listed before (none if the roster is not loaded).
    pub(crate) fn put_item(&mut self, bare: &str, item: RosterItem) -> Option<(u64, bool)> {
        let user = self.contacts.id(bare)?;
        let was_listed = self.get(bare)?.item(&item.jid).is_some_and(|i| i.listed);
        let mut roster = self.rosters.remove(&user)?;
        roster.version += 1;
        self.insert_item(&mut roster, item);
        let version = roster.version;
        self.rosters.insert(user, roster);
        Some((version, was_listed))
    }

    /// Replaces `bare`'s block list (if its roster is loaded).
    pub(crate) fn set_blocked(&mut self, bare: &str, jids: Vec<String>) {
        let Some(user) = self.contacts.id(bare) else {
            return;
        };
        if let Some(roster) = self.rosters.get_mut(&user) {
            roster.blocked = block_list(jids);
        }
    }

    /// Removes an item; returns it and the roster's new version.
    pub(crate) fn remove_item(&mut self, bare: &str, contact: &str) -> Option<(RosterItem, u64)> {
        let user = self.contacts.id(bare)?;
        let old = self.get(bare)?.item(contact)?;
        let id = self.contacts.id(contact)?;
        let roster = self.rosters.get_mut(&user)?;
        let at = roster.find(id).ok()?;
        roster.remove_at(at);
        if let Ok(at) = roster.extras.binary_search_by_key(&id, |(c, _)| *c) {
            roster.extras.remove(at);
        }
        roster.version += 1;
        let version = roster.version;
        self.contacts.release(id);
        Some((old, version))
    }
}

/// Whether a frame waits for a roster whatever its session has waiting
/// already, counted against no bound: a session's end (so the core learns
/// of it) and a stanza its CM bounces (a message the core sent the session,
/// usually from another user, which must go to another resource or offline
/// storage). Bounces are not the client's to flood with: there are no more
/// of them than deliveries the core sent to the session, and they come
/// mostly when the session ends, which going over the bound causes. They
/// wait in order rather than being routed at once because the frames ahead
/// of them decide where they go (a bind or an SM enable still waiting).
fn exempt_from_bound(frame: &Frame) -> bool {
    matches!(frame, Frame::SessionEnd { .. } | Frame::Bounce { .. })
}

/// The bare JID of the local account whose roster `frame` needs, if any:
/// a bind's user, an announced session's user, the local addressee of a
/// subscription stanza, the contact of a roster removal.
pub(crate) fn roster_for(frame: &Frame, domain: &str) -> Option<String> {
    Some(match frame {
        Frame::Bind { user, .. } => user.clone(),
        Frame::Announce { jid, .. } => crate::address::bare(jid).to_owned(),
        Frame::Stanza {
            header, payload, ..
        } => match header.kind {
            Kind::Presence
                if header
                    .stanza_type
                    .as_deref()
                    .is_some_and(|t| SubType::parse(t).is_some()) =>
            {
                local_bare(header.to.as_deref()?, domain)?
            }
            Kind::Iq
                if header.stanza_type.as_deref() == Some("set")
                    && contains(payload, ns::ROSTER.as_bytes()) =>
            {
                let el = Element::parse(payload, ns::CLIENT).ok()?;
                let item = el.child("query", ns::ROSTER)?.child("item", ns::ROSTER)?;
                if item.attr("subscription") != Some("remove") {
                    return None;
                }
                local_bare(item.attr("jid")?, domain)?
            }
            _ => return None,
        },
        // a peer core's subscription stanza for one of this core's users
        Frame::Forward { header, .. }
            if header.kind == Kind::Presence
                && header
                    .stanza_type
                    .as_deref()
                    .is_some_and(|t| SubType::parse(t).is_some()) =>
        {
            local_bare(header.to.as_deref()?, domain)?
        }
        _ => return None,
    })
}

/// The normalized bare JID of a local account, if `jid` names one.
fn local_bare(jid: &str, domain: &str) -> Option<String> {
    let jid = Jid::new(jid).ok()?;
    (jid.node().is_some() && jid.domain().as_str() == domain).then(|| jid.to_bare().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(jid: &str, subscription: Subscription) -> RosterItem {
        RosterItem {
            jid: jid.into(),
            subscription,
            listed: true,
            ..Default::default()
        }
    }

    fn roster(items: Vec<RosterItem>) -> Option<Roster> {
        Some(Roster {
            version: 3,
            items,
            blocked: Vec::new(),
        })
    }

    /// JIDs interned now (the test's window on the interner).
    fn interned(cache: &RosterCache) -> usize {
        cache.contacts.ids.len()
    }

    #[test]
    fn a_contact_named_by_many_rosters_is_kept_once_and_freed_with_the_last() {
        let mut cache = RosterCache::default();
        cache.loaded(
            "a@x",
            roster(vec![
                item("c@x", Subscription::Both),
                item("b@x", Subscription::To),
            ]),
        );
        cache.loaded("b@x", roster(vec![item("c@x", Subscription::From)]));
        // a, b, c: each once, though c is in two rosters and b is a user too.
        assert_eq!(interned(&cache), 3);
        cache.forget_if_unused("a@x", false);
        assert!(cache.get("a@x").is_none());
        assert_eq!(interned(&cache), 2, "b's roster still names c; b is a user");
        cache.forget_if_unused("b@x", false);
        assert_eq!(interned(&cache), 0, "nothing left names anyone");
        assert!(cache.contacts.jids.iter().all(Option::is_none));
    }

    #[test]
    fn items_read_back_as_they_were_stored_names_and_groups_included() {
        let mut cache = RosterCache::default();
        let named = RosterItem {
            jid: "n@x".into(),
            name: Some("Nina".into()),
            groups: vec!["Friends".into(), "Work".into()],
            subscription: Subscription::To,
            ask: true,
            pending_in: true,
            listed: true,
        };
        let request = RosterItem {
            jid: "r@x".into(),
            pending_in: true,
            ..Default::default()
        };
        cache.loaded("u@x", roster(vec![named.clone(), request.clone()]));
        let view = cache.get("u@x").expect("loaded");
        assert!(view.exists());
        assert_eq!(view.version(), 3);
        assert_eq!(view.item("n@x"), Some(named.clone()));
        assert_eq!(view.item("r@x"), Some(request));
        assert_eq!(view.item("u@x"), None, "the user is interned, not an item");
        assert_eq!(view.listed().collect::<Vec<_>>(), vec![named]);
        let pending: Vec<&str> = cache
            .items("u@x")
            .filter(|i| i.pending_in)
            .map(|i| i.jid)
            .collect();
        assert_eq!(pending.len(), 2);
    }

    #[test]
    fn a_loaded_roster_naming_a_contact_twice_keeps_the_later_item_and_one_reference() {
        let mut cache = RosterCache::default();
        cache.loaded(
            "u@x",
            roster(vec![
                item("a@x", Subscription::To),
                item("b@x", Subscription::None),
                item("a@x", Subscription::Both),
            ]),
        );
        let view = cache.get("u@x").expect("loaded");
        assert_eq!(view.item("a@x"), Some(item("a@x", Subscription::Both)));
        assert_eq!(view.listed().count(), 2);
        cache.forget_if_unused("u@x", false);
        assert_eq!(interned(&cache), 0, "no reference left behind");
    }

    #[test]
    fn put_and_remove_change_the_item_and_its_references() {
        let mut cache = RosterCache::default();
        cache.loaded("u@x", roster(vec![item("a@x", Subscription::None)]));
        let mut a = item("a@x", Subscription::Both);
        a.name = Some("Al".into());
        assert_eq!(cache.put_item("u@x", a.clone()), Some((4, true)));
        assert_eq!(
            cache.get("u@x").and_then(|v| v.item("a@x")),
            Some(a.clone())
        );
        assert_eq!(
            interned(&cache),
            2,
            "replacing an item takes no new reference"
        );
        assert_eq!(
            cache.put_item("u@x", item("b@x", Subscription::To)),
            Some((5, false))
        );
        assert_eq!(interned(&cache), 3);
        assert_eq!(cache.remove_item("u@x", "a@x"), Some((a, 6)));
        assert_eq!(cache.get("u@x").and_then(|v| v.item("a@x")), None);
        assert_eq!(interned(&cache), 2, "a is named by no roster now");
        assert_eq!(cache.remove_item("u@x", "a@x"), None);
    }

    #[test]
    fn a_snapshot_puts_a_roster_back_as_it_was() {
        let mut cache = RosterCache::default();
        cache.loaded("u@x", roster(vec![item("a@x", Subscription::From)]));
        let before = cache.snapshot("u@x").expect("loaded");
        cache.put_item("u@x", item("b@x", Subscription::To));
        cache.remove_item("u@x", "a@x");
        cache.restore("u@x", before);
        let view = cache.get("u@x").expect("restored");
        assert_eq!(view.version(), 3);
        assert_eq!(view.item("a@x"), Some(item("a@x", Subscription::From)));
        assert_eq!(view.item("b@x"), None);
        assert_eq!(interned(&cache), 2, "u and a; b went with the change");
        // An unknown user's roster restores as unknown.
        cache.loaded("nobody@x", None);
        let unknown = cache.snapshot("nobody@x").expect("cached");
        cache.restore("nobody@x", unknown);
        assert!(!cache.get("nobody@x").expect("cached").exists());
    }
}
