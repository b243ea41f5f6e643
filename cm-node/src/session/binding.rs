//! After authentication: resource binding (RFC 6120 §7) or XEP-0198
//! resumption, both decided by the core (`Bind` / `Resume` frames); the CM
//! relays the request and turns the answer into the client's reply.

use bytes::Bytes;
use cm_protocol::{Bind2, Frame, Resumption, SessionId};
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

impl Resumed {
    /// `<resumed previd h/>` (XEP-0198 §5), alone or inline in a SASL2 success.
    pub fn element(&self) -> Element {
        Element::new("resumed", ns::SM)
            .with_attr("previd", &self.previd)
            .with_attr("h", self.resumption.h.to_string())
    }
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
                    bind2: None,
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
        self.resume(sid, user, previd, h, out);
    }

    /// Asks the core to resume `previd` for `user`, the client having
    /// received `h` (a `<resume/>`, or one inline in a SASL2 `<authenticate/>`).
    pub fn resume(&mut self, sid: SessionId, user: &str, previd: String, h: u32, out: &mut Output) {
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

    /// Asks the core for a Bind2 binding (XEP-0386, inline in SASL2); its
    /// `BindResult` answers with an empty IQ id.
    pub fn bind2(&mut self, sid: SessionId, user: &str, bind2: Bind2, out: &mut Output) {
        *self = Binding::Pending {
            iq_id: String::new(),
        };
        out.send(Frame::Bind {
            sid,
            user: user.to_owned(),
            iq_id: String::new(),
            resource: None,
            bind2: Some(bind2),
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
        let (iq_id, result) = self.take_bind_result(iq_id, result)?;
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

    /// The core's `BindResult` for the pending bind, with the IQ id it
    /// answers; None if no bind is pending.
    pub fn take_bind_result(
        &mut self,
        iq_id: String,
        result: Result<String, String>,
    ) -> Option<(String, Result<String, String>)> {
        let Binding::Pending { iq_id: pending } = std::mem::take(self) else {
            tracing::debug!("bind result ignored: no bind pending");
            return None;
        };
        let iq_id = if iq_id.is_empty() { pending } else { iq_id };
        Some((iq_id, result))
    }

    /// The core's `Resumed` for the pending resumption: what the session
    /// resumes, or the condition it failed with; None if none is pending.
    pub fn take_resumed(
        &mut self,
        result: Result<Resumption, String>,
    ) -> Option<Result<Resumed, String>> {
        let Binding::Resuming { previd, h } = std::mem::take(self) else {
            tracing::debug!("resumption answer ignored: none pending");
            return None;
        };
        Some(result.map(|resumption| Resumed {
            previd,
            client_h: h,
            resumption,
        }))
    }

    /// The core's `Resumed`; returns what the session resumes.
    pub fn on_resumed(
        &mut self,
        result: Result<Resumption, String>,
        out: &mut Output,
    ) -> Option<Resumed> {
        match self.take_resumed(result)? {
            Ok(resumed) => {
                out.write(resumed.element().to_bytes(ns::CLIENT));
                Some(resumed)
            }
            Err(condition) => {
                out.write(stream::sm_failed(&condition, None));
                None
            }
        }
    }
}
