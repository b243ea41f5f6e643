//! Bookmarks kept the same both ways (XEP-0402 §5.3, `#compat`): the
//! personal eventing node `urn:xmpp:bookmarks:1` (one item per room, its
//! id the room's JID) and the private XML `<storage xmlns='storage:bookmarks'/>`
//! (XEP-0048 over XEP-0049) that older clients read and write.
//!
//! A change to the node writes the private copy again, in the same
//! transaction; a private XML set publishes the rooms that changed and
//! retracts those gone, notifying the owner's sessions. What only one side
//! can hold is kept: a room's `<extensions/>` on the node, URL bookmarks in
//! private XML.

use std::collections::BTreeMap;

use bytes::Bytes;
use xmpp_stream::element::Element;

use super::pep::{published, retracted};
use crate::router::PepEvent;
use crate::storage::{
    MAX_PEP_ITEMS, PepAccess, PepItem, PepOptions, PepPublished, StorageError, Store,
};

/// The bookmarks node (XEP-0402).
pub const NODE: &str = "urn:xmpp:bookmarks:1";
/// The private XML namespace of XEP-0048 bookmarks.
pub const LEGACY: &str = "storage:bookmarks";

/// Longest room JID taken as an item id (a JID's most, RFC 7622).
const MAX_ID_BYTES: usize = 3071;

/// The node's configuration when a private XML set creates it (XEP-0402
/// §3: only the owner reads it, keeping every room).
const OPTIONS: PepOptions = PepOptions {
    access: Some(PepAccess::Whitelist),
    max_items: Some(MAX_PEP_ITEMS),
};

/// One room as both sides describe it.
#[derive(Debug, PartialEq, Eq)]
struct Room {
    name: Option<String>,
    autojoin: bool,
    nick: Option<String>,
    password: Option<String>,
}

impl Room {
    /// A `<conference/>` of either namespace.
    fn of(conference: &Element) -> Self {
        let text = |name: &str| {
            conference
                .elements()
                .find(|e| e.name == name)
                .map(Element::text)
        };
        Room {
            name: conference.attr("name").map(str::to_owned),
            autojoin: matches!(conference.attr("autojoin"), Some("true" | "1")),
            nick: text("nick"),
            password: text("password"),
        }
    }

    /// The legacy `<conference jid=…/>` of this room: `kept` (the one
    /// private XML held) with this room's fields, its other children kept.
    fn merged_into(&self, kept: Option<&Element>, jid: &str) -> Element {
        let Some(kept) = kept else {
            return self.element(LEGACY, Some(jid), None);
        };
        let mut c = self.element(LEGACY, Some(jid), None);
        for child in kept.elements() {
            if !matches!(child.name.as_str(), "nick" | "password") {
                c = c.with_child(child.clone());
            }
        }
        c
    }

    /// The `<conference/>` in namespace `ns`, with `jid` for the legacy
    /// form and `extensions` (kept from the node) for the new one.
    fn element(&self, ns: &str, jid: Option<&str>, extensions: Option<&Element>) -> Element {
        let mut c = Element::new("conference", ns);
        if let Some(jid) = jid {
            c.set_attr("jid", jid);
        }
        if let Some(name) = &self.name {
            c.set_attr("name", name.clone());
        }
        c.set_attr("autojoin", if self.autojoin { "true" } else { "false" });
        for (field, value) in [("nick", &self.nick), ("password", &self.password)] {
            if let Some(v) = value {
                c = c.with_child(Element::new(field, ns).with_text(v.clone()));
            }
        }
        if let Some(ext) = extensions {
            c = c.with_child(ext.clone());
        }
        c
    }
}

