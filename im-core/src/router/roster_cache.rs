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

use cm_protocol::{Frame, Kind};
use jid::Jid;
use xmpp_stream::element::Element;
use xmpp_stream::ns;

use super::contains;
use super::subscriptions::SubType;
use crate::routing::{NodeId, SessionAddr};
use crate::storage::{Roster, RosterItem};

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

/// A roster in memory.
#[derive(Clone, Debug, Default)]
pub(crate) struct CachedRoster {
    /// The account exists (rosters of unknown users stay empty).
    exists: bool,
    version: u64,
    items: HashMap<String, RosterItem>,
}

impl CachedRoster {
    /// Whether the account exists.
    pub(crate) fn exists(&self) -> bool {
        self.exists
    }

    /// The roster's version (XEP-0237).
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// The item for `contact`, if any.
    pub(crate) fn item(&self, contact: &str) -> Option<&RosterItem> {
        self.items.get(contact)
    }

    /// The items the user sees (not the unanswered requests).
    pub(crate) fn listed(&self) -> impl Iterator<Item = &RosterItem> {
        self.items.values().filter(|i| i.listed)
    }

    /// Whether the roster still fits its bounds with `item` in it (in place
    /// of any item with its JID).
    pub(crate) fn fits(&self, item: &RosterItem) -> bool {
        let old = self.items.get(&item.jid);
        let bytes: usize = self.items.values().map(item_bytes).sum::<usize>()
            - old.map_or(0, item_bytes)
            + item_bytes(item);
        let count = |listed: bool| {
            self.items.values().filter(|i| i.listed == listed).count()
                - usize::from(old.is_some_and(|o| o.listed == listed))
                + usize::from(item.listed == listed)
        };
        bytes <= MAX_ROSTER_BYTES
            && count(true) <= MAX_ROSTER_ITEMS
            && count(false) <= MAX_PENDING_IN
    }
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
    /// Rosters of users with sessions (and of users a frame waits for).
    rosters: HashMap<String, CachedRoster>,
    /// Frames waiting for a user's roster, by bare JID.
    loading: HashMap<String, Vec<(NodeId, Frame)>>,
    /// Sessions with a waiting frame: the roster they wait for, and how
    /// much of theirs waits.
    waiting: HashMap<SessionAddr, Waiting>,
    /// Rosters with a change being written (bare JID → changes in flight):
    /// frames that need them wait as during a load.
    writing: HashMap<String, u32>,
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
    pub(crate) fn get(&self, bare: &str) -> Option<&CachedRoster> {
        self.rosters.get(bare)
    }

    /// Whether the roster of `bare` is loaded and no change of it is being
    /// written (frames that need it can be handled now).
    pub(crate) fn is_ready(&self, bare: &str) -> bool {
        self.rosters.contains_key(bare) && !self.is_writing(bare)
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

    /// Puts `bare`'s roster back as it was before a change that failed.
    pub(crate) fn restore(&mut self, bare: &str, roster: CachedRoster) {
        self.rosters.insert(bare.to_owned(), roster);
    }

    /// The frames that waited for `bare`'s roster while it was written.
    pub(crate) fn settled(&mut self, bare: &str) -> Vec<(NodeId, Frame)> {
        self.take_waiting(bare)
    }

    /// The user's roster items (none if not loaded).
    pub(crate) fn items(&self, bare: &str) -> impl Iterator<Item = &RosterItem> {
        self.rosters
            .get(bare)
            .into_iter()
            .flat_map(|r| r.items.values())
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
        let loaded = self.rosters.contains_key(&user);
        self.loading
            .entry(user)
            .or_insert_with(|| {
                load = !loaded;
                Vec::new()
            })
            .push((node, frame));
        Deferred::Waiting { load }
    }

    /// A roster was loaded (`None`: no such account): keeps it and returns
    /// the frames that waited for it, in order.
    pub(crate) fn loaded(&mut self, user: &str, roster: Option<Roster>) -> Vec<(NodeId, Frame)> {
        let state = match roster {
            Some(r) => CachedRoster {
                exists: true,
                version: r.version,
                items: r.items.into_iter().map(|i| (i.jid.clone(), i)).collect(),
            },
            None => CachedRoster::default(),
        };
        self.rosters.entry(user.to_owned()).or_insert(state);
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
        if !in_use && !self.loading.contains_key(bare) && !self.is_writing(bare) {
            self.rosters.remove(bare);
        }
    }

    /// Frames from `node` that wait for rosters are dropped with the node.
    pub(crate) fn forget_node(&mut self, node: NodeId) {
        for queue in self.loading.values_mut() {
            queue.retain(|(n, _)| *n != node);
        }
        self.waiting.retain(|(n, _), _| *n != node);
    }

    /// Stores a changed item; returns the roster's new version and whether
    /// the item was listed before (none if the roster is not loaded).
    pub(crate) fn put_item(&mut self, bare: &str, item: RosterItem) -> Option<(u64, bool)> {
        let roster = self.rosters.get_mut(bare)?;
        roster.version += 1;
        let was_listed = roster.items.get(&item.jid).is_some_and(|i| i.listed);
        roster.items.insert(item.jid.clone(), item);
        Some((roster.version, was_listed))
    }

    /// Removes an item; returns it and the roster's new version.
    pub(crate) fn remove_item(&mut self, bare: &str, contact: &str) -> Option<(RosterItem, u64)> {
        let roster = self.rosters.get_mut(bare)?;
        let old = roster.items.remove(contact)?;
        roster.version += 1;
        Some((old, roster.version))
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
        _ => return None,
    })
}

/// The normalized bare JID of a local account, if `jid` names one.
fn local_bare(jid: &str, domain: &str) -> Option<String> {
    let jid = Jid::new(jid).ok()?;
    (jid.node().is_some() && jid.domain().as_str() == domain).then(|| jid.to_bare().to_string())
}
