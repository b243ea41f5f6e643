//! Answers to personal eventing queries (XEP-0163): the IQ results and
//! errors, and for a stored change the `<event/>` its readers are notified
//! of (the router picks the sessions).

use bytes::Bytes;
use xmpp_stream::element::{Element, escape};
use xmpp_stream::{StanzaCondition, ns};

use super::{Answer, MAX_ITEMS_BYTES, MAX_LAST_ITEMS_BYTES, avatars, bookmarks, failure, result};
use crate::address;
use crate::router::{PepEvent, PepRelation, Query, config_form, notification, pubsub_error};
use crate::storage::{
    PepAccess, PepConfigured, PepItem, PepPublished, StorageError, Store, all_or_none,
};

/// The answer to a personal eventing query (and to a private XML set of
/// bookmarks, which the bookmarks node follows); none for other queries.
pub(super) fn answer(db: &mut dyn Store, query: &Query, domain: &str) -> Option<Answer> {
    let only = |payloads: Bytes| Answer {
        payloads: vec![payloads],
        events: Vec::new(),
    };
    let failed =
        |e: StorageError, requester: &str, iq_id: &str| only(failure(e, requester, iq_id, domain));
    let answer = match query {
        Query::PepPublish {
            user,
            node,
            item,
            options,
            requester,
            iq_id,
        } => {
            let mut item = item.clone();
            if item.id.is_empty() {
                item.id = format!("{:016x}", rand::random::<u64>());
            }
            let publish = |db: &mut dyn Store| {
                let done = db.pep_publish(user, node, &item, options)?;
                if matches!(done, PepPublished::Published(_)) {
                    match node.as_str() {
                        bookmarks::NODE => bookmarks::node_to_private(db, user)?,
                        avatars::METADATA => avatars::metadata_to_vcard(db, user, &item)?,
                        _ => {}
                    }
                }
                Ok(done)
            };
            match all_or_none(db, publish) {
                Ok(PepPublished::Published(config)) => {
                    let publish = format!(
                        "<pubsub xmlns=\"{}\"><publish node=\"{}\"><item id=\"{}\"/></publish></pubsub>",
                        ns::PUBSUB,
                        escape(node),
                        escape(&item.id)
                    );
                    Answer {
                        payloads: vec![result_with(requester, iq_id, None, publish.as_bytes())],
                        events: vec![published(user, node, config.access, &item)],
                    }
                }
                Ok(PepPublished::PreconditionNotMet) => only(pubsub_error(
                    address::bare(requester),
                    requester,
                    iq_id,
                    StanzaCondition::Conflict,
                    "precondition-not-met",
                    "",
                )),
                Ok(PepPublished::NoSuchUser) => failed(StorageError::UnknownId, requester, iq_id),
                Err(e) => failed(e, requester, iq_id),
            }
        }
        Query::PepRetract {
            user,
            node,
            item_id,
            notify,
            requester,
            iq_id,
        } => match all_or_none(db, |db| {
            let done = db.pep_retract(user, node, item_id)?;
            if node == bookmarks::NODE && done.is_some() {
                bookmarks::node_to_private(db, user)?;
            }
            Ok(done)
        }) {
            Ok(Some(config)) => Answer {
                payloads: vec![result(requester, iq_id, None, None)],
                events: Vec::from_iter(
                    notify.then(|| retracted(user, node, config.access, item_id)),
                ),
            },
            Ok(None) => failed(StorageError::UnknownId, requester, iq_id),
            Err(e) => failed(e, requester, iq_id),
        },
        Query::PepConfigure {
            user,
            node,
            options,
            create,
            requester,
            iq_id,
        } => match all_or_none(db, |db| db.pep_configure(user, node, options, *create)) {
            Ok(PepConfigured::Done(_)) => only(result(requester, iq_id, None, None)),
            Ok(PepConfigured::Exists) => {
                only(error(requester, iq_id, domain, StanzaCondition::Conflict))
            }
            Ok(PepConfigured::NoSuchNode | PepConfigured::NoSuchUser) => {
                failed(StorageError::UnknownId, requester, iq_id)
            }
            Err(e) => failed(e, requester, iq_id),
        },
        Query::PepConfigGet {
            user,
            node,
            requester,
            iq_id,
        } => match all_or_none(db, |db| db.pep_items(user, node, &[], Some(0))) {
            Ok(Some((config, _))) => {
                let configure = Element::new("configure", ns::PUBSUB_OWNER)
                    .with_attr("node", node.clone())
                    .with_child(config_form(config.access, config.max_items));
                let pubsub = Element::new("pubsub", ns::PUBSUB_OWNER).with_child(configure);
                only(result(requester, iq_id, None, Some(pubsub)))
            }
            Ok(None) => failed(StorageError::UnknownId, requester, iq_id),
            Err(e) => failed(e, requester, iq_id),
        },
        Query::PepDelete {
            user,
            node,
            requester,
            iq_id,
        } => match all_or_none(db, |db| {
            let done = db.pep_delete(user, node)?;
            if node == bookmarks::NODE && done.is_some() {
                bookmarks::node_to_private(db, user)?;
            }
            Ok(done)
        }) {
            Ok(Some(config)) => Answer {
                payloads: vec![result(requester, iq_id, None, None)],
                events: vec![PepEvent {
                    owner: user.clone(),
                    node: node.clone(),
                    access: config.access,
                    body: event(format!("<delete node=\"{}\"/>", escape(node)).as_bytes()),
                }],
            },
            Ok(None) => failed(StorageError::UnknownId, requester, iq_id),
            Err(e) => failed(e, requester, iq_id),
        },
        Query::PepItems {
            owner,
            node,
            ids,
            max,
            relation,
            from,
            requester,
            iq_id,
        } => match all_or_none(db, |db| {
            // (an owner's block list hides the node: XEP-0191 §3.4)
            let blocked = *relation != PepRelation::Owner
                && db.blocks_any(owner, &crate::block_list::owned_forms(requester))?;
            match blocked {
                true => Ok(None),
                false => db.pep_items(owner, node, ids, *max).map(Some),
            }
        }) {
            Ok(None) => only(error(
                requester,
                iq_id,
                from.as_deref().unwrap_or(address::bare(requester)),
                StanzaCondition::ServiceUnavailable,
            )),
            Ok(Some(Some((config, mut found)))) if relation.may_read(config.access) => {
                // the newest that fit in one answer
                let mut bytes = 0;
                let fitting = found
                    .iter()
                    .rev()
                    .take_while(|i| {
                        bytes += i.payload.len() + i.id.len();
                        bytes <= MAX_ITEMS_BYTES
                    })
                    .count()
                    .max(1)
                    .min(found.len());
                found.drain(..found.len() - fitting);
                let pubsub = format!(
                    "<pubsub xmlns=\"{}\">{}</pubsub>",
                    ns::PUBSUB,
                    String::from_utf8_lossy(&items(node, &found))
                );
                only(result_with(
                    requester,
                    iq_id,
                    from.as_deref(),
                    pubsub.as_bytes(),
                ))
            }
            Ok(Some(Some((config, _)))) => {
                let (condition, app) = match config.access {
                    PepAccess::Presence => (
                        StanzaCondition::NotAuthorized,
                        "presence-subscription-required",
                    ),
                    _ => (StanzaCondition::NotAllowed, "closed-node"),
                };
                let from = from.as_deref().unwrap_or(address::bare(requester));
                only(pubsub_error(from, requester, iq_id, condition, app, ""))
            }
            Ok(Some(None)) => {
                let from = from.as_deref().unwrap_or(address::bare(requester));
                only(error(requester, iq_id, from, StanzaCondition::ItemNotFound))
            }
            Err(e) => failed(e, requester, iq_id),
        },
        Query::PepLastItems {
            owners,
            nodes,
            requester,
        } => {
            let locals: Vec<String> = owners.iter().map(|(o, _)| o.clone()).collect();
            let read = |db: &mut dyn Store| {
                let found = db.pep_last_items(&locals, nodes)?;
                // (owners whose block lists hold the requester are left out)
                let mut with_items: Vec<String> = found
                    .iter()
                    .filter(|l| {
                        owners
                            .iter()
                            .any(|(o, r)| *o == l.owner && *r != PepRelation::Owner)
                    })
                    .map(|l| l.owner.clone())
                    .collect();
                with_items.sort_unstable();
                with_items.dedup();
                let blockers =
                    db.blockers(&with_items, &crate::block_list::owned_forms(requester))?;
                Ok((found, blockers))
            };
            let (found, blockers) = match all_or_none(db, read) {
                Ok(read) => read,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the newest PEP items failed");
                    Default::default()
                }
            };
            let mut bytes = 0;
            let payloads = found
                .into_iter()
                .filter(|last| {
                    !blockers.contains(&last.owner)
                        && owners
                            .iter()
                            .any(|(o, r)| *o == last.owner && r.may_read(last.config.access))
                })
                .map(|last| {
                    let from = format!("{}@{domain}", last.owner);
                    let id = format!("{:016x}", rand::random::<u64>());
                    let body = event(&items(&last.node, std::slice::from_ref(&last.item)));
                    notification(&from, requester, &id, &body)
                })
                .take_while(|n| {
                    bytes += n.len();
                    bytes <= MAX_LAST_ITEMS_BYTES
                })
                .collect();
            Answer {
                payloads,
                events: Vec::new(),
            }
        }
        Query::PrivateSet {
            user,
            namespace,
            element,
            requester,
            iq_id,
        } if namespace == bookmarks::LEGACY => {
            // (stored, and the bookmarks node brought in line, together)
            let set = |db: &mut dyn Store| {
                let stored = db.set_private_xml(user, namespace, element)?;
                let events = match stored {
                    crate::storage::Stored::Stored => {
                        bookmarks::private_to_node(db, user, element)?
                    }
                    crate::storage::Stored::NoSuchUser => Vec::new(),
                };
                Ok(events)
            };
            match all_or_none(db, set) {
                Ok(events) => Answer {
                    payloads: vec![result(requester, iq_id, None, None)],
                    events,
                },
                Err(e) => failed(e, requester, iq_id),
            }
        }
        Query::VCardSet {
            user,
            vcard,
            requester,
            iq_id,
        } => {
            // (stored, and the avatar brought in line, together)
            let set = |db: &mut dyn Store| match db.set_vcard(user, vcard)? {
                // (the avatar in a savepoint of its own: a full PEP store
                // does not keep the vCard from being set)
                crate::storage::Stored::Stored => Ok(all_or_none(db, |db| {
                    avatars::vcard_to_avatar(db, user, vcard)
                })
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "publishing a vCard's photo as the avatar failed");
                    Vec::new()
                })),
                crate::storage::Stored::NoSuchUser => Ok(Vec::new()),
            };
            match all_or_none(db, set) {
                Ok(events) => Answer {
                    payloads: vec![result(requester, iq_id, None, None)],
                    events,
                },
                Err(e) => failed(e, requester, iq_id),
            }
        }
        _ => return None,
    };
    Some(answer)
}

