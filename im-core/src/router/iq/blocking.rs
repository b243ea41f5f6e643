//! The Blocking Command (XEP-0191): a user's block list, read, added to
//! and taken from. A change is a roster change (see `roster_writes`): its
//! write commits before its result, its pushes to the sessions that asked
//! for the list, and the presence it implies go out. What blocking does to
//! stanzas is in [`crate::router::blocking`].

use bytes::Bytes;
use cm_protocol::RouteHeader;
use jid::Jid;
use xmpp_stream::element::Element;
use xmpp_stream::{StanzaCondition, ns};

use super::iq_result;
use crate::address;
use crate::block_list::{self, MAX_BLOCKED};
use crate::router::{RosterWrite, Router};
use crate::routing::SessionAddr;

impl Router {
    /// A `<blocklist/>` get, or a `<block/>` or `<unblock/>` set, from
    /// `addr` of `bare`.
    pub(in crate::router) fn blocking_iq(
        &mut self,
        addr: SessionAddr,
        header: &RouteHeader,
        request: &Element,
        bare: &str,
    ) {
        let Some(roster) = self.rosters.get(bare) else {
            return self.reply_error(addr.0, addr.1, header, StanzaCondition::InternalServerError);
        };
        let blocked = roster.blocked().to_vec();
        let set = header.stanza_type.as_deref() == Some("set");
        match (request.name.as_str(), set) {
            ("blocklist", false) => {
                if let Some(r) = self.table.route_mut(addr.0, addr.1) {
                    r.blocklist = true;
                }
                let list = blocked
                    .iter()
                    .fold(Element::new("blocklist", ns::BLOCKING), |l, j| {
                        l.with_child(Element::new("item", ns::BLOCKING).with_attr("jid", j.clone()))
                    });
                let reply = iq_result(header).with_child(list);
                self.deliver(addr, Bytes::from(reply.to_bytes(ns::CLIENT)));
            }
            ("block", true) | ("unblock", true) => {
                let block = request.name == "block";
                let items = match items(request) {
                    Ok(items) if block && items.is_empty() => {
                        // XEP-0191 §3.3: a block names at least one JID
                        return self.reply_error(
                            addr.0,
                            addr.1,
                            header,
                            StanzaCondition::BadRequest,
                        );
                    }
                    Ok(items) => items,
                    Err(condition) => return self.reply_error(addr.0, addr.1, header, condition),
                };
                let changed: Vec<String> = match block {
                    true => items
                        .iter()
                        .filter(|j| !blocked.contains(j))
                        .cloned()
                        .collect(),
                    // (an empty unblock unblocks everything)
                    false if items.is_empty() => blocked.clone(),
                    false => items
                        .iter()
                        .filter(|j| blocked.contains(j))
                        .cloned()
                        .collect(),
                };
                let after: Vec<String> = match block {
                    true => blocked.iter().chain(&changed).cloned().collect(),
                    false => blocked
                        .iter()
                        .filter(|j| !changed.contains(j))
                        .cloned()
                        .collect(),
                };
                if after.len() > MAX_BLOCKED {
                    return self.reply_error(
                        addr.0,
                        addr.1,
                        header,
                        StanzaCondition::ResourceConstraint,
                    );
                }
                let result = Bytes::from(iq_result(header).to_bytes(ns::CLIENT));
                if changed.is_empty() {
                    // nothing to write or to tell
                    return self.deliver(addr, result);
                }
                self.roster_change(addr, header, |r| {
                    r.deliver(addr, result);
                    r.block_list_change(bare, block, &items, changed, after);
                });
            }
            _ => self.reply_error(addr.0, addr.1, header, StanzaCondition::BadRequest),
        }
    }

    /// Within a roster change: `bare`'s block list becomes `after`, by
    /// blocking or unblocking `changed` (as asked: `items`). Its sessions
    /// that asked for the list are told; contacts subscribed to `bare`'s
    /// presence see it go away when blocked, and come back when unblocked.
    fn block_list_change(
        &mut self,
        bare: &str,
        block: bool,
        items: &[String],
        changed: Vec<String>,
        after: Vec<String>,
    ) {
        self.roster_changing(bare);
        self.rosters.set_blocked(bare, after);
        let user = address::local(bare).unwrap_or_default().to_owned();
        self.record_write(match block {
            true => RosterWrite::Block {
                user,
                jids: changed.clone(),
            },
            false => RosterWrite::Unblock {
                user,
                jids: items.to_vec(),
            },
        });
        // XEP-0191 §3.3, §3.4: the push names what was asked (an empty
        // unblock: everything)
        let name = if block { "block" } else { "unblock" };
        let push = items.iter().fold(Element::new(name, ns::BLOCKING), |p, j| {
            p.with_child(Element::new("item", ns::BLOCKING).with_attr("jid", j.clone()))
        });
        let pushed: Vec<(SessionAddr, String)> = self
            .table
            .resources(bare)
            .iter()
            .filter(|r| r.blocklist)
            .map(|r| ((r.node, r.sid), format!("{bare}/{}", r.resource)))
            .collect();
        self.push_counter += 1;
        for (addr, full) in pushed {
            let iq = Element::new("iq", ns::CLIENT)
                .with_attr("type", "set")
                .with_attr("id", format!("push-{}", self.push_counter))
                .with_attr("to", full)
                .with_child(push.clone());
            self.deliver(addr, Bytes::from(iq.to_bytes(ns::CLIENT)));
        }
        // Contacts that saw the user's presence: a blocked one sees the
        // user go offline; an unblocked one gets the presence again.
        let contacts: Vec<String> = self
            .rosters
            .items(bare)
            .filter(|i| i.subscription.from())
            .map(|i| i.jid.to_owned())
            .filter(|c| {
                changed
                    .iter()
                    .any(|j| block_list::matches(std::slice::from_ref(j), c))
            })
            .collect();
        for contact in contacts {
            self.presence_of_to(bare, &contact, block);
        }
    }
}

/// The JIDs of a `<block/>` or `<unblock/>`, normalized; `jid-malformed`
/// if one is not a JID, `bad-request` if an item has none.
fn items(request: &Element) -> Result<Vec<String>, StanzaCondition> {
    let mut jids = Vec::new();
    for item in request.elements() {
        if item.name != "item" || item.ns != ns::BLOCKING {
            continue;
        }
        let raw = item.attr("jid").ok_or(StanzaCondition::BadRequest)?;
        let jid = Jid::new(raw).map_err(|_| StanzaCondition::JidMalformed)?;
        let jid = jid.to_string();
        if !jids.contains(&jid) {
            jids.push(jid);
        }
        if jids.len() > MAX_BLOCKED {
            return Err(StanzaCondition::ResourceConstraint);
        }
    }
    Ok(jids)
}
