//! Requests the driver answers from storage ([`Action::Query`]): archive
//! pages and vCards. The stanzas a query produces come back through
//! [`super::Input::Replies`]; a session has one query at a time.

use bytes::Bytes;
use cm_protocol::RouteHeader;
use xmpp_stream::StanzaCondition;
use xmpp_stream::stanza::{StanzaKind, error_reply};

use super::pep::PepRelation;
use super::{Action, Router};
use crate::routing::SessionAddr;
use crate::storage::{ArchiveQuery, PepItem, PepOptions};

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
    /// Publishes an item to the user's own node (XEP-0163); the
    /// notifications go out once it is stored.
    PepPublish {
        /// Whose (local part).
        user: String,
        /// The node.
        node: String,
        /// The item.
        item: PepItem,
        /// The publish options (preconditions).
        options: PepOptions,
        /// The requesting session's full JID.
        requester: String,
        /// The IQ's id.
        iq_id: String,
    },
    /// Removes an item of the user's own node, notifying if `notify`.
    PepRetract {
        /// Whose (local part).
        user: String,
        /// The node.
        node: String,
        /// The item's id.
        item_id: String,
        /// Whether subscribers learn of it.
        notify: bool,
        /// The requesting session's full JID.
        requester: String,
        /// The IQ's id.
        iq_id: String,
    },
    /// Creates (`create`) or configures one of the user's own nodes.
    PepConfigure {
        /// Whose (local part).
        user: String,
        /// The node.
        node: String,
        /// The fields set.
        options: PepOptions,
        /// Create rather than change.
        create: bool,
        /// The requesting session's full JID.
        requester: String,
        /// The IQ's id.
        iq_id: String,
    },
    /// The configuration form of one of the user's own nodes.
    PepConfigGet {
        /// Whose (local part).
        user: String,
        /// The node.
        node: String,
        /// The requesting session's full JID.
        requester: String,
        /// The IQ's id.
        iq_id: String,
    },
    /// Deletes one of the user's own nodes, notifying subscribers.
    PepDelete {
        /// Whose (local part).
        user: String,
        /// The node.
        node: String,
        /// The requesting session's full JID.
        requester: String,
        /// The IQ's id.
        iq_id: String,
    },
    /// Items of a user's node, for a requester standing in `relation` to
    /// its owner.
    PepItems {
        /// Whose (local part).
        owner: String,
        /// The node.
        node: String,
        /// The items asked for by id (none: the newest).
        ids: Vec<String>,
        /// The most items wanted.
        max: Option<u32>,
        /// The requester's standing.
        relation: PepRelation,
        /// The reply's `from` (the owner's bare JID, or none for one's own).
        from: Option<String>,
        /// The requesting session's full JID.
        requester: String,
        /// The IQ's id.
        iq_id: String,
    },
    /// The newest items of nodes a session has just said it wants
    /// notifications of (XEP-0163 §4.3.3), from the owners it may read:
    /// answered with notifications, not an IQ.
    PepLastItems {
        /// The owners (local parts) and the session's standing with each.
        owners: Vec<(String, PepRelation)>,
        /// The nodes.
        nodes: Vec<String>,
        /// The session's full JID.
        requester: String,
    },
    /// An upload slot (XEP-0363), answered by the upload service.
    UploadSlot {
        /// Whose (local part).
        user: String,
        /// The file's name.
        filename: String,
        /// Its size in bytes.
        size: u64,
        /// Its content type, if given.
        content_type: Option<String>,
        /// The service's JID (the answer's `from`).
        service: String,
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
            Query::PepPublish { item, .. } => item.payload.len(),
            // (a guess at its answer: a small item per owner and node)
            Query::PepLastItems { owners, nodes, .. } => {
                (owners.len() * nodes.len() * 256).min(crate::queries::MAX_LAST_ITEMS_BYTES)
            }
            _ => 0,
        }
    }

    /// Whether it answers an IQ (a session has one such at a time); the
    /// others are the server's own.
    pub fn answers_iq(&self) -> bool {
        !matches!(self, Query::PepLastItems { .. })
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
            }
            | Query::PepPublish {
                requester, iq_id, ..
            }
            | Query::PepRetract {
                requester, iq_id, ..
            }
            | Query::PepConfigure {
                requester, iq_id, ..
            }
            | Query::PepConfigGet {
                requester, iq_id, ..
            }
            | Query::PepDelete {
                requester, iq_id, ..
            }
            | Query::PepItems {
                requester, iq_id, ..
            }
            | Query::UploadSlot {
                requester, iq_id, ..
            } => (requester.as_str(), iq_id.as_str()),
            Query::PepLastItems { requester, .. } => (requester.as_str(), ""),
        };
        QueryId {
            requester: requester.to_owned(),
            iq_id: iq_id.to_owned(),
        }
    }
}

impl Router {
    /// Hands a query to the driver; one answering an IQ at a time per
    /// session.
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
