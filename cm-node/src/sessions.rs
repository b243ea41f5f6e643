//! The CM's registry of live client sessions: where frames from the core
//! are dispatched, and what is re-announced when a pool connection returns.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use cm_protocol::{Frame, SessionId, SmSnapshot};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::session::SmShare;

/// Frames queued for one session before the client counts as not keeping up.
pub const SESSION_QUEUE: usize = 1024;

/// How the dispatcher reaches a session.
#[derive(Clone)]
pub struct SessionHandle {
    /// Frames from the core, boxed: a channel allocates its first block of
    /// 32 slots when created, so unboxed frames cost an idle session 5 KiB.
    pub tx: mpsc::Sender<Box<Frame>>,
    /// Cancelled when the session must end at once (client too slow).
    pub kill: CancellationToken,
    /// Bound full JID, availability and priority (for re-announce).
    pub bound: Option<(String, bool, i8)>,
    /// Stream management state (for re-announce).
    pub sm: Option<SmShare>,
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
    map: Mutex<HashMap<SessionId, SessionHandle>>,
}

impl Default for Sessions {
    /// Session ids start at a random point so a restarted CM does not reuse
    /// the ids of its previous process.
    fn default() -> Self {
        Self {
            next: AtomicU64::new(rand::random::<u64>() >> 1),
            map: Mutex::default(),
        }
    }
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, SessionHandle>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new session and returns its id and frame receiver.
    pub fn open(&self) -> (SessionId, mpsc::Receiver<Box<Frame>>, CancellationToken) {
        let sid = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        let kill = CancellationToken::new();
        self.lock().insert(
            sid,
            SessionHandle {
                tx,
                kill: kill.clone(),
                bound: None,
                sm: None,
            },
        );
        (sid, rx, kill)
    }

    /// Records a session's binding and presence.
    pub fn update(&self, sid: SessionId, jid: &str, available: bool, priority: i8) {
        if let Some(h) = self.lock().get_mut(&sid) {
            h.bound = Some((jid.to_owned(), available, priority));
        }
    }

    /// Records that a session enabled (or resumed) stream management.
    pub fn set_sm(&self, sid: SessionId, sm: SmShare) {
        if let Some(h) = self.lock().get_mut(&sid) {
            h.sm = Some(sm);
        }
    }

    /// Forgets a session.
    pub fn close(&self, sid: SessionId) {
        self.lock().remove(&sid);
    }

    /// Hands a frame from the core to its session.
    pub fn dispatch(&self, sid: SessionId, frame: Frame) -> Dispatch {
        let map = self.lock();
        let Some(h) = map.get(&sid) else {
            return Dispatch::Gone(frame);
        };
        match h.tx.try_send(Box::new(frame)) {
            Ok(()) => Dispatch::Queued,
            Err(mpsc::error::TrySendError::Closed(f)) => Dispatch::Gone(*f),
            Err(mpsc::error::TrySendError::Full(f)) => {
                h.kill.cancel();
                Dispatch::Overflow(*f)
            }
        }
    }

    /// Announce frames for the bound sessions carried by pool connection `index` of `size`.
    pub fn announcements(&self, index: u16, size: u16) -> Vec<Frame> {
        self.lock()
            .iter()
            .filter(|(sid, _)| **sid % u64::from(size.max(1)) == u64::from(index))
            .filter_map(|(sid, h)| {
                h.bound
                    .as_ref()
                    .map(|(jid, available, priority)| Frame::Announce {
                        sid: *sid,
                        jid: jid.clone(),
                        available: *available,
                        priority: *priority,
                        sm: h.sm.as_ref().map(|sm| SmSnapshot {
                            id: sm.id.clone(),
                            handled: sm.counters.handled(),
                            sent: sm.counters.sent(),
                            client_acked: sm.counters.client_acked(),
                            next_seq: sm.counters.next_seq(),
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
            .filter(|(sid, h)| {
                **sid % u64::from(size.max(1)) == u64::from(index) && h.bound.is_none()
            })
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
