//! Avatars kept in step between personal eventing and the vCard (XEP-0398):
//! a user's avatar published to `urn:xmpp:avatar:metadata` (XEP-0084,
//! its data in `urn:xmpp:avatar:data`) becomes the vCard's `PHOTO`
//! (XEP-0054, XEP-0153), and a vCard set with a `PHOTO` publishes it as
//! the avatar, each in the writing job's transaction. Clients of either
//! kind then see the same picture.

use base64::Engine;
use bytes::Bytes;
use sha1::Digest;
use xmpp_stream::element::{Element, Node};
use xmpp_stream::ns;

use super::pep::published;
use crate::router::PepEvent;
use crate::storage::{PepItem, PepOptions, PepPublished, StorageError, Store};

/// The avatar metadata node (XEP-0084).
pub const METADATA: &str = "urn:xmpp:avatar:metadata";
/// The avatar data node.
pub const DATA: &str = "urn:xmpp:avatar:data";

/// After a publish to the metadata node: the vCard's `PHOTO` becomes the
/// avatar it names (whose data must be in the data node), or goes if the
/// metadata names none.
pub(super) fn metadata_to_vcard(
    db: &mut dyn Store,
    user: &str,
    item: &PepItem,
) -> Result<(), StorageError> {
    let Ok(metadata) = Element::parse(&item.payload, "") else {
        return Ok(());
    };
    // (XEP-0398 §3: the info without a url, whose data is stored here
    // and hashes to its id; else the vCard is left as it is)
    let infos: Vec<&Element> = metadata
        .elements()
        .filter(|e| e.name == "info" && e.attr("url").is_none())
        .collect();
    let photo = match infos.first() {
        None if metadata.elements().any(|e| e.name == "info") => return Ok(()),
        None => None,
        Some(info) => {
            let Some(id) = info.attr("id") else {
                return Ok(());
            };
            let Some((_, data)) = db.pep_items(user, DATA, &[id.to_owned()], None)? else {
                return Ok(());
            };
            let Some(data) = data
                .first()
                .and_then(|d| Element::parse(&d.payload, "").ok())
            else {
                return Ok(());
            };
            let binval: String = data.text().split_whitespace().collect();
            if binval.len() > MAX_PHOTO_BASE64 || decode(&binval).is_none_or(|b| sha1_hex(&b) != id)
            {
                return Ok(());
            }
            let kind = info.attr("type").map(str::trim).filter(|t| !t.is_empty());
            Some((kind.unwrap_or("image/png").to_owned(), binval))
        }
    };
    let mut vcard = db
        .vcard(user)?
        .and_then(|v| Element::parse(&v, ns::CLIENT).ok())
        .unwrap_or_else(|| Element::new("vCard", ns::VCARD));
    vcard
        .children
        .retain(|c| !matches!(c, Node::Element(e) if e.name == "PHOTO"));
    if let Some((kind, binval)) = photo {
        vcard = vcard.with_child(
            Element::new("PHOTO", ns::VCARD)
                .with_child(Element::new("TYPE", ns::VCARD).with_text(kind))
                .with_child(Element::new("BINVAL", ns::VCARD).with_text(binval)),
        );
    }
    db.set_vcard(user, &vcard.to_bytes(ns::CLIENT)).map(drop)
}

/// After a vCard set (`vcard`, its bytes): its `PHOTO` is published as
/// the avatar (data, then metadata, whose notification goes out), unless
/// it is the avatar already; a vCard without one clears an avatar there
/// was. The notifications.
pub(super) fn vcard_to_avatar(
    db: &mut dyn Store,
    user: &str,
    vcard: &[u8],
) -> Result<Vec<PepEvent>, StorageError> {
    let Ok(vcard) = Element::parse(vcard, ns::CLIENT) else {
        return Ok(Vec::new());
    };
    let photo = vcard.elements().find(|e| e.name == "PHOTO");
    if photo.is_some_and(|p| p.elements().any(|e| e.name == "EXTVAL")) {
        return Ok(Vec::new()); // (a photo elsewhere: not converted)
    }
    let binval = photo
        .and_then(|p| p.elements().find(|e| e.name == "BINVAL"))
        .map(|b| b.text().split_whitespace().collect::<String>());
    let current = db
        .pep_items(user, METADATA, &[], Some(1))?
        .and_then(|(_, items)| items.into_iter().next());
    let Some(binval) = binval else {
        // no photo: an avatar there was is cleared
        let had = current
            .as_ref()
            .and_then(|c| Element::parse(&c.payload, "").ok())
            .is_some_and(|m| m.elements().any(|e| e.name == "info"));
        if !had {
            return Ok(Vec::new());
        }
        let empty = PepItem {
            id: "current".into(),
            payload: Bytes::from(Element::new("metadata", METADATA).to_bytes("")),
        };
        return publish(db, user, METADATA, &empty).map(|e| e.into_iter().collect());
    };
    let Some(image) = decode(&binval).filter(|_| binval.len() <= MAX_PHOTO_BASE64) else {
        return Ok(Vec::new()); // (kept in the vCard only)
    };
    let id = sha1_hex(&image);
    if current.as_ref().is_some_and(|c| c.id == id) {
        return Ok(Vec::new()); // (the avatar already)
    }
    let kind = photo
        .and_then(|p| p.elements().find(|e| e.name == "TYPE"))
        .map(|t| t.text().trim().to_owned())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "image/png".into());
    let data = PepItem {
        id: id.clone(),
        payload: Bytes::from(Element::new("data", DATA).with_text(binval).to_bytes("")),
    };
    let info = Element::new("info", METADATA)
        .with_attr("id", id.clone())
        .with_attr("bytes", image.len().to_string())
        .with_attr("type", kind);
    let metadata = PepItem {
        id,
        payload: Bytes::from(
            Element::new("metadata", METADATA)
                .with_child(info)
                .to_bytes(""),
        ),
    };
    let mut events = Vec::new();
    events.extend(publish(db, user, DATA, &data)?);
    events.extend(publish(db, user, METADATA, &metadata)?);
    Ok(events)
}

