//! Personal eventing requests (XEP-0163 over XEP-0060): publishing with
//! publish options, retracting, creating, configuring and deleting one's
//! own nodes, and reading anyone's items the node's access model allows.
//! Each becomes a storage query; the notifications of a change go out once
//! it is stored (`router/pep.rs`). Explicit subscriptions are not served:
//! PEP notifies by presence and `+notify` (§4.3).

use bytes::Bytes;
use cm_protocol::RouteHeader;
use jid::Jid;
use xmpp_stream::element::Element;
use xmpp_stream::{StanzaCondition, ns};

use crate::address;
use crate::router::pep::PepRelation;
use crate::router::{Query, Router};
use crate::routing::SessionAddr;
use crate::storage::{MAX_PEP_ITEMS, PepAccess, PepItem, PepOptions};

/// Most bytes of one item's payload.
pub const MAX_ITEM_BYTES: usize = 256 * 1024;
/// Longest node name or item id.
pub const MAX_NAME_BYTES: usize = 1023;

impl Router {
    /// A `<pubsub/>` request (either namespace) to `to` (none: one's own
    /// account).
    pub(in crate::router) fn pep_iq(
        &mut self,
        addr: SessionAddr,
        header: &RouteHeader,
        pubsub: &Element,
        to: Option<&Jid>,
        sender_bare: &str,
    ) {
        let owner_bare = to.map_or_else(|| sender_bare.to_owned(), |j| j.to_bare().to_string());
        let own = owner_bare == sender_bare;
        let get = header.stanza_type.as_deref() == Some("get");
        let refuse = |r: &mut Router, condition, app: Option<(&str, &str)>| {
            r.pubsub_error(addr, header, condition, app)
        };
        let Some(op) = pubsub.elements().next() else {
            return refuse(self, StanzaCondition::BadRequest, None);
        };
        let Some(node) = op.attr("node").filter(|n| !n.is_empty()) else {
            return refuse(
                self,
                StanzaCondition::BadRequest,
                Some(("nodeid-required", "")),
            );
        };
        if node.len() > MAX_NAME_BYTES {
            return refuse(self, StanzaCondition::NotAcceptable, None);
        }
        let node = node.to_owned();
        let user = address::local(&owner_bare).unwrap_or_default().to_owned();
        let (requester, iq_id) = (header.from.clone(), header.id.clone().unwrap_or_default());
        let owner_ns = pubsub.ns == ns::PUBSUB_OWNER;
        if !get && !own {
            return refuse(self, StanzaCondition::Forbidden, None);
        }
        let query = match (owner_ns, op.name.as_str(), get) {
            (false, "items", true) => {
                let relation = if own {
                    PepRelation::Owner
                } else if self
                    .rosters
                    .items(sender_bare)
                    .any(|i| i.jid == owner_bare && i.subscription.to())
                {
                    PepRelation::Subscriber
                } else {
                    PepRelation::Other
                };
                Query::PepItems {
                    owner: user,
                    node,
                    ids: {
                        let mut ids: Vec<String> = op
                            .elements()
                            .filter(|e| e.name == "item")
                            .filter_map(|e| e.attr("id"))
                            .map(str::to_owned)
                            .collect();
                        ids.sort_unstable();
                        ids.dedup();
                        ids
                    },
                    max: op.attr("max_items").and_then(|m| m.parse().ok()),
                    relation,
                    from: (!own).then_some(owner_bare),
                    requester,
                    iq_id,
                }
            }
            (_, _, true) if !own => return refuse(self, StanzaCondition::Forbidden, None),
            (false, "publish", false) => {
                let items: Vec<&Element> = op.elements().filter(|e| e.name == "item").collect();
                let [item] = items[..] else {
                    return refuse(
                        self,
                        StanzaCondition::BadRequest,
                        Some(("item-required", "")),
                    );
                };
                let payloads: Vec<&Element> = item.elements().collect();
                let [payload] = payloads[..] else {
                    return refuse(
                        self,
                        StanzaCondition::BadRequest,
                        Some(("invalid-payload", "")),
                    );
                };
                let id = item.attr("id").unwrap_or_default();
                let payload = payload.to_bytes("");
                if payload.len() > MAX_ITEM_BYTES || id.len() > MAX_NAME_BYTES {
                    return refuse(
                        self,
                        StanzaCondition::NotAcceptable,
                        Some(("payload-too-big", "")),
                    );
                }
                let form = pubsub
                    .child("publish-options", ns::PUBSUB)
                    .and_then(|o| o.child("x", ns::DATA));
                let Some(options) = options_of(form) else {
                    // (an option this server cannot meet)
                    return refuse(
                        self,
                        StanzaCondition::Conflict,
                        Some(("precondition-not-met", "")),
                    );
                };
                Query::PepPublish {
                    user,
                    node,
                    item: PepItem {
                        id: id.to_owned(),
                        payload: Bytes::from(payload),
                    },
                    options,
                    requester,
                    iq_id,
                }
            }
            (false, "retract", false) => {
                let Some(item_id) = op
                    .elements()
                    .find(|e| e.name == "item")
                    .and_then(|e| e.attr("id"))
                else {
                    return refuse(
                        self,
                        StanzaCondition::BadRequest,
                        Some(("item-required", "")),
                    );
                };
                Query::PepRetract {
                    user,
                    node,
                    item_id: item_id.to_owned(),
                    notify: matches!(op.attr("notify"), Some("true" | "1")),
                    requester,
                    iq_id,
                }
            }
            (false, "create", false) | (true, "configure", false) => {
                let create = op.name == "create";
                let form = match create {
                    true => pubsub.child("configure", ns::PUBSUB),
                    false => Some(op),
                }
                .and_then(|c| c.child("x", ns::DATA));
                let Some(options) = options_of(form) else {
                    return refuse(self, StanzaCondition::NotAcceptable, None);
                };
                Query::PepConfigure {
                    user,
                    node,
                    options,
                    create,
                    requester,
                    iq_id,
                }
            }
            (true, "configure", true) => Query::PepConfigGet {
                user,
                node,
                requester,
                iq_id,
            },
            (true, "delete", false) => Query::PepDelete {
                user,
                node,
                requester,
                iq_id,
            },
            (_, other, _) => {
                // (explicit subscriptions, affiliations, purge: not served)
                let feature = match other {
                    "subscribe" | "unsubscribe" | "options" => "subscribe",
                    "subscriptions" => "retrieve-subscriptions",
                    "affiliations" => "retrieve-affiliations",
                    "purge" => "purge-nodes",
                    _ => return refuse(self, StanzaCondition::BadRequest, None),
                };
                return refuse(
                    self,
                    StanzaCondition::FeatureNotImplemented,
                    Some(("unsupported", feature)),
                );
            }
        };
        self.query(addr, header, query);
    }

