//! External components (XEP-0114, `jabber:component:accept`): app servers
//! for push notifications (XEP-0357), gateways and bots connect to the
//! core over plain TCP, authenticate with a shared secret, and then speak
//! for one domain of their own.
//!
//! - [`stream`]: one component's stream as a sans-IO state machine
//!   ([`stream::ComponentStream`]): bytes and the time in, actions out
//!   (bytes to write, stanzas received, the name it authenticated as, the
//!   stream's end).
//! - [`listener`]: the tokio side: the TCP listener on `component_listen`,
//!   a task per connection running the state machine, and the registry of
//!   connected components ([`ComponentLinks`]) whose queues towards them
//!   are bounded in bytes.
//!
//! The router's side is `router/components.rs`: stanzas from a client to a
//! component's domain go to it ([`crate::router::Action::ToComponent`]),
//! stanzas from it ([`crate::router::Input::FromComponent`]) are routed to
//! local users as a stanza from another server would be.
//!
//! Trust: a component is trusted for its own domain only. Its stanzas must
//! come `from` its domain (else its stream ends with `invalid-from`), and
//! the server claims it could forge for the server's own domain
//! (stanza-ids, delays, carbon wrappers, archive results) are cut, as from
//! a client.

pub mod listener;
pub mod stream;

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

pub use listener::{ComponentLinks, ComponentSetup, serve};

/// A component must complete its handshake within this after connecting.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections to the component listener at once, authenticated or not;
/// more are closed as they come.
pub const MAX_CONNECTIONS: usize = 64;
/// Bytes of stanzas queued towards one component before further ones are
/// refused (their senders get `resource-constraint`).
pub const QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// Sustained bytes a second read from one component (past the burst the
/// core stops reading until the budget refills: TCP slows the component).
pub const READ_RATE: u64 = 1024 * 1024;
/// Bytes a component may send at once before [`READ_RATE`] applies.
pub const READ_BURST: u64 = 4 * 1024 * 1024;
/// How long one write to a component may take; a component that does not
/// read for that long is disconnected.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// The shortest secret taken, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// One external component the core accepts (`components = [{ name, secret }]`
/// in its TOML).
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ComponentConfig {
    /// The component's domain (e.g. `push.example.org`), lowercase: the
    /// `to` of its stream header and the domain of every JID it speaks for.
    pub name: String,
    /// The shared secret of its handshake (at least
    /// [`MIN_SECRET_BYTES`] bytes).
    pub secret: String,
}

impl ComponentConfig {
    /// Component `name` with `secret`.
    pub fn new(name: &str, secret: &str) -> Self {
        Self {
            name: name.to_owned(),
            secret: secret.to_owned(),
        }
    }
}

impl fmt::Debug for ComponentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // (never the secret: configurations end up in logs)
        f.debug_struct("ComponentConfig")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Why the components' configuration is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ComponentConfigError {
    /// The name is not a domain (a JID with no local part or resource).
    #[error("component name {0:?} is not a domain")]
    NotADomain(String),
    /// The name is not written as the core compares domains (lowercase,
    /// nameprep).
    #[error("component name {name:?} must be written {normalized:?}")]
    NotNormalized {
        /// The name as configured.
        name: String,
        /// How it must be written.
        normalized: String,
    },
    /// The name is the server's domain or one of its own services'.
    #[error("component name {name:?} is taken by {by}")]
    Reserved {
        /// The name.
        name: String,
        /// What has it.
        by: &'static str,
    },
    /// Two components have one name.
    #[error("component {0:?} is configured twice")]
    Duplicate(String),
    /// The secret is too short to resist guessing.
    #[error(
        "the secret of component {name:?} has {len} bytes; at least {MIN_SECRET_BYTES} are needed"
    )]
    SecretTooShort {
        /// The component.
        name: String,
        /// The secret's length.
        len: usize,
    },
}

/// Checks `components` for a core serving `domain` whose own services
/// (upload, group chat) have the JIDs `services` (name, JID).
pub fn validate(
    components: &[ComponentConfig],
    domain: &str,
    services: &[(&'static str, String)],
) -> Result<(), ComponentConfigError> {
    let mut seen = std::collections::HashSet::new();
    for c in components {
        let jid =
            jid::Jid::new(&c.name).map_err(|_| ComponentConfigError::NotADomain(c.name.clone()))?;
        if jid.node().is_some() || jid.resource().is_some() {
            return Err(ComponentConfigError::NotADomain(c.name.clone()));
        }
        let normalized = jid.domain().as_str();
        if normalized != c.name {
            return Err(ComponentConfigError::NotNormalized {
                name: c.name.clone(),
                normalized: normalized.to_owned(),
            });
        }
        if c.name.eq_ignore_ascii_case(domain) {
            return Err(ComponentConfigError::Reserved {
                name: c.name.clone(),
                by: "the server's domain",
            });
        }
        if let Some((by, _)) = services
            .iter()
            .find(|(_, jid)| c.name.eq_ignore_ascii_case(jid))
        {
            return Err(ComponentConfigError::Reserved {
                name: c.name.clone(),
                by,
            });
        }
        if !seen.insert(c.name.as_str()) {
            return Err(ComponentConfigError::Duplicate(c.name.clone()));
        }
        if c.secret.len() < MIN_SECRET_BYTES {
            return Err(ComponentConfigError::SecretTooShort {
                name: c.name.clone(),
                len: c.secret.len(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef";

    fn check(names: &[&str]) -> Result<(), ComponentConfigError> {
        let components: Vec<_> = names
            .iter()
            .map(|n| ComponentConfig::new(n, SECRET))
            .collect();
        let services = [
            ("the upload service", "upload.example.org".to_owned()),
            (
                "the group chat service",
                "conference.example.org".to_owned(),
            ),
        ];
        validate(&components, "example.org", &services)
    }

    #[test]
    fn component_names_are_domains_of_their_own() {
        assert_eq!(check(&["push.example.org", "gateway.other.net"]), Ok(()));
        for bad in ["user@push.example.org", "push.example.org/r", "", "a b"] {
            assert!(
                matches!(check(&[bad]), Err(ComponentConfigError::NotADomain(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            check(&["Push.Example.org"]),
            Err(ComponentConfigError::NotNormalized { normalized, .. }) if normalized == "push.example.org"
        ));
        for taken in [
            "example.org",
            "upload.example.org",
            "conference.example.org",
        ] {
            assert!(
                matches!(check(&[taken]), Err(ComponentConfigError::Reserved { .. })),
                "{taken}"
            );
        }
        assert_eq!(
            check(&["push.example.org", "push.example.org"]),
            Err(ComponentConfigError::Duplicate("push.example.org".into()))
        );
    }

    #[test]
    fn short_secrets_are_refused_and_no_secret_is_ever_printed() {
        let short = [ComponentConfig::new("push.example.org", "too short")];
        assert_eq!(
            validate(&short, "example.org", &[]),
            Err(ComponentConfigError::SecretTooShort {
                name: "push.example.org".into(),
                len: 9
            })
        );
        let shown = format!("{:?}", ComponentConfig::new("push.example.org", SECRET));
        assert!(!shown.contains(SECRET), "{shown}");
    }
}
