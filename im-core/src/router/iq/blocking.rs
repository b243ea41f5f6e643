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
use crate::router::subscriptions::presence_stanza;
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
                // (`blocked` is sorted; `changed` is made so)
                let listed = |j: &String| blocked.binary_search(j).is_ok();
                let mut changed: Vec<String> = match block {
                    true => items.iter().filter(|j| !listed(j)).cloned().collect(),
                    // (an empty unblock unblocks everything)
                    false if items.is_empty() => blocked.clone(),
                    false => items.iter().filter(|j| listed(j)).cloned().collect(),
                };
                changed.sort();
                let after: Vec<String> = match block {
                    true => blocked.iter().chain(&changed).cloned().collect(),
                    false => blocked
                        .iter()
                        .filter(|j| changed.binary_search(j).is_err())
                        .cloned()
                        .collect(),
                };
                if !block_list::fits(&after) {
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
        self.presence_after_block(bare, block, changed);
    }

    /// The presence a block list change implies (XEP-0191 §3.3, §3.4), for
    /// the roster contacts `changed` names (by any form, or a full JID of
    /// theirs): on a block, a contact subscribed to the user sees the user
    /// go unavailable (at the blocked resources only, for a full-JID
    /// item), and the user's sessions see the contact's local sessions go
    /// unavailable; on an unblock, presence flows again where neither side
    /// still blocks the other (the contact's by a probe if another core
    /// serves it).
    fn presence_after_block(&mut self, bare: &str, block: bool, mut changed: Vec<String>) {
        changed.sort();
        let mut changed_bares: Vec<&str> = changed
            .iter()
            .filter(|j| address::resource(j).is_some())
            .map(|j| address::bare(j))
            .collect();
        changed_bares.sort_unstable();
        let touched: Vec<(String, bool, bool)> = self
            .rosters
            .items(bare)
            .filter(|i| i.subscription.from() || i.subscription.to())
            .filter(|i| {
                block_list::matches(&changed, i.jid) || changed_bares.binary_search(&i.jid).is_ok()
            })
            .map(|i| (i.jid.to_owned(), i.subscription.from(), i.subscription.to()))
            .collect();
        let fulls: Vec<String> = self
            .table
            .resources(bare)
            .iter()
            .filter(|r| r.available)
            .map(|r| format!("{bare}/{}", r.resource))
            .collect();
        for (contact, from, to) in touched {
            if from {
                if !block || self.blocks(bare, &contact) {
                    // (an available presence goes only where nobody blocks)
                    match block {
                        true => self.unavailable_at_block(bare, &contact),
                        false => self.presence_of_to(bare, &contact, false),
                    }
                } else {
                    // only some of the contact's resources are blocked
                    // (none to a contact that blocks the user: it said its
                    // last word)
                    for item in changed.iter().filter(|j| address::bare(j) == contact) {
                        for full in &fulls {
                            if self.blocks(&contact, full) {
                                continue;
                            }
                            let stanza = presence_stanza(full, item, "unavailable");
                            self.send_to_jid(item, full, stanza);
                        }
                    }
                }
            }
            if to {
                self.contact_presence_to_user(bare, &contact, &fulls, block);
            }
        }
    }

    /// The presence of `contact`'s sessions for the user's available
    /// sessions (`fulls`): unavailable ones on a block (of local sessions:
    /// another core's are not known here), the current ones on an unblock
    /// (asked for by a probe if another core serves the contact).
    fn contact_presence_to_user(
        &mut self,
        bare: &str,
        contact: &str,
        fulls: &[String],
        block: bool,
    ) {
        if !self.serves(contact) {
            if !block && !self.blocks(bare, contact) {
                for full in fulls {
                    let probe = presence_stanza(full, contact, "probe");
                    self.send_to_peer(contact, cm_protocol::Kind::Presence, full, probe);
                }
            }
            return;
        }
        let mut out = Vec::new();
        for full in fulls {
            let Some((user_bare, res)) = address::split_full(full) else {
                continue;
            };
            let Some(to) = self.table.full(user_bare, res).map(|r| (r.node, r.sid)) else {
                continue;
            };
            for r in self.table.resources(contact).iter().filter(|r| r.available) {
                let stanza = match block {
                    // (only the sessions the user now blocks, and none
                    // that blocks the user: it said its last word)
                    true if !self.blocks(bare, &format!("{contact}/{}", r.resource))
                        || self.blocks(contact, full) =>
                    {
                        continue;
                    }
                    true => {
                        presence_stanza(&format!("{contact}/{}", r.resource), full, "unavailable")
                    }
                    false if self.blocked_pair(full, contact, r) => continue,
                    false => match &r.presence {
                        Some(p) => p.clone(),
                        None => continue,
                    },
                };
                out.push((to, stanza));
            }
        }
        for (to, stanza) in out {
            self.deliver(to, stanza);
        }
    }
}

/// The JIDs of a `<block/>` or `<unblock/>`, normalized; `jid-malformed`
/// if one is not a JID, `bad-request` if an item has none.
fn items(request: &Element) -> Result<Vec<String>, StanzaCondition> {
    let mut jids = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for item in request.elements() {
        if item.name != "item" || item.ns != ns::BLOCKING {
            continue;
        }
        let raw = item.attr("jid").ok_or(StanzaCondition::BadRequest)?;
        let jid = Jid::new(raw).map_err(|_| StanzaCondition::JidMalformed)?;
        let jid = jid.to_string();
        if seen.insert(jid.clone()) {
            jids.push(jid);
        }
        if jids.len() > MAX_BLOCKED {
            return Err(StanzaCondition::ResourceConstraint);
        }
    }
    Ok(jids)
}
