//! What storage keeps of push notifications (XEP-0357): each user's
//! registrations, one per (app server JID, node), with the publish-options
//! form the client gave, kept as the XML bytes of its `<x/>`. Both
//! backends implement the calls on [`super::Store`] (`push_enable`,
//! `push_disable`, `push_registrations`).

use bytes::Bytes;

/// Most registrations one user keeps: enabling one more (a new app server
/// JID and node) replaces the user's oldest (the one enabled, or enabled
/// again, longest ago).
pub const MAX_PUSH_REGISTRATIONS: i64 = 16;

/// One push registration of a user (XEP-0357 §5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushRegistration {
    /// The app server's XMPP push service (a JID, as the client named it,
    /// normalized).
    pub jid: String,
    /// The node on that service the notifications are published to.
    pub node: String,
    /// The `jabber:x:data` publish-options form to publish with (its XML),
    /// if the client gave one.
    pub options: Option<Bytes>,
    /// When it was enabled (or last enabled again), in µs since the Unix
    /// epoch; strictly increasing among one user's registrations, so the
    /// oldest is well defined.
    pub created: i64,
}

/// The `created` stamp of a registration enabled now, by a user whose
/// newest one is stamped `newest` (0: none): the wall clock in µs, or one
/// past `newest` if the clock is not ahead of it (a clock set back, or two
/// enables within a µs).
pub(super) fn created_stamp(newest: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    now.max(newest.saturating_add(1))
}