/// Writes the private XML copy of `user`'s bookmarks node (after a change
/// to the node, in its transaction). What only private XML holds stays:
/// URL bookmarks and anything else that is not a room, rooms without a
/// `jid`, and a room's own extra children.
pub(super) fn node_to_private(db: &mut dyn Store, user: &str) -> Result<(), StorageError> {
    let items = db
        .pep_items(user, NODE, &[], None)?
        .map(|(_, items)| items)
        .unwrap_or_default();
    let old = db
        .private_xml(user, LEGACY)?
        .and_then(|b| Element::parse(&b, "").ok());
    let old_rooms: Vec<&Element> = old
        .iter()
        .flat_map(|o| o.elements())
        .filter(|e| e.name == "conference")
        .collect();
    let mut storage = Element::new("storage", LEGACY);
    // (an item whose id is no room's JID is not a bookmark)
    for item in items.iter().filter(|i| i.id.contains('@')) {
        let Ok(c) = Element::parse(&item.payload, "") else {
            continue;
        };
        let kept = old_rooms
            .iter()
            .find(|o| o.attr("jid") == Some(item.id.as_str()));
        storage = storage.with_child(Room::of(&c).merged_into(kept.copied(), &item.id));
    }
    for other in old.iter().flat_map(|o| o.elements()) {
        if other.name != "conference" || other.attr("jid").is_none() {
            storage = storage.with_child(other.clone());
        }
    }
    db.set_private_xml(user, LEGACY, &storage.to_bytes(""))
        .map(drop)
}

