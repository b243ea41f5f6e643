//! After authentication: resource binding (RFC 6120 §7) or XEP-0198
//! resumption, both decided by the core (`Bind` / `Resume` frames); the CM
//! relays the request and turns the answer into the client's reply.

use bytes::Bytes;
use cm_protocol::{Frame, Resumption, SessionId};
use xmpp_stream::element::Element;
use xmpp_stream::stanza::{StanzaKind, error_reply};
use xmpp_stream::{StanzaCondition, StreamCondition, TopLevel, ns, stream};

use super::output::{Output, StreamError};
use super::report::Refusal;

/// Where binding stands.
#[derive(Debug, Default)]
pub(super) enum Binding {
    /// Waiting for the bind IQ or `<resume/>`.
    #[default]
    Idle,
    /// Bind sent to the core, for the IQ with this id.
    Pending { iq_id: String },
    /// `<resume/>` sent to the core with the client's `previd` and `h`.
    Resuming { previd: String, h: u32 },
}

/// A resumption the core accepted.
#[derive(Debug)]
pub(super) struct Resumed {
    /// The SM id resumed.
    pub previd: String,
    /// The client's `h` (what it received).
    pub client_h: u32,
    /// What the core answered: the full JID, its `h`, presence, time.
    pub resumption: Resumption,
}

impl Binding {
    /// No request is at the core.
    pub fn is_idle(&self) -> bool {
        matches!(self, Binding::Idle)
    }

    /// A `<resume/>` is at the core.
    pub fn is_resuming(&self) -> bool {
        matches!(self, Binding::Resuming { .. })
    }

    /// An IQ after authentication: it must be a bind request.
    pub fn on_iq(
        &mut self,
        sid: SessionId,
        user: &str,
        raw: &[u8],
        out: &mut Output,
    ) -> Result<(), StreamError> {
        let iq = Element::parse(raw, ns::CLIENT)?;
        let id = iq.attr("id").unwrap_or_default().to_owned();
        match (iq.attr("type"), iq.child("bind", ns::BIND)) {
            (Some("set"), Some(bind)) => {
                let resource = bind
                    .child("resource", ns::BIND)
                    .map(|r| r.text().trim().to_owned());
                *self = Binding::Pending { iq_id: id.clone() };
                out.send(Frame::Bind {
                    sid,
                    user: user.to_owned(),
                    iq_id: id,
                    resource,
                });
                Ok(())
            }
            _ => Err(
                StreamError::new(StreamCondition::NotAuthorized, "bind a resource first")
                    .refusing(Refusal::Unauthenticated),
            ),
        }
    }

    /// `<resume/>` instead of binding (XEP-0198 §5).
    pub fn on_resume(&mut self, sid: SessionId, user: &str, top: &TopLevel, out: &mut Output) {
        let previd = top.attr("previd").unwrap_or_default().to_owned();
        let Some(h) = top.attr("h").and_then(|h| h.parse::<u32>().ok()) else {
            out.write(stream::sm_failed("bad-request", None));
            return;
        };
        *self = Binding::Resuming {
            previd: previd.clone(),
            h,
        };
        out.send(Frame::Resume {
            sid,
            user: user.to_owned(),
            previd,
            h,
        });
    }

    /// The core's `BindResult` (an empty `iq_id` answers the pending bind);
    /// returns the bound full JID.
    pub fn on_bind_result(
        &mut self,
        iq_id: String,
        result: Result<String, String>,
        domain: &str,
        user: &str,
        out: &mut Output,
    ) -> Option<String> {
        let Binding::Pending { iq_id: pending } = std::mem::take(self) else {
            tracing::debug!("bind result ignored: no bind pending");
            return None;
        };
        let iq_id = if iq_id.is_empty() { pending } else { iq_id };
        match result {
            Ok(jid) => {
                out.write_stanza(Bytes::from(stream::bind_result(&iq_id, &jid)));
                Some(jid)
            }
            Err(condition) => {
                let reply = error_reply(
                    StanzaKind::Iq,
                    Some(&iq_id),
                    domain,
                    user,
                    StanzaCondition::from_name(&condition),
                    None,
                );
                out.write_stanza(reply);
                None
            }
        }
    }

    /// The core's `Resumed`; returns what the session resumes.
    pub fn on_resumed(
        &mut self,
        result: Result<Resumption, String>,
        out: &mut Output,
    ) -> Option<Resumed> {
        let Binding::Resuming { previd, h } = std::mem::take(self) else {
            tracing::debug!("resumption answer ignored: none pending");
            return None;
        };
        match result {
            Ok(r) => {
                out.write(stream::sm_element(
                    "resumed",
                    &[("previd", &previd), ("h", &r.h.to_string())],
                ));
                Some(Resumed {
                    previd,
                    client_h: h,
                    resumption: r,
                })
            }
            Err(condition) => {
                out.write(stream::sm_failed(&condition, None));
                None
            }
        }
    }
}
