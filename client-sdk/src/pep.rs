//! Personal eventing (XEP-0163) for the app: publishing to the account's
//! own nodes, reading anyone's (as their access model allows), and the
//! notifications of the nodes named in [`crate::ConnectOptions::notify`].
//!
//! The server sends a session a node's notifications only if the session's
//! entity capabilities (XEP-0115) list `NODE+notify`: the SDK shows its
//! capabilities in every presence it sends and answers the server's
//! disco#info question about them.

use xmpp_stream::caps::verification_string;
use xmpp_stream::element::Element;
use xmpp_stream::ns;

use crate::{Client, ClientError};

/// The node (software URI) the SDK's capabilities name.
pub const CAPS_NODE: &str = "https://longlink.invalid/sdk";

/// One item of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PepItem {
    /// Its id.
    pub id: String,
    /// Its payload (none in a notification of a node configured without
    /// payloads).
    pub payload: Option<Element>,
}

/// A notification of a change to a contact's (or one's own) node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PepEvent {
    /// The node's owner (a bare JID).
    pub from: String,
    /// The node.
    pub node: String,
    /// Items published.
    pub items: Vec<PepItem>,
    /// Ids of items retracted.
    pub retracted: Vec<String>,
    /// The node was deleted.
    pub deleted: bool,
}

/// Who may read a node (`pubsub#access_model`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone (what OMEMO device lists and bundles use).
    Open,
    /// Contacts subscribed to your presence (the default).
    Presence,
    /// Only you (bookmarks).
    Whitelist,
}

impl Access {
    fn name(self) -> &'static str {
        match self {
            Access::Open => "open",
            Access::Presence => "presence",
            Access::Whitelist => "whitelist",
        }
    }
}

/// A node's configuration to publish with (as preconditions: a node
/// configured otherwise refuses the publish with `conflict`) or to set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeOptions {
    /// Who may read it.
    pub access: Option<Access>,
    /// How many items it keeps (`None`: the server's default, 1); the
    /// server's most if larger.
    pub max_items: Option<u32>,
}

impl NodeOptions {
    /// The data form, `FORM_TYPE` `form_type`; none if nothing is set.
    fn form(&self, form_type: &str) -> Option<Element> {
        if self.access.is_none() && self.max_items.is_none() {
            return None;
        }
        let field = |var: &str, value: &str| {
            Element::new("field", ns::DATA)
                .with_attr("var", var)
                .with_child(Element::new("value", ns::DATA).with_text(value))
        };
        let mut x = Element::new("x", ns::DATA)
            .with_attr("type", "submit")
            .with_child(field("FORM_TYPE", form_type).with_attr("type", "hidden"));
        if let Some(a) = self.access {
            x = x.with_child(field("pubsub#access_model", a.name()));
        }
        if let Some(m) = self.max_items {
            x = x.with_child(field("pubsub#max_items", &m.to_string()));
        }
        Some(x)
    }
}

/// The SDK's disco#info with `+notify` for each of `notify`'s nodes.
pub(crate) fn client_info(notify: &[String]) -> Element {
    let mut q = Element::new("query", ns::DISCO_INFO).with_child(
        Element::new("identity", ns::DISCO_INFO)
            .with_attr("category", "client")
            .with_attr("type", "phone")
            .with_attr("name", "longlink"),
    );
    let mut vars: Vec<String> = vec![ns::CAPS.into(), ns::DISCO_INFO.into(), ns::PING.into()];
    vars.extend(notify.iter().map(|n| format!("{n}+notify")));
    for var in vars {
        q = q.with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", var));
    }
    q
}

/// The `<c/>` a presence shows for `notify`.
pub(crate) fn caps_element(notify: &[String]) -> Element {
    Element::new("c", ns::CAPS)
        .with_attr("hash", "sha-1")
        .with_attr("node", CAPS_NODE)
        .with_attr("ver", verification_string(&client_info(notify)))
}

/// The answer to a disco#info `get` asked of the session, if `iq` is one.
pub(crate) fn disco_answer(iq: &Element, notify: &[String]) -> Option<Element> {
    if iq.name != "iq" || iq.attr("type") != Some("get") {
        return None;
    }
    let query = iq.child("query", ns::DISCO_INFO)?;
    let mut info = client_info(notify);
    if let Some(node) = query.attr("node") {
        // only the node of the capabilities shown is known
        if node != format!("{CAPS_NODE}#{}", verification_string(&info)) {
            return None;
        }
        info.set_attr("node", node);
    }
    let mut reply = Element::new("iq", ns::CLIENT)
        .with_attr("type", "result")
        .with_attr("id", iq.attr("id").unwrap_or_default())
        .with_child(info);
    if let Some(from) = iq.attr("from") {
        reply.set_attr("to", from);
    }
    Some(reply)
}

