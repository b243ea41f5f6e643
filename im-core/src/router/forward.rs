//! Stanzas wrapped in `<forwarded/>` (XEP-0297), as carbons and archive
//! results carry them.

use bytes::Bytes;
use xmpp_stream::ns;
use xmpp_stream::stanza::{TopLevel, inspect, rewrite_attrs};

/// A stanza that can be embedded in another namespace: its own `xmlns`
/// declared.
pub(crate) fn embeddable(payload: &Bytes) -> Bytes {
    match inspect(payload) {
        Ok(top) => embeddable_as(payload, &top),
        Err(_) => payload.clone(),
    }
}

/// [`embeddable`] for a stanza already inspected (`top` describes its
/// start tag).
pub(super) fn embeddable_as(payload: &Bytes, top: &TopLevel) -> Bytes {
    if top.ns == ns::CLIENT && top.attr("xmlns").is_none() {
        rewrite_attrs(payload, top, &[("xmlns", Some(ns::CLIENT))])
    } else {
        payload.clone()
    }
}

/// `head` + `<forwarded>` (with an optional delay) around `inner` + `tail`.
pub(crate) fn wrap_forwarded(head: &str, delay: Option<&[u8]>, inner: &[u8], tail: &str) -> Bytes {
    let mut out = Vec::with_capacity(head.len() + inner.len() + tail.len() + 128);
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(b"<forwarded xmlns=\"urn:xmpp:forward:0\">");
    if let Some(d) = delay {
        out.extend_from_slice(d);
    }
    out.extend_from_slice(inner);
    out.extend_from_slice(b"</forwarded>");
    out.extend_from_slice(tail.as_bytes());
    Bytes::from(out)
}
