//! What a session has decided to do, collected until the driver polls it,
//! and the transport's framing of what it writes: a stream (TCP, TLS, a
//! QUIC stream) or RFC 7395 WebSocket messages.

use std::borrow::Cow;

use bytes::Bytes;
use cm_protocol::Frame;
use xmpp_stream::framer::FramingError;
use xmpp_stream::{StreamCondition, stream};

use super::SessionAction;
use super::report::Refusal;

/// How XML is framed on the transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Framing {
    /// One XML stream (TCP, TLS, a QUIC stream): `<stream:stream>` header.
    #[default]
    Stream,
    /// RFC 7395 XMPP over WebSocket: `<open/>`, `<close/>`, and every
    /// element a complete, namespace-declared message of its own.
    WebSocket,
}

/// A reason to end the stream: the stream error sent before closing.
#[derive(Debug)]
pub(super) struct StreamError {
    /// The condition.
    pub condition: StreamCondition,
    /// Text for the client, if any.
    pub text: Option<Cow<'static, str>>,
    /// What the client did, if the stream ends for it.
    pub refusal: Option<Refusal>,
}

impl StreamError {
    /// A stream error with an explanation.
    pub fn new(condition: StreamCondition, text: &'static str) -> Self {
        Self {
            condition,
            text: Some(Cow::Borrowed(text)),
            refusal: None,
        }
    }

    /// A stream error without text.
    pub fn bare(condition: StreamCondition) -> Self {
        Self {
            condition,
            text: None,
            refusal: None,
        }
    }

    /// The stream ends for what the client did.
    pub fn refusing(mut self, refusal: Refusal) -> Self {
        self.refusal = Some(refusal);
        self
    }
}

impl From<FramingError> for StreamError {
    fn from(e: FramingError) -> Self {
        Self {
            refusal: Some(Refusal::of_framing(&e)),
            condition: e.condition,
            text: Some(Cow::Owned(e.text)),
        }
    }
}

/// The actions of the batch in progress, with writes framed for the
/// transport.
#[derive(Debug, Default)]
pub(super) struct Output {
    framing: Framing,
    actions: Vec<SessionAction>,
}

impl Output {
    /// Output for a transport with `framing`.
    pub fn new(framing: Framing) -> Self {
        Self {
            framing,
            actions: Vec::new(),
        }
    }

    /// The transport's framing.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Writes bytes as they are (headers, features, nonzas).
    pub fn write(&mut self, bytes: Vec<u8>) {
        self.actions.push(SessionAction::Write(Bytes::from(bytes)));
    }

    /// Writes a stanza; on WebSocket it must declare its namespace
    /// (RFC 7395 §3.3.3).
    pub fn write_stanza(&mut self, stanza: Bytes) {
        let stanza = match self.framing {
            Framing::Stream => stanza,
            Framing::WebSocket => declare_client_ns(stanza),
        };
        self.actions.push(SessionAction::Write(stanza));
    }

    /// Writes stream features (declaring the stream prefix on WebSocket,
    /// where they are a message of their own).
    pub fn write_features(&mut self, features: Vec<u8>) {
        match self.framing {
            Framing::Stream => self.write(features),
            Framing::WebSocket => {
                let declared = String::from_utf8_lossy(&features).replacen(
                    "<stream:features",
                    "<stream:features xmlns:stream=\"http://etherx.jabber.org/streams\"",
                    1,
                );
                self.write(declared.into_bytes());
            }
        }
    }

    /// Writes the server's stream header and, if known, the features: one
    /// write on a stream, a message each on WebSocket.
    pub fn write_opening(&mut self, mut header: Vec<u8>, features: Option<Vec<u8>>) {
        match (self.framing, features) {
            (Framing::Stream, Some(features)) => {
                header.extend(features);
                self.write(header);
            }
            (_, features) => {
                self.write(header);
                if let Some(features) = features {
                    self.write_features(features);
                }
            }
        }
    }

    /// Writes the end of the stream (`<close/>` on WebSocket).
    pub fn write_close(&mut self) {
        let close = match self.framing {
            Framing::Stream => stream::STREAM_CLOSE,
            Framing::WebSocket => stream::WS_CLOSE,
        };
        self.write(close.to_vec());
    }

    /// Writes a stream error and the end of the stream.
    pub fn write_stream_error(&mut self, error: &StreamError) {
        let text = error.text.as_deref();
        match self.framing {
            Framing::Stream => self.write(stream::stream_error(error.condition, text)),
            Framing::WebSocket => {
                self.write(stream::stream_error_element(error.condition, text, true));
                self.write_close();
            }
        }
    }

    /// Sends a frame to the core.
    pub fn send(&mut self, frame: Frame) {
        self.actions.push(SessionAction::ToCore(frame));
    }

    /// Any other action.
    pub fn push(&mut self, action: SessionAction) {
        self.actions.push(action);
    }

    /// Whether this batch writes anything to the client yet.
    pub fn has_writes(&self) -> bool {
        self.actions
            .iter()
            .any(|a| matches!(a, SessionAction::Write(_)))
    }

    /// Ends the batch: everything decided since the last call.
    pub fn take(&mut self) -> Vec<SessionAction> {
        std::mem::take(&mut self.actions)
    }
}

/// Adds `xmlns="jabber:client"` to a stanza whose start tag declares no
/// default namespace (it inherited it from the stream).
fn declare_client_ns(stanza: Bytes) -> Bytes {
    let end = stanza
        .iter()
        .position(|&b| b == b'>')
        .unwrap_or(stanza.len());
    let start_tag = &stanza[..end];
    // The start tag was written by `rewrite_attrs`: attributes follow a space.
    if start_tag
        .windows(8)
        .any(|w| w == b" xmlns=\"" || w == b" xmlns='")
    {
        return stanza;
    }
    let name_end = start_tag
        .iter()
        .position(|&b| b == b' ' || b == b'/' || b == b'\t' || b == b'\n' || b == b'\r')
        .unwrap_or(end);
    let mut out = Vec::with_capacity(stanza.len() + 24);
    out.extend_from_slice(&stanza[..name_end]);
    out.extend_from_slice(b" xmlns=\"jabber:client\"");
    out.extend_from_slice(&stanza[name_end..]);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_stanzas_declare_their_namespace() {
        let plain =
            Bytes::from_static(b"<message to=\"a@x\" fooxmlns=\"1\"><body>x</body></message>");
        let out = declare_client_ns(plain);
        assert!(
            out.starts_with(b"<message xmlns=\"jabber:client\" to="),
            "{out:?}"
        );
        let empty = declare_client_ns(Bytes::from_static(b"<presence/>"));
        assert_eq!(&empty[..], b"<presence xmlns=\"jabber:client\"/>");
        let declared = Bytes::from_static(b"<iq xmlns=\"jabber:client\" type=\"result\"/>");
        assert_eq!(declare_client_ns(declared.clone()), declared);
    }
}