/// The notification a message carries, if any (from a bare JID only: a
/// node belongs to an account).
pub(crate) fn event_of(message: &Element) -> Option<PepEvent> {
    let event = message.child("event", ns::PUBSUB_EVENT)?;
    let from = message.attr("from").filter(|f| !f.contains('/'))?;
    let mut out = PepEvent {
        from: from.to_owned(),
        node: String::new(),
        items: Vec::new(),
        retracted: Vec::new(),
        deleted: false,
    };
    for e in event.elements() {
        out.node = e.attr("node").unwrap_or_default().to_owned();
        match e.name.as_str() {
            "items" => {
                for i in e.elements() {
                    let id = i.attr("id").unwrap_or_default().to_owned();
                    match i.name.as_str() {
                        "item" => out.items.push(PepItem {
                            id,
                            payload: i.elements().next().cloned(),
                        }),
                        "retract" => out.retracted.push(id),
                        _ => {}
                    }
                }
            }
            "delete" => out.deleted = true,
            _ => {}
        }
    }
    Some(out)
}

impl Client {
    /// Publishes `payload` as item `id` (the server makes one up if none)
    /// of your node `node`, creating the node with `options` if it does
    /// not exist; the item's id. Contacts whose apps want the node (and
    /// your other sessions) are notified, as the node's access allows.
    pub async fn publish(
        &self,
        node: &str,
        id: Option<&str>,
        payload: Element,
        options: &NodeOptions,
    ) -> Result<String, ClientError> {
        let mut item = Element::new("item", ns::PUBSUB).with_child(payload);
        if let Some(id) = id {
            item.set_attr("id", id);
        }
        let mut pubsub = Element::new("pubsub", ns::PUBSUB).with_child(
            Element::new("publish", ns::PUBSUB)
                .with_attr("node", node)
                .with_child(item),
        );
        if let Some(form) = options.form(ns::PUBSUB_PUBLISH_OPTIONS) {
            pubsub =
                pubsub.with_child(Element::new("publish-options", ns::PUBSUB).with_child(form));
        }
        let result = self.request_to("set", None, pubsub).await?;
        Ok(result
            .child("pubsub", ns::PUBSUB)
            .and_then(|p| p.child("publish", ns::PUBSUB))
            .and_then(|p| p.child("item", ns::PUBSUB))
            .and_then(|i| i.attr("id"))
            .or(id)
            .unwrap_or_default()
            .to_owned())
    }

    /// The items of `owner`'s node `node` (yours if `owner` is none): the
    /// newest `max` (all if none), oldest first.
    pub async fn pep_items(
        &self,
        owner: Option<&str>,
        node: &str,
        max: Option<u32>,
    ) -> Result<Vec<PepItem>, ClientError> {
        let mut items = Element::new("items", ns::PUBSUB).with_attr("node", node);
        if let Some(max) = max {
            items.set_attr("max_items", max.to_string());
        }
        let pubsub = Element::new("pubsub", ns::PUBSUB).with_child(items);
        let result = self.request_to("get", owner, pubsub).await?;
        Ok(result
            .child("pubsub", ns::PUBSUB)
            .and_then(|p| p.child("items", ns::PUBSUB))
            .map(|items| {
                items
                    .elements()
                    .filter(|i| i.name == "item")
                    .map(|i| PepItem {
                        id: i.attr("id").unwrap_or_default().to_owned(),
                        payload: i.elements().next().cloned(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Removes item `id` of your node `node`; readers are told if `notify`.
    pub async fn retract(&self, node: &str, id: &str, notify: bool) -> Result<(), ClientError> {
        let mut retract = Element::new("retract", ns::PUBSUB)
            .with_attr("node", node)
            .with_child(Element::new("item", ns::PUBSUB).with_attr("id", id));
        if notify {
            retract.set_attr("notify", "true");
        }
        let pubsub = Element::new("pubsub", ns::PUBSUB).with_child(retract);
        self.request_to("set", None, pubsub).await.map(drop)
    }

    /// Changes your node `node`'s configuration.
    pub async fn configure_node(
        &self,
        node: &str,
        options: &NodeOptions,
    ) -> Result<(), ClientError> {
        let mut configure = Element::new("configure", ns::PUBSUB_OWNER).with_attr("node", node);
        if let Some(form) = options.form(ns::PUBSUB_NODE_CONFIG) {
            configure = configure.with_child(form);
        }
        let pubsub = Element::new("pubsub", ns::PUBSUB_OWNER).with_child(configure);
        self.request_to("set", None, pubsub).await.map(drop)
    }

    /// Deletes your node `node` and its items; readers are told.
    pub async fn delete_node(&self, node: &str) -> Result<(), ClientError> {
        let pubsub = Element::new("pubsub", ns::PUBSUB_OWNER)
            .with_child(Element::new("delete", ns::PUBSUB_OWNER).with_attr("node", node));
        self.request_to("set", None, pubsub).await.map(drop)
    }
}
