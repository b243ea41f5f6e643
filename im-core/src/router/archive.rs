//! The message archive (XEP-0313): a chat message between local users goes
//! into both users' archives ([`Action::Archive`]) under its stable id
//! (XEP-0359); an SM sender's acknowledgement waits for that commit, so an
//! acknowledged message is always on disk.

use bytes::Bytes;

use super::{Action, Router};
use crate::address;
use crate::storage::ArchiveEntry;

impl Router {
    /// The id of the next archived message; none: messages are not
    /// archived.
    pub(super) fn next_archive_id(&mut self) -> Option<String> {
        self.archive.as_mut().map(|ids| ids.next_id())
    }

    /// Archives `stamped` (a message from `sender_bare` to `to_bare` with
    /// its `<stanza-id/>`) for both users.
    pub(super) fn archive(&mut self, sender_bare: &str, to_bare: &str, id: String, stamped: Bytes) {
        let mut entries = vec![ArchiveEntry {
            user: address::local(sender_bare).unwrap_or_default().to_owned(),
            id: id.clone(),
            peer: to_bare.to_owned(),
            stamp: 0,
            payload: stamped.clone(),
        }];
        if to_bare != sender_bare {
            entries.push(ArchiveEntry {
                user: address::local(to_bare).unwrap_or_default().to_owned(),
                id,
                peer: sender_bare.to_owned(),
                stamp: 0,
                payload: stamped,
            });
        }
        let origin = self.hold_ack();
        self.emit(Action::Archive {
            entries,
            origin,
            bounce: super::Bounce::default(),
        });
    }
}