/// Most base64 characters of a photo converted either way: a vCard
/// holding it still fits a client's stanza bound (64 KiB) with room to
/// spare, and it fits a PEP item.
pub const MAX_PHOTO_BASE64: usize = 48 * 1024;

/// Base64 as vCards and avatar data hold it (padded or not).
fn decode(b64: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    STANDARD
        .decode(b64)
        .or_else(|_| STANDARD_NO_PAD.decode(b64))
        .ok()
}

/// The lower-case hex SHA-1 of `bytes` (an avatar's id, XEP-0084).
fn sha1_hex(bytes: &[u8]) -> String {
    sha1::Sha1::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Publishes `item` to `node` as the node is configured (the defaults if
/// it does not exist); its notification.
fn publish(
    db: &mut dyn Store,
    user: &str,
    node: &str,
    item: &PepItem,
) -> Result<Option<PepEvent>, StorageError> {
    Ok(
        match db.pep_publish(user, node, item, &PepOptions::default())? {
            PepPublished::Published(config) => Some(published(user, node, config.access, item)),
            _ => None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Sqlite;

    const PNG: &[u8] = b"\x89PNG fake image bytes";

    fn store() -> (tempfile::TempDir, Sqlite) {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Sqlite::open(dir.path(), 10).unwrap();
        let creds = xmpp_sasl::StoredCredentials::new("pw", 4096);
        assert!(db.add_user("alice", &creds).unwrap());
        (dir, db)
    }

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    #[test]
    fn a_vcard_photo_becomes_the_avatar_once_and_no_photo_clears_it() {
        let (_dir, mut db) = store();
        let vcard = format!(
            "<vCard xmlns='vcard-temp'><FN>Alice</FN><PHOTO><TYPE>image/png</TYPE><BINVAL>{}</BINVAL></PHOTO></vCard>",
            b64(PNG)
        );
        let events = vcard_to_avatar(&mut db, "alice", vcard.as_bytes()).unwrap();
        let nodes: Vec<&str> = events.iter().map(|e| e.node.as_str()).collect();
        assert_eq!(nodes, [DATA, METADATA]);
        let id: String = sha1::Sha1::digest(PNG)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let (_, meta) = db.pep_items("alice", METADATA, &[], None).unwrap().unwrap();
        assert_eq!(meta[0].id, id);
        let text = String::from_utf8_lossy(&meta[0].payload).into_owned();
        assert!(
            text.contains(&format!("bytes=\"{}\"", PNG.len())) && text.contains("image/png"),
            "{text}"
        );
        // the same photo again publishes nothing
        assert!(
            vcard_to_avatar(&mut db, "alice", vcard.as_bytes())
                .unwrap()
                .is_empty()
        );
        // a vCard without a photo clears the avatar
        let events = vcard_to_avatar(&mut db, "alice", b"<vCard xmlns='vcard-temp'/>").unwrap();
        assert_eq!(events.len(), 1);
        assert!(
            String::from_utf8_lossy(&events[0].body)
                .contains("<metadata xmlns=\"urn:xmpp:avatar:metadata\"/>")
        );
    }

    #[test]
    fn an_avatar_published_to_pep_becomes_the_vcards_photo_keeping_the_rest() {
        let (_dir, mut db) = store();
        db.set_vcard(
            "alice",
            b"<vCard xmlns='vcard-temp'><FN>Alice</FN><PHOTO><BINVAL>b2xk</BINVAL></PHOTO></vCard>",
        )
        .unwrap();
        let id = sha1_hex(PNG);
        let data = PepItem {
            id: id.clone(),
            payload: Bytes::from(format!(
                "<data xmlns='urn:xmpp:avatar:data'>{}</data>",
                b64(PNG)
            )),
        };
        db.pep_publish("alice", DATA, &data, &PepOptions::default())
            .unwrap();
        let meta = PepItem {
            id: id.clone(),
            payload: Bytes::from(format!(
                "<metadata xmlns='urn:xmpp:avatar:metadata'><info id='{id}' bytes='21' type='image/jpeg' url='https://elsewhere'/><info id='{id}' bytes='21' type='image/jpeg'/></metadata>"
            )),
        };
        metadata_to_vcard(&mut db, "alice", &meta).unwrap();
        let vcard = String::from_utf8_lossy(&db.vcard("alice").unwrap().unwrap()).into_owned();
        assert!(vcard.contains("<FN>Alice</FN>"), "{vcard}");
        assert!(
            vcard.contains(&format!(
                "<TYPE>image/jpeg</TYPE><BINVAL>{}</BINVAL>",
                b64(PNG)
            )),
            "{vcard}"
        );
        assert_eq!(vcard.matches("<PHOTO>").count(), 1, "{vcard}");
        // an empty metadata item removes the photo
        let none = PepItem {
            id: "current".into(),
            payload: Bytes::from_static(b"<metadata xmlns='urn:xmpp:avatar:metadata'/>"),
        };
        metadata_to_vcard(&mut db, "alice", &none).unwrap();
        let vcard = String::from_utf8_lossy(&db.vcard("alice").unwrap().unwrap()).into_owned();
        assert!(
            !vcard.contains("PHOTO") && vcard.contains("Alice"),
            "{vcard}"
        );
    }
}
