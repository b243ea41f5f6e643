//! In-band registration (XEP-0077) before authentication, where the core
//! offers it: the CM answers the form request itself and relays account
//! creation to the core as a `Register` frame.

use bytes::Bytes;
use cm_protocol::{Frame, SessionId};
use xmpp_stream::element::Element;
use xmpp_stream::{StreamCondition, ns};

use super::output::{Output, StreamError};
use super::report::Refusal;

/// Most registrations tried on one stream.
const MAX_REGISTRATIONS: u32 = 3;

/// The registration state of one stream.
#[derive(Debug, Default)]
pub(super) struct InBandRegistration {
    /// Id of the registration IQ the core is answering.
    pending: Option<String>,
    /// Registrations tried on this stream.
    attempts: u32,
}

impl InBandRegistration {
    /// An IQ before authentication (XEP-0077 §3.1): the form locally,
    /// account creation at the core.
    pub fn on_iq(
        &mut self,
        sid: SessionId,
        raw: &[u8],
        out: &mut Output,
    ) -> Result<(), StreamError> {
        let iq = Element::parse(raw, ns::CLIENT)?;
        let id = iq.attr("id").unwrap_or_default().to_owned();
        let Some(query) = iq.child("query", ns::REGISTER) else {
            return Err(StreamError::new(
                StreamCondition::NotAuthorized,
                "authenticate and bind first",
            )
            .refusing(Refusal::Unauthenticated));
        };
        match iq.attr("type") {
            Some("get") => {
                let form = Element::new("query", ns::REGISTER)
                    .with_child(
                        Element::new("instructions", ns::REGISTER)
                            .with_text("Choose a user name and password."),
                    )
                    .with_child(Element::new("username", ns::REGISTER))
                    .with_child(Element::new("password", ns::REGISTER));
                let reply = Element::new("iq", ns::CLIENT)
                    .with_attr("type", "result")
                    .with_attr("id", id)
                    .with_child(form);
                out.write_stanza(Bytes::from(reply.to_bytes(ns::CLIENT)));
            }
            Some("set") => {
                let field = |name: &str| query.child(name, ns::REGISTER).map(Element::text);
                let (Some(username), Some(password)) = (field("username"), field("password"))
                else {
                    out.write_stanza(error_reply(&id, "bad-request"));
                    return Ok(());
                };
                if self.pending.is_some() || self.attempts >= MAX_REGISTRATIONS {
                    out.write_stanza(error_reply(&id, "not-allowed"));
                    return Ok(());
                }
                self.attempts += 1;
                self.pending = Some(id);
                out.send(Frame::Register {
                    sid,
                    username,
                    password,
                });
            }
            _ => out.write_stanza(error_reply(&id, "bad-request")),
        }
        Ok(())
    }

    /// The core's `RegisterResult`: answers the pending IQ.
    pub fn on_result(&mut self, error: Option<String>, out: &mut Output) {
        let Some(id) = self.pending.take() else {
            return;
        };
        match error {
            None => {
                let ok = Element::new("iq", ns::CLIENT)
                    .with_attr("type", "result")
                    .with_attr("id", id);
                out.write_stanza(Bytes::from(ok.to_bytes(ns::CLIENT)));
            }
            Some(condition) => out.write_stanza(error_reply(&id, &condition)),
        }
    }
}

/// The registration IQ `id` answered with a stanza error.
fn error_reply(id: &str, condition: &str) -> Bytes {
    let kind = match condition {
        "bad-request" | "not-acceptable" => "modify",
        "resource-constraint" => "wait",
        _ => "cancel",
    };
    let reply = Element::new("iq", ns::CLIENT)
        .with_attr("type", "error")
        .with_attr("id", id)
        .with_child(
            Element::new("error", ns::CLIENT)
                .with_attr("type", kind)
                .with_child(Element::new(condition, ns::STANZA_ERRORS)),
        );
    Bytes::from(reply.to_bytes(ns::CLIENT))
}