/// The notification of `item`'s publication.
pub(super) fn published(user: &str, node: &str, access: PepAccess, item: &PepItem) -> PepEvent {
    PepEvent {
        owner: user.to_owned(),
        node: node.to_owned(),
        access,
        body: event(&items(node, std::slice::from_ref(item))),
    }
}

/// The notification of item `id`'s retraction.
pub(super) fn retracted(user: &str, node: &str, access: PepAccess, id: &str) -> PepEvent {
    let retract = format!(
        "<items node=\"{}\"><retract id=\"{}\"/></items>",
        escape(node),
        escape(id)
    );
    PepEvent {
        owner: user.to_owned(),
        node: node.to_owned(),
        access,
        body: event(retract.as_bytes()),
    }
}

/// `<items node='…'>` with each item and its payload.
fn items(node: &str, items: &[PepItem]) -> Vec<u8> {
    let mut out = format!("<items node=\"{}\">", escape(node)).into_bytes();
    for item in items {
        out.extend_from_slice(format!("<item id=\"{}\">", escape(&item.id)).as_bytes());
        out.extend_from_slice(&item.payload);
        out.extend_from_slice(b"</item>");
    }
    out.extend_from_slice(b"</items>");
    out
}

/// An `<event/>` around `inner`.
fn event(inner: &[u8]) -> Bytes {
    let mut out = format!("<event xmlns=\"{}\">", ns::PUBSUB_EVENT).into_bytes();
    out.extend_from_slice(inner);
    out.extend_from_slice(b"</event>");
    Bytes::from(out)
}

