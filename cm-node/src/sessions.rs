//! The CM's registry of live client sessions: where frames from the core
//! are dispatched, and what is re-announced when a pool connection returns.
//! Sessions tell it what to announce through their
//! [`AnnouncementUpdate`] actions; it holds plain values. A session's SM
//! counters, which change with nearly every batch, live in a slot of their
//! own ([`SmCountsSlot`]) that the session's driver writes without the
//! registry's lock.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cm_protocol::{Frame, SessionId, SmSnapshot};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::session::{AnnouncementUpdate, SmAnnouncement, SmCounts};

/// Frames queued for one session before the client counts as not keeping up.
pub const SESSION_QUEUE: usize = 1024;
/// Default bytes of frames ([`Frame::queued_bytes`]) queued for one session
/// before the client counts as not keeping up.
pub const SESSION_QUEUE_BYTES: usize = 1024 * 1024;

/// A frame queued for a session: it holds its bytes of the session's
/// budget until the session takes it.
#[derive(Debug)]
pub struct QueuedFrame {
    frame: Frame,
    /// A copy of a `DeliverMany` ([`Sessions::dispatch_copy`]): dropped,
    /// not bounced, if its session ends without taking it.
    copy: bool,
    _bytes: OwnedSemaphorePermit,
}

impl QueuedFrame {
    /// The frame; its bytes return to the session's budget.
    pub fn into_frame(self) -> Frame {
        self.frame
    }

    /// The frame, unless it is a fan-out copy: what a session that ended
    /// without taking it hands back to the core (as a bounce).
    pub fn into_bounceable(self) -> Option<Frame> {
        (!self.copy).then_some(self.frame)
    }
}

/// How the dispatcher reaches a session, and what is announced for it.
struct Entry {
    /// Frames from the core, boxed: a channel allocates its first block of
    /// 32 slots when created, so unboxed frames cost an idle session 5 KiB.
    tx: mpsc::Sender<Box<QueuedFrame>>,
    /// The queue's byte budget ([`Sessions::with_queue_bytes`]).
    budget: Arc<Semaphore>,
    /// Cancelled when the session must end at once (client too slow).
    kill: CancellationToken,
    /// Set once the session is bound.
    announcement: Option<Announcement>,
    /// The full JID a successful bind or resumption dispatched to the
    /// session gives it, until its driver takes that answer and announces
    /// the binding: so a fan-out that follows the answer in the same read
    /// finds the session bound ([`Sessions::jid`]).
    pending_jid: Option<String>,
    /// The session's latest SM counters (shared with its driver).
    sm_counts: Arc<SmCountsSlot>,
    /// The client asked the core for stream management, which has not
    /// confirmed it yet: a new core would never answer, and what the
    /// client sent meanwhile may have died with the link.
    sm_enabling: bool,
}

/// What an `Announce` frame says of a bound session (the SM counters are
/// in the entry's slot).
struct Announcement {
    jid: String,
    available: bool,
    priority: i8,
    sm: Option<SmRecord>,
}

/// A session's stream management, as re-announced.
struct SmRecord {
    id: String,
    max: u32,
}

/// The latest SM counters of one session: its driver stores them as the
/// session reports them ([`AnnouncementUpdate::SmCounters`], at most once
/// per batch) and the registry reads them when it re-announces the
/// session. A lock of its own, uncontended, so a batch never takes the
/// registry's, and the four counters are always read as one report.
#[derive(Debug, Default)]
pub struct SmCountsSlot(Mutex<SmCounts>);

impl SmCountsSlot {
    /// Records the session's counters.
    pub fn store(&self, counts: SmCounts) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = counts;
    }

    /// The counters last stored (zeros before any).
    pub fn load(&self) -> SmCounts {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a session's driver gets from [`Sessions::open`].
#[derive(Debug)]
pub struct OpenSession {
    /// The session's id.
    pub sid: SessionId,
    /// Frames from the core for it.
    pub frames: mpsc::Receiver<Box<QueuedFrame>>,
    /// Cancelled when it must end at once (its client is too slow).
    pub kill: CancellationToken,
    /// Where its driver stores its SM counters.
    pub sm_counts: Arc<SmCountsSlot>,
}

/// Outcome of dispatching a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Dispatch {
    /// Queued.
    Queued,
    /// No such session (it ended).
    Gone(Frame),
    /// The session's queue was full (in frames or bytes); it is being killed.
    Overflow(Frame),
}

/// The registry (see the module docs).
pub struct Sessions {
    next: AtomicU64,
    map: Mutex<HashMap<SessionId, Entry>>,
    /// Bytes of frames each session's queue holds at most.
    queue_bytes: usize,
}