    /// Answers `header`'s IQ with `condition` and a pubsub application
    /// condition (`app`: its name and the `feature` it names, if any).
    fn pubsub_error(
        &mut self,
        addr: SessionAddr,
        header: &RouteHeader,
        condition: StanzaCondition,
        app: Option<(&str, &str)>,
    ) {
        let Some((name, feature)) = app else {
            return self.reply_error(addr.0, addr.1, header, condition);
        };
        let reply = pubsub_error(
            header.to.as_deref().unwrap_or(&self.domain),
            &header.from,
            header.id.as_deref().unwrap_or_default(),
            condition,
            name,
            feature,
        );
        self.stats.errors += 1;
        self.deliver(addr, reply);
    }
}

/// An IQ error with a pubsub application condition (XEP-0060 §7, §6.5).
pub fn pubsub_error(
    from: &str,
    to: &str,
    id: &str,
    condition: StanzaCondition,
    app: &str,
    feature: &str,
) -> Bytes {
    let mut app = Element::new(app, ns::PUBSUB_ERRORS);
    if !feature.is_empty() {
        app.set_attr("feature", feature);
    }
    let error = Element::new("error", ns::CLIENT)
        .with_attr("type", condition.error_type())
        .with_child(Element::new(condition.name(), ns::STANZA_ERRORS))
        .with_child(app);
    let iq = Element::new("iq", ns::CLIENT)
        .with_attr("type", "error")
        .with_attr("from", from)
        .with_attr("to", to)
        .with_attr("id", id)
        .with_child(error);
    Bytes::from(iq.to_bytes(ns::CLIENT))
}

/// The configuration fields a publish-options or node configuration form
/// sets (`pubsub#access_model`, `pubsub#max_items`; others are accepted
/// and not kept). None: a value this server does not serve.
pub fn options_of(form: Option<&Element>) -> Option<PepOptions> {
    let mut options = PepOptions::default();
    let Some(form) = form else {
        return Some(options);
    };
    for field in form.elements().filter(|f| f.name == "field") {
        let value = field
            .child("value", ns::DATA)
            .map(|v| v.text())
            .unwrap_or_default();
        match field.attr("var") {
            Some("pubsub#access_model") => {
                options.access = Some(PepAccess::parse(value.trim())?);
            }
            Some("pubsub#max_items") => {
                let max = match value.trim() {
                    "max" => MAX_PEP_ITEMS,
                    n => n.parse::<u32>().ok()?.min(MAX_PEP_ITEMS),
                };
                if max == 0 {
                    return None;
                }
                options.max_items = Some(max);
            }
            _ => {}
        }
    }
    Some(options)
}

/// A node configuration form (`pubsub#owner` `<configure/>`'s content).
pub fn config_form(access: PepAccess, max_items: u32) -> Element {
    let field = |var: &str, kind: &str, value: String| {
        Element::new("field", ns::DATA)
            .with_attr("var", var)
            .with_attr("type", kind)
            .with_child(Element::new("value", ns::DATA).with_text(value))
    };
    let mut access_field = field("pubsub#access_model", "list-single", access.name().into());
    for model in ["open", "presence", "whitelist"] {
        access_field = access_field.with_child(
            Element::new("option", ns::DATA)
                .with_child(Element::new("value", ns::DATA).with_text(model)),
        );
    }
    Element::new("x", ns::DATA)
        .with_attr("type", "form")
        .with_child(field("FORM_TYPE", "hidden", ns::PUBSUB_NODE_CONFIG.into()))
        .with_child(access_field)
        .with_child(field(
            "pubsub#max_items",
            "text-single",
            max_items.to_string(),
        ))
}
