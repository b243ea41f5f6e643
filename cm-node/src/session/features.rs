//! Stream negotiation: the server's stream header (a fresh stream id from
//! the session's seeded generator) and the features of each stage — SASL
//! mechanisms and in-band registration as the core offers them before
//! authentication, resource binding and XEP-0198 resumption after.

use rand::RngCore;
use rand::rngs::SmallRng;
use xmpp_stream::stream;

use super::output::Framing;

/// What the core offers clients before authentication, as its `Welcome`
/// frame says: a session cannot send its first features without it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreOffer {
    /// SASL mechanisms, in the order offered.
    pub mechanisms: Vec<String>,
    /// In-band registration (XEP-0077) is offered.
    pub registration: bool,
}

impl CoreOffer {
    /// Whether `mechanism` is offered.
    pub fn offers(&self, mechanism: &str) -> bool {
        self.mechanisms.iter().any(|m| m == mechanism)
    }
}

/// The server's stream header (`<open/>` on WebSocket) with a random id.
pub(super) fn header(
    rng: &mut SmallRng,
    domain: &str,
    framing: Framing,
    lang: Option<&str>,
) -> Vec<u8> {
    let id = format!("{:016x}", rng.next_u64());
    match framing {
        Framing::Stream => stream::server_header(domain, &id, None, lang),
        Framing::WebSocket => stream::ws_open(domain, &id, lang),
    }
}

/// Features before authentication: the core's mechanisms, and
/// registration where it is offered.
pub(super) fn before_auth(offer: &CoreOffer) -> Vec<u8> {
    let mechanisms: Vec<&str> = offer.mechanisms.iter().map(String::as_str).collect();
    if offer.registration {
        stream::features_sasl_register(&mechanisms)
    } else {
        stream::features_sasl(&mechanisms)
    }
}

/// Features after authentication: bind (or resume).
pub(super) fn after_auth() -> Vec<u8> {
    stream::features_bind()
}