/// A result IQ holding the serialized element `inner`.
fn result_with(requester: &str, iq_id: &str, from: Option<&str>, inner: &[u8]) -> Bytes {
    let mut iq = result(requester, iq_id, from, None).to_vec();
    let close = iq.len() - "</iq>".len();
    iq.splice(close..close, inner.iter().copied());
    Bytes::from(iq)
}

/// An IQ error from `from`.
fn error(requester: &str, iq_id: &str, from: &str, condition: StanzaCondition) -> Bytes {
    xmpp_stream::stanza::error_reply(
        xmpp_stream::stanza::StanzaKind::Iq,
        Some(iq_id),
        from,
        requester,
        condition,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::PepRelation;
    use crate::storage::{PepOptions, Sqlite};

    fn publish(db: &mut dyn Store, node: &str, access: PepAccess) -> Answer {
        let query = Query::PepPublish {
            user: "alice".into(),
            node: node.into(),
            item: PepItem {
                id: String::new(),
                payload: Bytes::from_static(
                    b"<nick xmlns=\"http://jabber.org/protocol/nick\">A</nick>",
                ),
            },
            options: PepOptions {
                access: Some(access),
                max_items: None,
            },
            requester: "alice@x/phone".into(),
            iq_id: "p".into(),
        };
        super::answer(db, &query, "x").unwrap()
    }

    fn read(db: &mut dyn Store, node: &str, relation: PepRelation) -> String {
        let query = Query::PepItems {
            owner: "alice".into(),
            node: node.into(),
            ids: Vec::new(),
            max: None,
            relation,
            from: Some("alice@x".into()),
            requester: "bob@x/phone".into(),
            iq_id: "r".into(),
        };
        let answer = super::answer(db, &query, "x").unwrap();
        String::from_utf8_lossy(&answer.payloads[0]).into_owned()
    }

    #[test]
    fn a_publish_answers_with_a_generated_id_and_an_event_and_reads_follow_the_access_model_and_blocks()
     {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Sqlite::open(dir.path(), 10).unwrap();
        let creds = xmpp_sasl::StoredCredentials::new("pw", 4096);
        assert!(db.add_user("alice", &creds).unwrap());
        let done = publish(&mut db, "open", PepAccess::Open);
        let result = String::from_utf8_lossy(&done.payloads[0]).into_owned();
        assert!(
            result.contains("type=\"result\"")
                && result.contains("<publish node=\"open\"><item id=\""),
            "{result}"
        );
        let [event] = &done.events[..] else {
            panic!("{:?}", done.events)
        };
        assert_eq!(
            (event.owner.as_str(), event.access),
            ("alice", PepAccess::Open)
        );
        let body = String::from_utf8_lossy(&event.body);
        assert!(body.starts_with("<event xmlns=\"http://jabber.org/protocol/pubsub#event\"><items node=\"open\"><item id=\""), "{body}");
        assert!(body.contains(">A</nick></item></items></event>"), "{body}");
        publish(&mut db, "closed", PepAccess::Presence);
        publish(&mut db, "mine", PepAccess::Whitelist);
        assert!(read(&mut db, "open", PepRelation::Other).contains(">A</nick>"));
        assert!(
            read(&mut db, "closed", PepRelation::Other).contains("presence-subscription-required")
        );
        assert!(read(&mut db, "closed", PepRelation::Subscriber).contains(">A</nick>"));
        assert!(read(&mut db, "mine", PepRelation::Subscriber).contains("closed-node"));
        assert!(read(&mut db, "none", PepRelation::Owner).contains("item-not-found"));
        // the newest items a session may read, as notifications
        let query = Query::PepLastItems {
            owners: vec![("alice".into(), PepRelation::Subscriber)],
            nodes: vec!["open".into(), "closed".into(), "mine".into()],
            requester: "bob@x/phone".into(),
        };
        let last = super::answer(&mut db, &query, "x").unwrap();
        let mut nodes: Vec<String> = last
            .payloads
            .iter()
            .map(|p| {
                let m = Element::parse(p, ns::CLIENT).unwrap();
                assert_eq!(
                    (m.attr("from"), m.attr("to")),
                    (Some("alice@x"), Some("bob@x/phone"))
                );
                let items = m
                    .child("event", ns::PUBSUB_EVENT)
                    .unwrap()
                    .elements()
                    .next()
                    .unwrap();
                items.attr("node").unwrap().to_owned()
            })
            .collect();
        nodes.sort();
        assert_eq!(nodes, ["closed", "open"]);
        // once alice blocks bob, he reads nothing of hers and gets no last items
        db.block("alice", &["bob@x".into()]).unwrap();
        assert!(read(&mut db, "open", PepRelation::Subscriber).contains("service-unavailable"));
        let last = super::answer(&mut db, &query, "x").unwrap();
        assert!(last.payloads.is_empty(), "{:?}", last.payloads);
        db.unblock("alice", &[]).unwrap();
        // a failed precondition stores nothing and says so
        let refused = publish(&mut db, "open", PepAccess::Presence);
        assert!(refused.events.is_empty());
        assert!(String::from_utf8_lossy(&refused.payloads[0]).contains("precondition-not-met"));
    }
}
