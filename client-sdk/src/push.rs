//! Push notifications (XEP-0357) for the app: registering the device with
//! an app server so the server wakes it while it is away.
//!
//! The app gets a device token (APNs, FCM, a UnifiedPush endpoint…) from
//! the platform and hands it, with whatever the app server needs to check
//! the request (a secret), to [`Client::enable_push`] as publish-options
//! fields. From then on, while no session of the account is available
//! (none, or only detached ones), the server publishes a short summary
//! (the count of messages waiting, and the last sender or body only if the
//! server is configured to say them) to `node` at the app server, which
//! wakes the device; the app then connects and reads its messages.
//! [`Client::disable_push`] stops it (at logout, or when the token
//! changes). Registrations are stored by the server and outlive sessions
//! and restarts.
//!
//! ```no_run
//! # async fn demo(client: &client_sdk::Client) -> Result<(), client_sdk::push::PushError> {
//! if client.push_supported().await? {
//!     client
//!         .enable_push("push.example.org", "device-7f3a", &[("secret", "s3cret")])
//!         .await?;
//! }
//! # Ok(()) }
//! ```

use xmpp_stream::element::Element;
use xmpp_stream::ns;

use crate::event::bare;
use crate::{Client, ClientError};

/// `urn:xmpp:push:0`: the namespace of `<enable/>` and `<disable/>`, and
/// the feature an account offering push lists in its disco#info.
pub const PUSH: &str = "urn:xmpp:push:0";

/// Longest node the server takes (bytes).
pub const MAX_NODE_BYTES: usize = 1023;

/// Why enabling or disabling push failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The account does not offer push notifications: its disco#info does
    /// not list `urn:xmpp:push:0`, or the server answered
    /// `service-unavailable` (no app server is configured there).
    #[error("the account does not offer push notifications (urn:xmpp:push:0)")]
    NotSupported,
    /// The server cannot reach this app server (`remote-server-not-found`:
    /// the server only publishes to app servers connected to it as
    /// components).
    #[error("the server cannot reach the app server {0}")]
    AppServerUnreachable(String),
    /// The request is invalid; caught before sending (an empty JID or
    /// node, a node too long, a field named `FORM_TYPE` or with no name),
    /// or refused by the server (`bad-request`, `not-acceptable`: the
    /// publish-options are too large).
    #[error("invalid push request: {0}")]
    Invalid(String),
    /// The server refused with another stanza error condition.
    #[error("push request refused: {0}")]
    Refused(String),
    /// The session failed (closed, disconnected, timed out).
    #[error(transparent)]
    Client(ClientError),
}

impl From<ClientError> for PushError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::StanzaError(condition) => match condition.as_str() {
                "service-unavailable" | "feature-not-implemented" => PushError::NotSupported,
                "bad-request" | "not-acceptable" => PushError::Invalid(condition),
                _ => PushError::Refused(condition),
            },
            other => PushError::Client(other),
        }
    }
}

impl Client {
    /// Whether the account offers push notifications: its disco#info (a
    /// request to the own bare JID) lists `urn:xmpp:push:0`.
    pub async fn push_supported(&self) -> Result<bool, ClientError> {
        let own = bare(self.jid()).to_owned();
        let info = self
            .request_to("get", Some(&own), Element::new("query", ns::DISCO_INFO))
            .await?;
        Ok(info.child("query", ns::DISCO_INFO).is_some_and(|q| {
            q.elements()
                .any(|f| f.name == "feature" && f.attr("var") == Some(PUSH))
        }))
    }

