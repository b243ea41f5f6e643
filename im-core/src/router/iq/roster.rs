//! Roster gets and sets (RFC 6121 §2.1, §2.3–2.5, XEP-0237 versioning).

use bytes::Bytes;
use cm_protocol::RouteHeader;
use jid::BareJid;
use xmpp_stream::element::Element;
use xmpp_stream::{StanzaCondition, ns};

use super::iq_result;
use crate::router::Router;
use crate::router::subscriptions::{SubType, item_element};
use crate::routing::SessionAddr;
use crate::storage::RosterItem;

/// Most groups per item, and most characters in a name or group.
const MAX_GROUPS: usize = 32;
const MAX_TEXT: usize = 1023;

impl Router {
    /// Answers a roster get or set from `addr` (RFC 6121 §2.1, §2.3–2.5).
    pub(in crate::router) fn roster_iq(
        &mut self,
        addr: SessionAddr,
        header: &RouteHeader,
        query: &Element,
        bare: &str,
    ) {
        let set = header.stanza_type.as_deref() == Some("set");
        if !set {
            if let Some(r) = self.table.route_mut(addr.0, addr.1) {
                r.interested = true;
            }
            let Some(roster) = self.rosters.get(bare) else {
                return self.reply_error(
                    addr.0,
                    addr.1,
                    header,
                    StanzaCondition::InternalServerError,
                );
            };
            let version = roster.version().to_string();
            let mut reply = iq_result(header);
            // XEP-0237: an up-to-date client gets an empty result.
            if query.attr("ver") != Some(version.as_str()) {
                let mut q = Element::new("query", ns::ROSTER).with_attr("ver", version);
                for item in roster.listed() {
                    q = q.with_child(item_element(&item));
                }
                reply = reply.with_child(q);
            }
            return self.deliver(addr, Bytes::from(reply.to_bytes(ns::CLIENT)));
        }
        // The result and the pushes go out once the writes commit; if they
        // fail, the change is undone and the set answered with an error.
        self.roster_change(addr, header, |r| match r.roster_set(bare, query) {
            Ok(()) => r.deliver(addr, Bytes::from(iq_result(header).to_bytes(ns::CLIENT))),
            Err(condition) => r.reply_error(addr.0, addr.1, header, condition),
        });
    }

    /// A roster set (RFC 6121 §2.3, §2.5) from `bare`: adds, changes or
    /// removes one item (a removal cancels the subscriptions first).
    pub(super) fn roster_set(
        &mut self,
        bare: &str,
        query: &Element,
    ) -> Result<(), StanzaCondition> {
        let mut items = query.elements().filter(|e| e.name == "item");
        let (Some(item), None) = (items.next(), items.next()) else {
            return Err(StanzaCondition::BadRequest);
        };
        let contact = item
            .attr("jid")
            .and_then(|j| BareJid::new(j).ok())
            .ok_or(StanzaCondition::BadRequest)?
            .to_string();
        let roster = self
            .rosters
            .get(bare)
            .ok_or(StanzaCondition::InternalServerError)?;
        if item.attr("subscription") == Some("remove") {
            let Some(old) = roster.item(&contact) else {
                return Err(StanzaCondition::ItemNotFound);
            };
            // RFC 6121 §2.5.2: cancel both directions first.
            if old.subscription.to() || old.ask {
                self.subscription_out(bare, &contact, SubType::Unsubscribe);
            }
            if old.subscription.from() || old.pending_in {
                self.subscription_out(bare, &contact, SubType::Unsubscribed);
            }
            self.remove_item(bare, &contact);
            return Ok(());
        }
        let name = item.attr("name").filter(|n| !n.is_empty());
        let groups: Vec<String> = item
            .elements()
            .filter(|g| g.name == "group")
            .map(|g| g.text())
            .collect();
        let mut unique = groups.clone();
        unique.sort();
        unique.dedup();
        if name.is_some_and(|n| n.len() > MAX_TEXT)
            || groups.len() > MAX_GROUPS
            || unique.len() != groups.len()
            || groups.iter().any(|g| g.is_empty() || g.len() > MAX_TEXT)
        {
            return Err(StanzaCondition::NotAcceptable);
        }
        let mut entry = roster.item(&contact).unwrap_or(RosterItem {
            jid: contact.clone(),
            ..Default::default()
        });
        entry.name = name.map(str::to_owned);
        entry.groups = groups;
        entry.listed = true;
        if !roster.fits(&entry) {
            return Err(StanzaCondition::ResourceConstraint);
        }
        self.put_item(bare, entry);
        Ok(())
    }
}
