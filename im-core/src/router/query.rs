//! Requests the driver answers from storage ([`Action::Query`]): archive
//! pages and vCards. The stanzas a query produces come back through
//! [`super::Input::Replies`]; a session has one query at a time.

use bytes::Bytes;
use cm_protocol::RouteHeader;
use xmpp_stream::StanzaCondition;

use super::{Action, Router};
use crate::routing::SessionAddr;
use crate::storage::ArchiveQuery;

/// A request the driver answers from storage; the stanzas it produces go
/// back to the session through [`super::Input::Replies`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    /// One page of an archive (XEP-0313).
    Archive {
        /// The archive's owner (local part).
        user: String,
        /// The requesting session's full JID.
        requester: String,
        /// The IQ's id.
        iq_id: String,
        /// The client's `queryid`, echoed in every result.
        query_id: Option<String>,
        /// What to return.
        query: ArchiveQuery,
        /// Newest first (`<flip-page/>`).
        flip: bool,
    },
    /// A user's vCard (XEP-0054).
    VCardGet {
        /// Whose (local part).
        user: String,
        /// The reply's `from` (the owner's bare JID, or none for one's own).
        from: Option<String>,
        /// The requesting session's full JID.
        requester: String,
        /// The IQ's id.
        iq_id: String,
    },
    /// Replaces the user's own vCard.
    VCardSet {
        /// Whose (local part).
        user: String,
        /// The `<vCard/>` element.
        vcard: Bytes,
        /// The requesting session's full JID.
        requester: String,
        /// The IQ's id.
        iq_id: String,
    },
}

impl Router {
    /// Hands a query to the driver; one at a time per session.
    pub(super) fn query(&mut self, addr: SessionAddr, header: &RouteHeader, query: Query) {
        if !self.querying.insert(addr) {
            return self.reply_error(addr.0, addr.1, header, StanzaCondition::ResourceConstraint);
        }
        self.emit(Action::Query { to: addr, query });
    }
}
