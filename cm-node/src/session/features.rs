//! Stream negotiation: the server's stream header (a fresh stream id from
//! the session's seeded generator) and the features of each stage — SASL
//! mechanisms and in-band registration as the core offers them before
//! authentication, resource binding and XEP-0198 resumption after.

use rand::RngCore;
use rand::rngs::SmallRng;
use xmpp_stream::sasl2::FastFeature;
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
    /// The `ver` of the server's entity capabilities (XEP-0115), shown in
    /// every stream feature set; empty: none.
    pub caps: String,
    /// SASL2 (XEP-0388) with Bind2 and inline stream management is offered.
    pub sasl2: bool,
    /// FAST tokens (XEP-0484) are offered inside SASL2.
    pub fast: bool,
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

/// Features before authentication: the core's mechanisms (in SASL2 with
/// `fast`, this connection's FAST offer), registration where it is
/// offered, and the server's capabilities.
pub(super) fn before_auth(offer: &CoreOffer, fast: &FastFeature) -> Vec<u8> {
    let mechanisms: Vec<&str> = offer.mechanisms.iter().map(String::as_str).collect();
    stream::features_sasl(
        &mechanisms,
        offer.sasl2.then_some(fast),
        offer.registration,
        caps(offer),
    )
}

/// The HT mechanism bound to the connection's `tls-exporter` (the names
/// are `xmpp-sasl`'s; the CM relays, the core computes).
pub const HT_SHA_256_EXPR: &str = "HT-SHA-256-EXPR";
/// The HT mechanism without channel binding.
pub const HT_SHA_256_NONE: &str = "HT-SHA-256-NONE";

/// The FAST offer of a connection: none unless the core offers FAST;
/// `HT-SHA-256-EXPR` where the connection's `tls-exporter` is known, and
/// `HT-SHA-256-NONE` always. (`-ENDP` is not offered: a client resuming a
/// TLS session another CM issued hashes that CM's certificate, which this
/// one cannot know; `-UNIQ` does not exist on TLS 1.3.) `tls-0rtt='true'`
/// where the connection's transport accepts 0-RTT (`zero_rtt`).
pub(super) fn fast_feature(offer: &CoreOffer, tls_exporter: bool, zero_rtt: bool) -> FastFeature {
    if !offer.fast {
        return FastFeature::default();
    }
    let mut mechanisms = Vec::new();
    if tls_exporter {
        mechanisms.push(HT_SHA_256_EXPR);
    }
    mechanisms.push(HT_SHA_256_NONE);
    FastFeature {
        mechanisms,
        tls_0rtt: zero_rtt,
    }
}

/// Features after a SASL2 success that bound the stream (Bind2 or an
/// inline resumption); `<sm/>` while stream management is still off, so
/// a client whose Bind2 carried no inline enable can enable it.
pub(super) fn after_bound(offer: Option<&CoreOffer>, sm_off: bool) -> Vec<u8> {
    stream::features_bound(sm_off, offer.and_then(caps))
}

/// Features after authentication: bind (or resume), and the server's
/// capabilities (if the core's offer is known: it always is by then).
pub(super) fn after_auth(offer: Option<&CoreOffer>) -> Vec<u8> {
    stream::features_bind(offer.and_then(caps))
}

fn caps(offer: &CoreOffer) -> Option<&str> {
    (!offer.caps.is_empty()).then_some(offer.caps.as_str())
}