impl Default for Sessions {
    /// Session ids start at a random point so a restarted CM does not reuse
    /// the ids of its previous process.
    fn default() -> Self {
        Self::starting_at(rand::random::<u64>() >> 1)
    }
}

impl Sessions {
    /// A registry whose first session id follows `last`.
    pub fn starting_at(last: SessionId) -> Self {
        Self {
            next: AtomicU64::new(last),
            map: Mutex::default(),
            queue_bytes: SESSION_QUEUE_BYTES,
        }
    }

    /// Each session's queue holds at most `bytes` of frames (and
    /// [`SESSION_QUEUE`] frames); a session whose queue would hold more is
    /// killed (its client is not reading) and the frame bounces.
    pub fn with_queue_bytes(mut self, bytes: usize) -> Self {
        self.queue_bytes = bytes.clamp(1, Semaphore::MAX_PERMITS);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Entry>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new session: its id, its frame receiver, the token
    /// cancelled when it must end at once and its SM counters' slot.
    pub fn open(&self) -> OpenSession {
        let sid = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, frames) = mpsc::channel(SESSION_QUEUE);
        let kill = CancellationToken::new();
        let sm_counts = Arc::new(SmCountsSlot::default());
        let budget = Arc::new(Semaphore::new(self.queue_bytes));
        self.lock().insert(
            sid,
            Entry {
                tx,
                budget,
                kill: kill.clone(),
                announcement: None,
                pending_jid: None,
                sm_enabling: false,
                sm_counts: sm_counts.clone(),
            },
        );
        OpenSession {
            sid,
            frames,
            kill,
            sm_counts,
        }
    }

    /// Applies a session's change to what is announced for it. (A
    /// driver stores [`AnnouncementUpdate::SmCounters`] in the session's
    /// slot itself, without this lock; here they land in the same slot.)
    pub fn update(&self, sid: SessionId, update: AnnouncementUpdate) {
        let mut map = self.lock();
        let Some(entry) = map.get_mut(&sid) else {
            return;
        };
        match (update, &mut entry.announcement) {
            (
                AnnouncementUpdate::Bound {
                    jid,
                    available,
                    priority,
                    sm,
                },
                announcement,
            ) => {
                // The slot is written under the registry's lock, so an
                // announcement never pairs this SM id with older counts.
                let sm = sm.map(|sm| record(&entry.sm_counts, sm));
                entry.pending_jid = None;
                if sm.is_some() {
                    entry.sm_enabling = false;
                }
                *announcement = Some(Announcement {
                    jid,
                    available,
                    priority,
                    sm,
                });
            }
            (
                AnnouncementUpdate::Presence {
                    available,
                    priority,
                },
                Some(a),
            ) => {
                a.available = available;
                a.priority = priority;
            }
            (AnnouncementUpdate::StreamManagement(sm), Some(a)) => {
                a.sm = Some(record(&entry.sm_counts, sm));
                entry.sm_enabling = false;
            }
            (AnnouncementUpdate::SmEnabling(on), _) => entry.sm_enabling = on,
            // Counters are kept whenever they come (also while SM is being
            // enabled); they are announced once SM is on.
            (AnnouncementUpdate::SmCounters(counts), _) => entry.sm_counts.store(counts),
            (update, None) => {
                tracing::debug!(sid, ?update, "announcement update for an unbound session")
            }
        }
    }

    /// Forgets a session.
    pub fn close(&self, sid: SessionId) {
        self.lock().remove(&sid);
    }

    /// The full JID session `sid` is bound to: its announced binding, or
    /// the one a successful `BindResult` or `Resumed` dispatched to it gives
    /// it (its driver may not have taken that yet). `None` if the session
    /// is gone or not bound.
    pub fn jid(&self, sid: SessionId) -> Option<String> {
        let map = self.lock();
        let entry = map.get(&sid)?;
        match &entry.announcement {
            Some(a) => Some(a.jid.clone()),
            None => entry.pending_jid.clone(),
        }
    }

    /// Hands a frame from the core to its session.
    pub fn dispatch(&self, sid: SessionId, frame: Frame) -> Dispatch {
        self.enqueue(sid, frame, false)
    }

    /// Hands a session its copy of a `DeliverMany` (a `Deliver` stamped
    /// with its JID), as [`Sessions::dispatch`] does, except that a copy
    /// still queued when the session ends is dropped, not bounced
    /// ([`QueuedFrame::into_bounceable`]).
    pub fn dispatch_copy(&self, sid: SessionId, frame: Frame) -> Dispatch {
        self.enqueue(sid, frame, true)
    }