    /// Registers this device with the app server `app_server` (its push
    /// service's JID, e.g. `push.example.org`) under `node` (the app
    /// server's name for the device); `publish_options` are the fields,
    /// `(name, value)`, of the publish-options form the server sends along
    /// with every notification (what the app server needs: a secret, a
    /// token, an endpoint; none: no form). Enabling the same app server and
    /// node again replaces the registration. Checks
    /// [`Client::push_supported`] first ([`PushError::NotSupported`]).
    pub async fn enable_push(
        &self,
        app_server: &str,
        node: &str,
        publish_options: &[(&str, &str)],
    ) -> Result<(), PushError> {
        check_jid(app_server)?;
        check_node(node)?;
        for (name, _) in publish_options {
            if name.is_empty() || *name == "FORM_TYPE" {
                return Err(PushError::Invalid(format!(
                    "publish-options field name {name:?}"
                )));
            }
        }
        if !self.push_supported().await? {
            return Err(PushError::NotSupported);
        }
        let mut enable = Element::new("enable", PUSH)
            .with_attr("jid", app_server)
            .with_attr("node", node);
        if !publish_options.is_empty() {
            enable = enable.with_child(publish_options_form(publish_options));
        }
        match self.request_to("set", None, enable).await {
            Ok(_) => Ok(()),
            Err(ClientError::StanzaError(c)) if c == "remote-server-not-found" => {
                Err(PushError::AppServerUnreachable(app_server.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Stops notifications to `node` of `app_server`, or (`None`) to every
    /// node of it. Disabling what is not registered succeeds.
    pub async fn disable_push(
        &self,
        app_server: &str,
        node: Option<&str>,
    ) -> Result<(), PushError> {
        check_jid(app_server)?;
        if let Some(node) = node {
            check_node(node)?;
        }
        let mut disable = Element::new("disable", PUSH).with_attr("jid", app_server);
        if let Some(node) = node {
            disable.set_attr("node", node);
        }
        self.request_to("set", None, disable).await?;
        Ok(())
    }
}

/// An app server's JID, checked as the server will.
fn check_jid(jid: &str) -> Result<(), PushError> {
    jid::Jid::new(jid)
        .map(|_| ())
        .map_err(|e| PushError::Invalid(format!("app server JID {jid:?}: {e}")))
}

/// A node, checked as the server will (not empty, not too long).
fn check_node(node: &str) -> Result<(), PushError> {
    if node.is_empty() {
        return Err(PushError::Invalid("empty node".into()));
    }
    if node.len() > MAX_NODE_BYTES {
        return Err(PushError::Invalid(format!(
            "node of {} bytes (at most {MAX_NODE_BYTES})",
            node.len()
        )));
    }
    Ok(())
}

/// The publish-options form (`FORM_TYPE` hidden, then `fields`).
fn publish_options_form(fields: &[(&str, &str)]) -> Element {
    let field = |var: &str, value: &str| {
        Element::new("field", ns::DATA)
            .with_attr("var", var)
            .with_child(Element::new("value", ns::DATA).with_text(value))
    };
    fields.iter().fold(
        Element::new("x", ns::DATA)
            .with_attr("type", "submit")
            .with_child(field("FORM_TYPE", ns::PUBSUB_PUBLISH_OPTIONS).with_attr("type", "hidden")),
        |x, (var, value)| x.with_child(field(var, value)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_publish_options_form_has_its_form_type_first_then_the_fields() {
        let x = publish_options_form(&[("secret", "s3cret"), ("endpoint", "https://e/1")]);
        assert_eq!(x.attr("type"), Some("submit"));
        let fields: Vec<(String, String)> = x
            .elements()
            .map(|f| {
                (
                    f.attr("var").unwrap().to_owned(),
                    f.child("value", ns::DATA).unwrap().text(),
                )
            })
            .collect();
        assert_eq!(
            fields,
            [
                ("FORM_TYPE".into(), ns::PUBSUB_PUBLISH_OPTIONS.into()),
                ("secret".into(), "s3cret".into()),
                ("endpoint".into(), "https://e/1".into()),
            ]
        );
    }

    #[test]
    fn stanza_errors_map_to_typed_push_errors() {
        let e = |c: &str| PushError::from(ClientError::StanzaError(c.into()));
        assert_eq!(e("service-unavailable"), PushError::NotSupported);
        assert_eq!(
            e("not-acceptable"),
            PushError::Invalid("not-acceptable".into())
        );
        assert_eq!(e("forbidden"), PushError::Refused("forbidden".into()));
        assert_eq!(
            PushError::from(ClientError::Timeout),
            PushError::Client(ClientError::Timeout)
        );
    }

    #[test]
    fn bad_jids_and_nodes_are_caught_before_sending() {
        assert!(check_jid("push.example.org").is_ok());
        assert!(matches!(check_jid(""), Err(PushError::Invalid(_))));
        assert!(matches!(check_node(""), Err(PushError::Invalid(_))));
        let long = "n".repeat(MAX_NODE_BYTES + 1);
        assert!(matches!(check_node(&long), Err(PushError::Invalid(_))));
    }
}
