//! Resumptions that came before their session (issue 15): in a cluster, a
//! session whose slot moved is announced to its new owner by its CM while
//! its client, kicked to resume, may already be resuming on another CM
//! connection; the two are not ordered. A `<resume/>` whose SM id is
//! genuine (its HMAC holds for the user) but names no session this core
//! knows waits here a little for the announcement instead of failing, and
//! is answered when it comes or when the wait is over.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use cm_protocol::SessionId;

use crate::routing::NodeId;

/// How long a resumption waits for its session's announcement.
pub const RESUME_WAIT: Duration = Duration::from_secs(3);
/// Most resumptions waiting at once; past it one fails at once.
pub const MAX_PARKED: usize = 4096;

/// A resumption waiting for its session.
#[derive(Debug)]
pub(super) struct Parked {
    /// The resuming stream.
    pub node: NodeId,
    /// Its session.
    pub sid: SessionId,
    /// The user the core authenticated.
    pub user: String,
    /// `previd`.
    pub previd: String,
    /// The client's `h`.
    pub h: u32,
    /// The session token the id names.
    token: u64,
    until: Instant,
}

/// Resumptions waiting, oldest first (so by deadline).
#[derive(Debug, Default)]
pub(super) struct ParkedResumes(VecDeque<Parked>);

impl ParkedResumes {
    /// Parks a resumption of the session `token`; false if full.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn park(
        &mut self,
        (node, sid): (NodeId, SessionId),
        user: &str,
        previd: &str,
        h: u32,
        token: u64,
        now: Instant,
    ) -> bool {
        if self.0.len() >= MAX_PARKED {
            return false;
        }
        self.0.push_back(Parked {
            node,
            sid,
            user: user.to_owned(),
            previd: previd.to_owned(),
            h,
            token,
            until: now + RESUME_WAIT,
        });
        true
    }

    /// The resumptions of session `token` (it was just announced).
    pub(super) fn take(&mut self, token: u64) -> Vec<Parked> {
        let mut out = Vec::new();
        self.0.retain_mut(|p| {
            if p.token == token {
                out.push(Parked {
                    user: std::mem::take(&mut p.user),
                    previd: std::mem::take(&mut p.previd),
                    ..*p
                });
                false
            } else {
                true
            }
        });
        out
    }

    /// Resumptions whose wait is over by `now`.
    pub(super) fn expired(&mut self, now: Instant) -> Vec<Parked> {
        let mut out = Vec::new();
        while self.0.front().is_some_and(|p| p.until <= now) {
            out.extend(self.0.pop_front());
        }
        out
    }

    /// The earliest end of a wait.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.0.front().map(|p| p.until)
    }
}