    /// Queues `frame` for session `sid` (see [`Sessions::dispatch`]).
    fn enqueue(&self, sid: SessionId, frame: Frame, copy: bool) -> Dispatch {
        let mut map = self.lock();
        let Some(entry) = map.get_mut(&sid) else {
            return Dispatch::Gone(frame);
        };
        // the JID a bind or resumption gives, known before the session takes it
        let bound = match &frame {
            Frame::BindResult {
                result: Ok(jid), ..
            } => Some(jid.clone()),
            Frame::Resumed { result: Ok(r), .. } => Some(r.jid.clone()),
            _ => None,
        };
        // A frame larger than the whole budget still goes into an empty queue.
        let cost = frame.queued_bytes().min(self.queue_bytes) as u32;
        let Ok(bytes) = entry.budget.clone().try_acquire_many_owned(cost) else {
            entry.kill.cancel();
            return Dispatch::Overflow(frame);
        };
        let queued = Box::new(QueuedFrame {
            frame,
            copy,
            _bytes: bytes,
        });
        match entry.tx.try_send(queued) {
            Ok(()) => {
                if let Some(jid) = bound
                    && entry.announcement.is_none()
                {
                    entry.pending_jid = Some(jid);
                }
                Dispatch::Queued
            }
            Err(mpsc::error::TrySendError::Closed(q)) => Dispatch::Gone(q.into_frame()),
            Err(mpsc::error::TrySendError::Full(q)) => {
                entry.kill.cancel();
                Dispatch::Overflow(q.into_frame())
            }
        }
    }

    /// What pool connection `index` of `size` re-announces when it comes
    /// back: an `Announce` frame for each bound session it carries, with
    /// SM's `handled` at what the core confirmed. A session whose client
    /// sent more than that (stanzas that died with the link or still wait
    /// in the pool's queue) is kicked with `connection-timeout`, so its
    /// client resumes and resends them in order, and is fenced: nothing
    /// more of it may reach the core (see [`Fence`]). So is one whose
    /// `<enable/>` the lost core never answered, and one bound by the lost
    /// core whose driver has not taken the answer yet (it is not announced).
    pub fn announcements(&self, index: u16, size: u16) -> Reannouncement {
        self.announcements_among(index, size, None)
    }

    /// [`Sessions::announcements`] of the sessions in `only` (all: `None`).
    pub fn announcements_among(
        &self,
        index: u16,
        size: u16,
        only: Option<&HashSet<SessionId>>,
    ) -> Reannouncement {
        let mut fence = Fence::default();
        let frames = self
            .lock()
            .iter()
            .filter(|(sid, _)| carried_by(**sid, index, size))
            .filter(|(sid, _)| only.is_none_or(|o| o.contains(sid)))
            .filter_map(|(sid, entry)| {
                if entry.announcement.is_none() && entry.pending_jid.is_some() {
                    // Bound by the lost core, the answer not yet taken by
                    // its driver: the new core would never hear of it.
                    tracing::debug!(sid, "bound but not yet announced: the client reconnects");
                    fence.sids.insert(*sid);
                    kick(entry, *sid);
                    return None;
                }
                announce(*sid, entry, &mut fence)
            })
            .collect();
        Reannouncement { frames, fence }
    }

    /// The `Announce` of one session, if it is bound, as
    /// [`Sessions::announcements`] makes it (kicked and added to `fence`
    /// if its client sent more than the core confirmed, or its `<enable/>`
    /// is unanswered): what a session
    /// that moved to another core is re-announced with there.
    pub fn announcement(&self, sid: SessionId, fence: &mut Fence) -> Option<Frame> {
        let map = self.lock();
        announce(sid, map.get(&sid)?, fence)
    }

    /// The `Announce` of stream-managed session `sid`, which is closing
    /// resumably, for a core that has not heard of it yet (none if it is
    /// not bound or has no stream management).
    pub fn closing_announcement(&self, sid: SessionId) -> Option<Frame> {
        let map = self.lock();
        let entry = map.get(&sid)?;
        entry.announcement.as_ref()?.sm.as_ref()?;
        snapshot(sid, entry)
    }

    /// Tells session `sid` to end its stream resumably (`connection-timeout`).
    pub fn kick(&self, sid: SessionId) {
        if let Some(entry) = self.lock().get(&sid) {
            kick(entry, sid);
        }
    }

    /// Ids of the sessions pool connection `index` of `size` carries.
    pub fn carried(&self, index: u16, size: u16) -> Vec<SessionId> {
        self.lock()
            .keys()
            .filter(|sid| carried_by(**sid, index, size))
            .copied()
            .collect()
    }