/// After a private XML set of `<storage/>` (`stored`, its bytes):
/// publishes each room that is new or changed to the node and retracts
/// those no longer there; the notifications.
pub(super) fn private_to_node(
    db: &mut dyn Store,
    user: &str,
    stored: &[u8],
) -> Result<Vec<PepEvent>, StorageError> {
    let Ok(storage) = Element::parse(stored, "") else {
        return Ok(Vec::new());
    };
    let rooms: Vec<&Element> = storage
        .elements()
        .filter(|e| e.name == "conference")
        .filter(|e| e.attr("jid").is_some_and(|j| j.len() <= MAX_ID_BYTES))
        .collect();
    if rooms.len() > MAX_PEP_ITEMS as usize {
        // (the node could not keep them all)
        return Err(StorageError::QuotaExceeded);
    }
    // The node is made (or made again) as §3 asks: only its owner reads
    // it (rooms' passwords are in it) and it keeps every room.
    let (mut options, current) = match db.pep_items(user, NODE, &[], None)? {
        Some((config, items)) => {
            if !OPTIONS.met_by(config) {
                db.pep_configure(user, NODE, &OPTIONS, false)?;
            }
            (PepOptions::default(), items)
        }
        None => (OPTIONS, Vec::new()),
    };
    let mut current: BTreeMap<String, Element> = current
        .into_iter()
        .filter_map(|i| Some((i.id, Element::parse(&i.payload, "").ok()?)))
        .collect();
    let mut events = Vec::new();
    for c in rooms {
        let Some(jid) = c.attr("jid") else { continue };
        let room = Room::of(c);
        let old = current.remove(jid);
        if old.as_ref().is_some_and(|o| Room::of(o) == room) {
            continue; // unchanged: no notification (§5.3.2)
        }
        let extensions = old
            .as_ref()
            .and_then(|o| o.elements().find(|e| e.name == "extensions"));
        let item = PepItem {
            id: jid.to_owned(),
            payload: Bytes::from(room.element(NODE, None, extensions).to_bytes("")),
        };
        if let PepPublished::Published(config) = db.pep_publish(user, NODE, &item, &options)? {
            events.push(published(user, NODE, config.access, &item));
            options = PepOptions::default();
        }
    }
    for id in current.into_keys() {
        if let Some(config) = db.pep_retract(user, NODE, &id)? {
            events.push(retracted(user, NODE, config.access, &id));
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::Query;
    use crate::storage::Sqlite;

    /// A store in a temporary directory with the account alice.
    fn alices_store() -> (tempfile::TempDir, Sqlite) {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Sqlite::open(dir.path(), 10).unwrap();
        let creds = xmpp_sasl::StoredCredentials::new("pw", 4096);
        assert!(db.add_user("alice", &creds).unwrap());
        (dir, db)
    }

    fn set_private(db: &mut dyn Store, storage: &str) -> Vec<PepEvent> {
        let query = Query::PrivateSet {
            user: "alice".into(),
            namespace: LEGACY.into(),
            element: Bytes::from(storage.to_owned()),
            requester: "alice@x/phone".into(),
            iq_id: "s".into(),
        };
        let answer = crate::queries::answer(db, &query, "x");
        assert!(String::from_utf8_lossy(&answer.payloads[0]).contains("type=\"result\""));
        answer.events
    }

    fn rooms(db: &mut dyn Store) -> Vec<(String, String)> {
        let (_, items) = db.pep_items("alice", NODE, &[], None).unwrap().unwrap();
        items
            .into_iter()
            .map(|i| (i.id, String::from_utf8_lossy(&i.payload).into_owned()))
            .collect()
    }

    #[test]
    fn a_private_bookmarks_set_publishes_changed_rooms_retracts_gone_ones_and_keeps_extensions() {
        let (_dir, mut db) = alices_store();
        let events = set_private(
            &mut db,
            "<storage xmlns='storage:bookmarks'>\
             <conference jid='a@muc.x' name='A' autojoin='true'><nick>al</nick></conference>\
             <conference jid='b@muc.x'/><url name='site' url='https://x'/></storage>",
        );
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(events.iter().all(|e| e.access == PepAccess::Whitelist));
        let got = rooms(&mut db);
        assert_eq!(got[0].0, "a@muc.x");
        assert_eq!(
            got[0].1,
            "<conference xmlns=\"urn:xmpp:bookmarks:1\" name=\"A\" autojoin=\"true\"><nick>al</nick></conference>"
        );
        // a client of the node adds extensions to a: kept through private sets
        let with_ext = PepItem {
            id: "a@muc.x".into(),
            payload: Bytes::from_static(
                b"<conference xmlns='urn:xmpp:bookmarks:1' name='A' autojoin='true'><nick>al</nick><extensions><x xmlns='urn:ext'/></extensions></conference>",
            ),
        };
        db.pep_publish("alice", NODE, &with_ext, &PepOptions::default())
            .unwrap();
        // a unchanged (no event), b gone (retracted), c new (published)
        let events = set_private(
            &mut db,
            "<storage xmlns='storage:bookmarks'>\
             <conference jid='a@muc.x' name='A' autojoin='1'><nick>al</nick></conference>\
             <conference jid='c@muc.x' name='C'/></storage>",
        );
        let bodies: Vec<String> = events
            .iter()
            .map(|e| String::from_utf8_lossy(&e.body).into_owned())
            .collect();
        assert_eq!(bodies.len(), 2, "{bodies:?}");
        assert!(bodies[0].contains("<item id=\"c@muc.x\">"), "{bodies:?}");
        assert!(
            bodies[1].contains("<retract id=\"b@muc.x\"/>"),
            "{bodies:?}"
        );
        let got = rooms(&mut db);
        let ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["a@muc.x", "c@muc.x"]);
        assert!(
            got[0]
                .1
                .contains("<extensions><x xmlns='urn:ext'/></extensions>")
        );
    }

    #[test]
    fn a_private_set_makes_an_open_node_owner_only_and_refuses_more_rooms_than_it_keeps() {
        let (_dir, mut db) = alices_store();
        // a client made the node readable by contacts, one item kept
        let open = PepOptions {
            access: Some(PepAccess::Presence),
            max_items: Some(1),
        };
        db.pep_configure("alice", NODE, &open, true).unwrap();
        let events = set_private(
            &mut db,
            "<storage xmlns='storage:bookmarks'><conference jid='a@m'><password>s</password></conference>\
             <conference jid='b@m'/></storage>",
        );
        assert!(
            events.iter().all(|e| e.access == PepAccess::Whitelist),
            "{events:?}"
        );
        assert_eq!(rooms(&mut db).len(), 2, "both rooms kept");
        let many: String = (0..=MAX_PEP_ITEMS)
            .map(|i| format!("<conference jid='r{i}@m'/>"))
            .collect();
        let query = Query::PrivateSet {
            user: "alice".into(),
            namespace: LEGACY.into(),
            element: Bytes::from(format!(
                "<storage xmlns='storage:bookmarks'>{many}</storage>"
            )),
            requester: "alice@x/phone".into(),
            iq_id: "s".into(),
        };
        let answer = crate::queries::answer(&mut db, &query, "x");
        assert!(String::from_utf8_lossy(&answer.payloads[0]).contains("resource-constraint"));
        assert_eq!(rooms(&mut db).len(), 2, "nothing of the refused set stored");
    }

    #[test]
    fn a_node_change_keeps_what_only_private_xml_holds() {
        let (_dir, mut db) = alices_store();
        set_private(
            &mut db,
            "<storage xmlns='storage:bookmarks'><conference jid='a@m' name='A'><x xmlns='urn:client'/></conference>\
             <conference name='no jid'/><other xmlns='urn:o'/></storage>",
        );
        // a modern client renames the room and adds one with a non-JID id
        for (id, name) in [("a@m", "A2"), ("not-a-jid", "X")] {
            let item = PepItem {
                id: id.into(),
                payload: Bytes::from(format!(
                    "<conference xmlns='urn:xmpp:bookmarks:1' name='{name}'/>"
                )),
            };
            db.pep_publish("alice", NODE, &item, &PepOptions::default())
                .unwrap();
        }
        node_to_private(&mut db, "alice").unwrap();
        let private = String::from_utf8_lossy(&db.private_xml("alice", LEGACY).unwrap().unwrap())
            .into_owned();
        assert!(private.contains("jid=\"a@m\" name=\"A2\""), "{private}");
        assert!(private.contains("<x xmlns=\"urn:client\"/>"), "{private}");
        assert!(
            private.contains("name=\"no jid\"") && private.contains("urn:o"),
            "{private}"
        );
        assert!(!private.contains("not-a-jid"), "{private}");
    }

    #[test]
    fn a_change_to_the_node_rewrites_the_private_copy_keeping_url_bookmarks() {
        let (_dir, mut db) = alices_store();
        set_private(
            &mut db,
            "<storage xmlns='storage:bookmarks'><url name='site' url='https://x'/></storage>",
        );
        let publish = Query::PepPublish {
            user: "alice".into(),
            node: NODE.into(),
            item: PepItem {
                id: "r@muc.x".into(),
                payload: Bytes::from_static(
                    b"<conference xmlns='urn:xmpp:bookmarks:1' name='R' autojoin='true'><password>p</password></conference>",
                ),
            },
            options: OPTIONS,
            requester: "alice@x/phone".into(),
            iq_id: "p".into(),
        };
        let answer = crate::queries::answer(&mut db, &publish, "x");
        assert_eq!(answer.events.len(), 1);
        let private = db.private_xml("alice", LEGACY).unwrap().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&private),
            "<storage xmlns=\"storage:bookmarks\"><conference jid=\"r@muc.x\" name=\"R\" autojoin=\"true\"><password>p</password></conference><url name=\"site\" url=\"https://x\"/></storage>"
        );
        let retract = Query::PepRetract {
            user: "alice".into(),
            node: NODE.into(),
            item_id: "r@muc.x".into(),
            notify: true,
            requester: "alice@x/phone".into(),
            iq_id: "r".into(),
        };
        crate::queries::answer(&mut db, &retract, "x");
        let private = db.private_xml("alice", LEGACY).unwrap().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&private),
            "<storage xmlns=\"storage:bookmarks\"><url name=\"site\" url=\"https://x\"/></storage>"
        );
    }
}
