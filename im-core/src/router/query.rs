//! Requests the driver answers from storage ([`Action::Query`]): archive
//! pages and vCards. The stanzas a query produces come back through
//! [`super::Input::Replies`]; a session has one query at a time.

use bytes::Bytes;
use cm_protocol::RouteHeader;
use xmpp_stream::StanzaCondition;
use xmpp_stream::stanza::{StanzaKind, error_reply};

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
    /// A user's private XML element (XEP-0049).
    PrivateGet {
        /// Whose (local part).
        user: String,
        /// The element's name and namespace (an empty one answers if
        /// nothing is stored).
        name: String,
        /// Its namespace.
        namespace: String,
        /// The requesting session's full JID.
        requester: String,
        /// The IQ's id.
        iq_id: String,
    },
    /// Replaces a user's private XML element of a namespace.
    PrivateSet {
        /// Whose (local part).
        user: String,
        /// Its namespace.
        namespace: String,
        /// The element (its namespace declared).
        element: Bytes,
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

/// The IQ a query answers: enough to answer it with an error.
#[derive(Debug)]
pub(super) struct QueryId {
    /// The requesting session's full JID.
    requester: String,
    /// The IQ's id.
    iq_id: String,
}

impl Query {
    /// The bytes of data it carries to storage (a vCard, private XML).
    pub fn bytes(&self) -> usize {
        match self {
            Query::VCardSet { vcard, .. } => vcard.len(),
            Query::PrivateSet { element, .. } => element.len(),
            _ => 0,
        }
    }

    /// The IQ this query answers.
    fn id(&self) -> QueryId {
        let (requester, iq_id) = match self {
            Query::Archive {
                requester, iq_id, ..
            }
            | Query::VCardGet {
                requester, iq_id, ..
            }
            | Query::VCardSet {
                requester, iq_id, ..
            }
            | Query::PrivateGet {
                requester, iq_id, ..
            }
            | Query::PrivateSet {
                requester, iq_id, ..
            } => (requester, iq_id),
        };
        QueryId {
            requester: requester.clone(),
            iq_id: iq_id.clone(),
        }
    }
}

impl Router {
    /// Hands a query to the driver; one at a time per session.
    pub(super) fn query(&mut self, addr: SessionAddr, header: &RouteHeader, query: Query) {
        if self.querying.contains_key(&addr) {
            return self.reply_error(addr.0, addr.1, header, StanzaCondition::ResourceConstraint);
        }
        self.querying.insert(addr, query.id());
        self.emit(Action::Query { to: addr, query });
    }

    /// A query could not be answered: its IQ gets an error from the server.
    pub(super) fn query_failed(&mut self, to: SessionAddr, condition: StanzaCondition) {
        let Some(id) = self.querying.remove(&to) else {
            return;
        };
        if self.table.jid_of(to.0, to.1).is_none() {
            return;
        }
        self.stats.errors += 1;
        let reply = error_reply(
            StanzaKind::Iq,
            Some(&id.iq_id),
            &self.domain,
            &id.requester,
            condition,
            None,
        );
        self.deliver(to, reply);
    }
}