    /// Sessions carried by pool connection `index` of `size` that are not bound
    /// yet (possibly mid-SASL or mid-bind at the core).
    pub fn unbound(&self, index: u16, size: u16) -> Vec<SessionId> {
        self.unbound_among(index, size, None)
    }

    /// [`Sessions::unbound`] of the sessions in `only` (all: `None`).
    pub fn unbound_among(
        &self,
        index: u16,
        size: u16,
        only: Option<&HashSet<SessionId>>,
    ) -> Vec<SessionId> {
        self.lock()
            .iter()
            .filter(|(sid, entry)| carried_by(**sid, index, size) && entry.announcement.is_none())
            .filter(|(sid, _)| only.is_none_or(|o| o.contains(sid)))
            .map(|(sid, _)| *sid)
            .collect()
    }

    /// Bytes of frames queued toward the clients now, over every session
    /// (one pass over the registry under its lock: for scrapes, not for a
    /// hot path).
    pub fn queued_bytes(&self) -> usize {
        self.lock()
            .values()
            .map(|e| {
                self.queue_bytes
                    .saturating_sub(e.budget.available_permits())
            })
            .sum()
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a returning pool connection re-announces ([`Sessions::announcements`]).
#[derive(Debug, Default)]
pub struct Reannouncement {
    /// `Announce` frames, to be written before anything queued.
    pub frames: Vec<Frame>,
    /// The sessions being kicked to resume.
    pub fence: Fence,
}

/// Sessions a pool connection was re-announced without stanzas their
/// clients sent (or without the SM they asked for, or not at all), and
/// kicked for it: until each one's `SessionEnd` passes,
/// their `Stanza`, `AckRequest` and `SmEnable` frames are dropped (an
/// `SmEnable` would leave a resumable ghost at the core), so the core never
/// routes a stanza that came after a lost one (the client resends them
/// all after it resumes). Bounded by the sessions the connection carries;
/// replaced at every re-announcement.
#[derive(Debug, Default)]
pub struct Fence {
    sids: HashSet<SessionId>,
}

impl Fence {
    /// Whether `frame`, taken from the pool's queue, may go to the core.
    pub fn passes(&mut self, frame: &Frame) -> bool {
        if self.sids.is_empty() {
            return true;
        }
        match frame {
            Frame::Stanza { sid, .. } | Frame::AckRequest { sid } | Frame::SmEnable { sid, .. } => {
                !self.sids.contains(sid)
            }
            Frame::SessionEnd { sid, .. } => {
                self.sids.remove(sid);
                true
            }
            _ => true,
        }
    }

    /// Fences session `sid` (it was kicked to resume).
    pub fn insert(&mut self, sid: SessionId) {
        self.sids.insert(sid);
    }

    /// Whether no session is fenced.
    pub fn is_empty(&self) -> bool {
        self.sids.is_empty()
    }
}

/// The `Announce` of a session if it is bound; one whose client sent
/// more than the core confirmed is kicked and fenced.
fn announce(sid: SessionId, entry: &Entry, fence: &mut Fence) -> Option<Frame> {
    if entry.announcement.as_ref()?.sm.is_some() {
        let counts = entry.sm_counts.load();
        if counts.unconfirmed() != 0 {
            tracing::debug!(
                sid,
                unconfirmed = counts.unconfirmed(),
                "stanzas the core did not confirm: the client resumes"
            );
            fence.sids.insert(sid);
            kick(entry, sid);
        }
    } else if entry.sm_enabling {
        // Announced without SM, the new core would count nothing the
        // client sends and never answer its `<enable/>`; what it sent
        // since may have died with the link. It reconnects and, having no
        // SM id to resume, sends again all it holds unacknowledged.
        tracing::debug!(
            sid,
            "stream management not confirmed: the client starts over"
        );
        fence.sids.insert(sid);
        kick(entry, sid);
    }
    snapshot(sid, entry)
}

/// The `Announce` of a bound session as it stands (stanzas counted only as
/// far as the core confirmed them).
fn snapshot(sid: SessionId, entry: &Entry) -> Option<Frame> {
    let a = entry.announcement.as_ref()?;
    let sm = a.sm.as_ref().map(|sm| {
        let counts = entry.sm_counts.load();
        SmSnapshot {
            id: sm.id.clone(),
            handled: counts.confirmed,
            sent: counts.sent,
            client_acked: counts.client_acked,
            next_seq: counts.next_seq,
            max: sm.max,
            detached: false,
        }
    });
    Some(Frame::Announce {
        sid,
        jid: a.jid.clone(),
        available: a.available,
        priority: a.priority,
        sm,
    })
}

/// Tells a session to end its client's stream resumably: a
/// `connection-timeout` kick in its queue, or at once if that is full.
fn kick(entry: &Entry, sid: SessionId) {
    let frame = Frame::Kick {
        sid,
        condition: "connection-timeout".into(),
    };
    let cost = frame.queued_bytes() as u32;
    let queued = entry
        .budget
        .clone()
        .try_acquire_many_owned(cost)
        .ok()
        .and_then(|bytes| {
            entry
                .tx
                .try_send(Box::new(QueuedFrame {
                    frame,
                    copy: false,
                    _bytes: bytes,
                }))
                .ok()
        });
    if queued.is_none() {
        entry.kill.cancel();
    }
}

/// Stores an announcement's counters in `slot`; the rest is the record.
fn record(slot: &SmCountsSlot, sm: SmAnnouncement) -> SmRecord {
    slot.store(sm.counts);
    SmRecord {
        id: sm.id,
        max: sm.max,
    }
}

/// Whether session `sid` rides pool connection `index` of `size`.
fn carried_by(sid: SessionId, index: u16, size: u16) -> bool {
    sid % u64::from(size.max(1)) == u64::from(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sm(id: &str, max: u32, counts: SmCounts) -> SmAnnouncement {
        SmAnnouncement {
            id: id.into(),
            max,
            counts,
        }
    }

    fn bound(jid: &str) -> AnnouncementUpdate {
        AnnouncementUpdate::Bound {
            jid: jid.into(),
            available: false,
            priority: 0,
            sm: None,
        }
    }

    fn by_sid(mut frames: Vec<Frame>) -> Vec<Frame> {
        frames.sort_by_key(|f| match f {
            Frame::Announce { sid, .. } => *sid,
            _ => 0,
        });
        frames
    }

    #[test]
    fn queued_bytes_are_what_the_sessions_queues_hold_until_taken() {
        let sessions = Sessions::starting_at(0).with_queue_bytes(1000);
        let mut a = sessions.open();
        let mut b = sessions.open();
        assert_eq!(sessions.queued_bytes(), 0);
        let deliver = |sid, n| Frame::Deliver {
            sid,
            payload: bytes::Bytes::from(vec![b'x'; n]),
        };
        let (fa, fb) = (deliver(a.sid, 100), deliver(b.sid, 300));
        let cost = fa.queued_bytes() + fb.queued_bytes();
        assert_eq!(sessions.dispatch(a.sid, fa), Dispatch::Queued);
        assert_eq!(sessions.dispatch(b.sid, fb), Dispatch::Queued);
        assert_eq!(sessions.queued_bytes(), cost);
        // a frame above a whole budget counts as the budget
        let huge = deliver(a.sid, 5000);
        drop(a.frames.try_recv().expect("queued").into_frame());
        assert_eq!(sessions.dispatch(a.sid, huge), Dispatch::Queued);
        assert_eq!(
            sessions.queued_bytes(),
            cost - deliver(a.sid, 100).queued_bytes() + 1000
        );
        drop(a.frames.try_recv().expect("queued"));
        drop(b.frames.try_recv().expect("queued"));
        assert_eq!(sessions.queued_bytes(), 0);
    }

    #[test]
    fn bound_sessions_are_announced_with_their_presence_and_counters() {
        let sessions = Sessions::starting_at(0);
        let one = sessions.open();
        let two = sessions.open();
        let three = sessions.open();
        assert_eq!((one.sid, two.sid, three.sid), (1, 2, 3));
        sessions.update(one.sid, bound("a@x/1"));
        sessions.update(
            one.sid,
            AnnouncementUpdate::Presence {
                available: true,
                priority: 3,
            },
        );
        let enabled = SmCounts {
            handled: 1,
            ..SmCounts::default()
        };
        sessions.update(
            one.sid,
            AnnouncementUpdate::StreamManagement(sm("ID", 300, enabled)),
        );
        assert_eq!(one.sm_counts.load(), enabled);
        // what the driver stores in the session's slot is what is announced
        let counts = SmCounts {
            handled: 4,
            sent: 9,
            client_acked: 7,
            next_seq: 12,
            confirmed: 4,
        };
        one.sm_counts.store(counts);
        sessions.update(three.sid, bound("b@x/1"));
        // pool connection 1 of 2 carries the odd ids
        assert_eq!(
            by_sid(sessions.announcements(1, 2).frames),
            vec![
                Frame::Announce {
                    sid: 1,
                    jid: "a@x/1".into(),
                    available: true,
                    priority: 3,
                    sm: Some(SmSnapshot {
                        id: "ID".into(),
                        handled: 4,
                        sent: 9,
                        client_acked: 7,
                        next_seq: 12,
                        max: 300,
                        detached: false,
                    }),
                },
                Frame::Announce {
                    sid: 3,
                    jid: "b@x/1".into(),
                    available: false,
                    priority: 0,
                    sm: None,
                },
            ]
        );
        assert_eq!(sessions.announcements(0, 2).frames, vec![]);
        assert_eq!(sessions.unbound(0, 2), vec![2]);
        sessions.close(one.sid);
        assert_eq!(sessions.announcements(1, 2).frames.len(), 1);
    }

    #[test]
    fn a_resumed_binding_is_announced_whole_at_once() {
        let sessions = Sessions::starting_at(0);
        let s = sessions.open();
        let resumed = SmCounts {
            handled: 9,
            sent: 3,
            client_acked: 3,
            next_seq: 0,
            confirmed: 9,
        };
        sessions.update(
            s.sid,
            AnnouncementUpdate::Bound {
                jid: "a@x/phone".into(),
                available: true,
                priority: 2,
                sm: Some(sm("P", 300, resumed)),
            },
        );
        assert_eq!(
            sessions.announcements(0, 1).frames,
            vec![Frame::Announce {
                sid: s.sid,
                jid: "a@x/phone".into(),
                available: true,
                priority: 2,
                sm: Some(SmSnapshot {
                    id: "P".into(),
                    handled: 9,
                    sent: 3,
                    client_acked: 3,
                    next_seq: 0,
                    max: 300,
                    detached: false,
                }),
            }]
        );
    }

    #[test]
    fn counters_reported_while_sm_is_being_enabled_are_kept_and_announced_once_it_is_on() {
        let sessions = Sessions::starting_at(0);
        let s = sessions.open();
        sessions.update(s.sid, bound("a@x/1"));
        // (the core confirmed both: nothing is kicked)
        let enabling = SmCounts {
            handled: 2,
            confirmed: 2,
            ..SmCounts::default()
        };
        sessions.update(s.sid, AnnouncementUpdate::SmCounters(enabling));
        assert_eq!(s.sm_counts.load(), enabling);
        let [Frame::Announce { sm: None, .. }] = &sessions.announcements(0, 1).frames[..] else {
            panic!("announced with SM before it is on");
        };
        sessions.update(
            s.sid,
            AnnouncementUpdate::StreamManagement(sm("ID", 60, enabling)),
        );
        let [
            Frame::Announce {
                sm: Some(snapshot), ..
            },
        ] = &sessions.announcements(0, 1).frames[..]
        else {
            panic!("not announced with SM");
        };
        assert_eq!((snapshot.handled, snapshot.max), (2, 60));
    }

    #[test]
    fn a_session_the_core_did_not_confirm_everything_of_is_announced_at_the_confirmed_count_and_kicked()
     {
        let sessions = Sessions::starting_at(0);
        let mut lossy = sessions.open();
        let mut whole = sessions.open();
        for s in [&lossy, &whole] {
            sessions.update(s.sid, bound("a@x/1"));
            sessions.update(
                s.sid,
                AnnouncementUpdate::StreamManagement(sm("ID", 300, SmCounts::default())),
            );
        }
        // the client sent 5; the core confirmed 3 (2 died with the link or wait in the pool)
        lossy.sm_counts.store(SmCounts {
            handled: 5,
            confirmed: 3,
            ..SmCounts::default()
        });
        whole.sm_counts.store(SmCounts {
            handled: 4,
            confirmed: 4,
            ..SmCounts::default()
        });
        let Reannouncement { frames, mut fence } = sessions.announcements(0, 1);
        let mut handled: Vec<_> = frames
            .into_iter()
            .filter_map(|f| match f {
                Frame::Announce {
                    sid, sm: Some(sm), ..
                } => Some((sid, sm.handled)),
                _ => None,
            })
            .collect();
        handled.sort();
        assert_eq!(handled, vec![(lossy.sid, 3), (whole.sid, 4)]);
        // the lossy session's client is told to resume (it resends from 3)
        assert_eq!(
            lossy.frames.try_recv().map(|q| q.into_frame()).ok(),
            Some(Frame::Kick {
                sid: lossy.sid,
                condition: "connection-timeout".into()
            })
        );
        // the other goes on untouched
        assert!(whole.frames.try_recv().is_err());
        assert!(!lossy.kill.is_cancelled() && !whole.kill.is_cancelled());
        // until the kicked session ends, nothing more of it reaches the core
        let stanza = |sid| Frame::Stanza {
            sid,
            header: cm_protocol::RouteHeader {
                kind: cm_protocol::Kind::Message,
                stanza_type: None,
                to: Some("b@x".into()),
                id: None,
                from: "a@x/1".into(),
            },
            payload: bytes::Bytes::from_static(b"<message/>"),
        };
        assert!(!fence.passes(&stanza(lossy.sid)));
        assert!(!fence.passes(&Frame::AckRequest { sid: lossy.sid }));
        assert!(fence.passes(&Frame::Acked {
            sid: lossy.sid,
            h: 1
        }));
        assert!(fence.passes(&stanza(whole.sid)));
        let end = Frame::SessionEnd {
            sid: lossy.sid,
            jid: Some("a@x/1".into()),
            clean: false,
        };
        assert!(fence.passes(&end));
        assert!(fence.is_empty());
        assert!(fence.passes(&stanza(lossy.sid)));
    }

    #[test]
    fn a_session_still_waiting_for_the_core_to_confirm_stream_management_is_kicked_and_fenced() {
        let sessions = Sessions::starting_at(0);
        let mut waiting = sessions.open();
        let mut confirmed = sessions.open();
        let mut withdrawn = sessions.open();
        let mut resumed = sessions.open();
        for s in [&waiting, &confirmed, &withdrawn] {
            sessions.update(s.sid, AnnouncementUpdate::SmEnabling(true));
            sessions.update(s.sid, bound("a@x/1"));
        }
        // (a SASL2 inline resumption: asked for with the authentication,
        // answered by a binding that carries SM)
        sessions.update(resumed.sid, AnnouncementUpdate::SmEnabling(true));
        sessions.update(
            resumed.sid,
            AnnouncementUpdate::Bound {
                jid: "a@x/2".into(),
                available: true,
                priority: 0,
                sm: Some(sm("ID2", 300, SmCounts::default())),
            },
        );
        // the client sent 2 stanzas behind its <enable/>: on the dead link, maybe
        waiting.sm_counts.store(SmCounts {
            handled: 2,
            ..SmCounts::default()
        });
        sessions.update(
            confirmed.sid,
            AnnouncementUpdate::StreamManagement(sm("ID", 300, SmCounts::default())),
        );
        // (an inline Bind2 refused: SM is not on, the client binds anew)
        sessions.update(withdrawn.sid, AnnouncementUpdate::SmEnabling(false));
        let Reannouncement { frames, mut fence } = sessions.announcements(0, 1);
        // all are announced as they stand: the waiting one without SM
        let sm_of: Vec<_> = by_sid(frames)
            .into_iter()
            .map(|f| match f {
                Frame::Announce { sid, sm, .. } => (sid, sm.is_some()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            sm_of,
            vec![
                (waiting.sid, false),
                (confirmed.sid, true),
                (withdrawn.sid, false),
                (resumed.sid, true)
            ]
        );
        // the waiting one is told to reconnect, and nothing more of it is routed
        assert_eq!(
            waiting.frames.try_recv().map(|q| q.into_frame()).ok(),
            Some(Frame::Kick {
                sid: waiting.sid,
                condition: "connection-timeout".into()
            })
        );
        assert!(!fence.passes(&Frame::AckRequest { sid: waiting.sid }));
        // (its <enable/>, queued during the outage, would leave a ghost)
        let enable = |sid| Frame::SmEnable {
            sid,
            resume: true,
            max: 0,
        };
        assert!(!fence.passes(&enable(waiting.sid)));
        assert!(fence.passes(&enable(confirmed.sid)));
        for other in [&mut confirmed, &mut withdrawn, &mut resumed] {
            assert!(other.frames.try_recv().is_err());
            assert!(fence.passes(&Frame::AckRequest { sid: other.sid }));
        }
    }

    #[test]
    fn a_session_bound_by_the_lost_core_whose_answer_waits_in_its_queue_is_kicked_and_fenced() {
        let sessions = Sessions::starting_at(0);
        let mut binding = sessions.open();
        let answer = Frame::BindResult {
            sid: binding.sid,
            iq_id: "b1".into(),
            result: Ok("a@x/1".into()),
        };
        assert_eq!(
            sessions.dispatch(binding.sid, answer.clone()),
            Dispatch::Queued
        );
        let Reannouncement { frames, mut fence } = sessions.announcements(0, 1);
        // not announced: the new core would not know the JID it takes
        assert!(frames.is_empty());
        let mut queued = || binding.frames.try_recv().map(|q| q.into_frame()).ok();
        assert_eq!(queued(), Some(answer));
        assert_eq!(
            queued(),
            Some(Frame::Kick {
                sid: binding.sid,
                condition: "connection-timeout".into()
            })
        );
        assert!(!fence.passes(&Frame::AckRequest { sid: binding.sid }));
        // an unbound session with no answer pending is left to the failures
        // the pool dispatches to every unbound session
        let idle = sessions.open();
        let Reannouncement { frames, fence } =
            sessions.announcements_among(0, 1, Some(&std::iter::once(idle.sid).collect()));
        assert!(frames.is_empty() && fence.is_empty());
    }

    #[test]
    fn a_full_queue_kills_the_session_and_returns_the_frame() {
        let sessions = Sessions::starting_at(0);
        let OpenSession {
            sid,
            kill,
            frames: _frames,
            ..
        } = sessions.open();
        let frame = |n: u32| Frame::Handled { sid, h: n };
        for n in 0..SESSION_QUEUE as u32 {
            assert_eq!(sessions.dispatch(sid, frame(n)), Dispatch::Queued);
        }
        assert!(!kill.is_cancelled());
        assert_eq!(
            sessions.dispatch(sid, frame(0)),
            Dispatch::Overflow(frame(0))
        );
        assert!(kill.is_cancelled());
        assert_eq!(sessions.dispatch(99, frame(0)), Dispatch::Gone(frame(0)));
    }

    #[test]
    fn a_queue_over_its_byte_budget_kills_the_session_long_before_its_frame_count() {
        let sessions = Sessions::starting_at(0);
        let OpenSession {
            sid,
            kill,
            frames: _frames,
            ..
        } = sessions.open();
        let big = Frame::Deliver {
            sid,
            payload: bytes::Bytes::from(vec![b'x'; 64 * 1024]),
        };
        let mut queued = 0;
        while sessions.dispatch(sid, big.clone()) == Dispatch::Queued {
            queued += 1;
            assert!(queued < SESSION_QUEUE, "{queued} frames of 64 KiB queued");
        }
        assert!(kill.is_cancelled());
        assert!(
            queued * big.queued_bytes() <= SESSION_QUEUE_BYTES,
            "{queued}"
        );
        assert_eq!(queued, SESSION_QUEUE_BYTES / big.queued_bytes());
    }

    #[test]
    fn a_fan_out_copy_left_in_the_queue_of_an_ended_session_does_not_bounce() {
        let sessions = Sessions::starting_at(0);
        let mut s = sessions.open();
        let deliver = Frame::Deliver {
            sid: s.sid,
            payload: bytes::Bytes::from_static(b"<message to='a@x/1'/>"),
        };
        assert_eq!(sessions.dispatch(s.sid, deliver.clone()), Dispatch::Queued);
        assert_eq!(
            sessions.dispatch_copy(s.sid, deliver.clone()),
            Dispatch::Queued
        );
        let first = s.frames.try_recv().expect("queued");
        assert_eq!(first.into_bounceable(), Some(deliver.clone()));
        let copy = s.frames.try_recv().expect("queued");
        assert_eq!(copy.into_bounceable(), None);
        assert_eq!(
            sessions.dispatch_copy(99, deliver.clone()),
            Dispatch::Gone(deliver)
        );
    }

    #[test]
    fn a_session_has_a_jid_once_bound() {
        let sessions = Sessions::starting_at(0);
        let s = sessions.open();
        assert_eq!(sessions.jid(s.sid), None);
        // a failed bind gives none
        let refused = Frame::BindResult {
            sid: s.sid,
            iq_id: "b".into(),
            result: Err("conflict".into()),
        };
        assert_eq!(sessions.dispatch(s.sid, refused), Dispatch::Queued);
        assert_eq!(sessions.jid(s.sid), None);
        sessions.update(s.sid, bound("a@x/1"));
        assert_eq!(sessions.jid(s.sid).as_deref(), Some("a@x/1"));
        sessions.close(s.sid);
        assert_eq!(sessions.jid(s.sid), None);
    }

    #[test]
    fn bytes_taken_by_the_session_return_to_its_budget() {
        let sessions = Sessions::starting_at(0).with_queue_bytes(100_000);
        let mut s = sessions.open();
        let big = Frame::Deliver {
            sid: s.sid,
            payload: bytes::Bytes::from(vec![b'x'; 60_000]),
        };
        assert_eq!(sessions.dispatch(s.sid, big.clone()), Dispatch::Queued);
        let taken = s.frames.try_recv().expect("queued").into_frame();
        assert_eq!(taken, big);
        assert_eq!(sessions.dispatch(s.sid, big.clone()), Dispatch::Queued);
        // a frame above the whole budget still goes into an empty queue
        let s2 = sessions.open();
        let huge = Frame::Deliver {
            sid: s2.sid,
            payload: bytes::Bytes::from(vec![b'x'; 200_000]),
        };
        assert_eq!(sessions.dispatch(s2.sid, huge), Dispatch::Queued);
    }
}
