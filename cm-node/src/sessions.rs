//! The CM's registry of live client sessions: where frames from the core
//! are dispatched, and what is re-announced when a pool connection returns.
//! Sessions tell it what to announce through their
//! [`AnnouncementUpdate`] actions; it holds plain values.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use cm_protocol::{Frame, SessionId, SmSnapshot};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::session::{AnnouncementUpdate, SmCounts};

/// Frames queued for one session before the client counts as not keeping up.
pub const SESSION_QUEUE: usize = 1024;

/// How the dispatcher reaches a session, and what is announced for it.
struct Entry {
    /// Frames from the core, boxed: a channel allocates its first block of
    /// 32 slots when created, so unboxed frames cost an idle session 5 KiB.
    tx: mpsc::Sender<Box<Frame>>,
    /// Cancelled when the session must end at once (client too slow).
    kill: CancellationToken,
    /// Set once the session is bound.
    announcement: Option<Announcement>,
}

/// What an `Announce` frame says of a bound session.
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
    counts: SmCounts,
}

/// Outcome of dispatching a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Dispatch {
    /// Queued.
    Queued,
    /// No such session (it ended).
    Gone(Frame),
    /// The session's queue was full; it is being killed.
    Overflow(Frame),
}

/// The registry (see the module docs).
pub struct Sessions {
    next: AtomicU64,
    map: Mutex<HashMap<SessionId, Entry>>,
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
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Entry>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new session and returns its id, its frame receiver and
    /// the token cancelled when it must end at once.
    pub fn open(&self) -> (SessionId, mpsc::Receiver<Box<Frame>>, CancellationToken) {
        let sid = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        let kill = CancellationToken::new();
        self.lock().insert(
            sid,
            Entry {
                tx,
                kill: kill.clone(),
                announcement: None,
            },
        );
        (sid, rx, kill)
    }

    /// Applies a session's change to what is announced for it.
    pub fn update(&self, sid: SessionId, update: AnnouncementUpdate) {
        let mut map = self.lock();
        let Some(entry) = map.get_mut(&sid) else {
            return;
        };
        match (update, &mut entry.announcement) {
            (AnnouncementUpdate::Bound(jid), announcement) => {
                *announcement = Some(Announcement {
                    jid,
                    available: false,
                    priority: 0,
                    sm: None,
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
            (AnnouncementUpdate::StreamManagement { id, max }, Some(a)) => {
                a.sm = Some(SmRecord {
                    id,
                    max,
                    counts: SmCounts::default(),
                });
            }
            (AnnouncementUpdate::SmCounters(counts), Some(Announcement { sm: Some(sm), .. })) => {
                sm.counts = counts;
            }
            (update, _) => {
                tracing::debug!(sid, ?update, "announcement update for an unbound session")
            }
        }
    }

    /// Forgets a session.
    pub fn close(&self, sid: SessionId) {
        self.lock().remove(&sid);
    }

    /// Hands a frame from the core to its session.
    pub fn dispatch(&self, sid: SessionId, frame: Frame) -> Dispatch {
        let map = self.lock();
        let Some(entry) = map.get(&sid) else {
            return Dispatch::Gone(frame);
        };
        match entry.tx.try_send(Box::new(frame)) {
            Ok(()) => Dispatch::Queued,
            Err(mpsc::error::TrySendError::Closed(f)) => Dispatch::Gone(*f),
            Err(mpsc::error::TrySendError::Full(f)) => {
                entry.kill.cancel();
                Dispatch::Overflow(*f)
            }
        }
    }

    /// Announce frames for the bound sessions carried by pool connection `index` of `size`.
    pub fn announcements(&self, index: u16, size: u16) -> Vec<Frame> {
        self.lock()
            .iter()
            .filter(|(sid, _)| carried_by(**sid, index, size))
            .filter_map(|(sid, entry)| {
                let a = entry.announcement.as_ref()?;
                Some(Frame::Announce {
                    sid: *sid,
                    jid: a.jid.clone(),
                    available: a.available,
                    priority: a.priority,
                    sm: a.sm.as_ref().map(|sm| SmSnapshot {
                        id: sm.id.clone(),
                        handled: sm.counts.handled,
                        sent: sm.counts.sent,
                        client_acked: sm.counts.client_acked,
                        next_seq: sm.counts.next_seq,
                        max: sm.max,
                    }),
                })
            })
            .collect()
    }

    /// Sessions carried by pool connection `index` of `size` that are not bound
    /// yet (possibly mid-SASL or mid-bind at the core).
    pub fn unbound(&self, index: u16, size: u16) -> Vec<SessionId> {
        self.lock()
            .iter()
            .filter(|(sid, entry)| carried_by(**sid, index, size) && entry.announcement.is_none())
            .map(|(sid, _)| *sid)
            .collect()
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

/// Whether session `sid` rides pool connection `index` of `size`.
fn carried_by(sid: SessionId, index: u16, size: u16) -> bool {
    sid % u64::from(size.max(1)) == u64::from(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_sessions_are_announced_with_their_presence_and_counters() {
        let sessions = Sessions::starting_at(0);
        let (one, _rx1, _) = sessions.open();
        let (two, _rx2, _) = sessions.open();
        let (three, _rx3, _) = sessions.open();
        assert_eq!((one, two, three), (1, 2, 3));
        // counters before a binding are ignored
        sessions.update(one, AnnouncementUpdate::SmCounters(SmCounts::default()));
        sessions.update(one, AnnouncementUpdate::Bound("a@x/1".into()));
        sessions.update(
            one,
            AnnouncementUpdate::Presence {
                available: true,
                priority: 3,
            },
        );
        sessions.update(
            one,
            AnnouncementUpdate::StreamManagement {
                id: "ID".into(),
                max: 300,
            },
        );
        let counts = SmCounts {
            handled: 4,
            sent: 9,
            client_acked: 7,
            next_seq: 12,
        };
        sessions.update(one, AnnouncementUpdate::SmCounters(counts));
        sessions.update(three, AnnouncementUpdate::Bound("b@x/1".into()));
        // pool connection 1 of 2 carries the odd ids
        let mut frames = sessions.announcements(1, 2);
        frames.sort_by_key(|f| match f {
            Frame::Announce { sid, .. } => *sid,
            _ => 0,
        });
        assert_eq!(
            frames,
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
        assert_eq!(sessions.announcements(0, 2), vec![]);
        assert_eq!(sessions.unbound(0, 2), vec![2]);
        sessions.close(one);
        assert_eq!(sessions.announcements(1, 2).len(), 1);
    }

    #[test]
    fn a_full_queue_kills_the_session_and_returns_the_frame() {
        let sessions = Sessions::starting_at(0);
        let (sid, _rx, kill) = sessions.open();
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
}
