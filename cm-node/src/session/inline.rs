//! SASL2's inline requests (XEP-0388 with XEP-0386 Bind2 and XEP-0198
//! inline): after the core accepted the `<authenticate/>`, the CM asks the
//! core for what it carried — first a resumption (`Resume`), and if that
//! fails or none was asked, a Bind2 binding (`Bind` with `bind2`, SM
//! enable and carbons folded in, so the core answers `BindResult` and
//! `SmEnabled` back to back) — and writes one `<success/>` with the
//! answers, then the features of the bound (or still unbound) stream. No
//! stream restart. The offline store is left alone (ejabberd #4287):
//! offline messages come after the first available presence, as after a
//! legacy bind.

use cm_protocol::{Bind2, FastAuth, Frame, SmRequest};
use xmpp_stream::element::Element;
use xmpp_stream::sasl2::{self, Authenticate, BindRequest, Resume, Sasl2Error, Success};
use xmpp_stream::{StreamCondition, ns};

use super::output::StreamError;
use super::report::{LoginResult, Refusal};
use super::sasl::Authenticated;
use super::{ClientSession, State, features};

/// Most core frames held while the success waits (a core that sends
/// more is not behaving: the stream ends).
pub const MAX_HELD: usize = 64;

/// What an `<authenticate/>` asked beyond authentication, and what has
/// been answered so far.
#[derive(Debug, Default)]
pub(super) struct Inline {
    /// An inline `<resume/>`, tried first.
    resume: Option<Resume>,
    /// A Bind2 `<bind/>`, used if there is no resumption or it fails.
    bind: Option<BindRequest>,
    /// The mechanism's additional data for the success.
    additional_data: Vec<u8>,
    /// Answers for the success so far (a resumption's `<failed/>`).
    answers: Vec<Element>,
    /// A FAST token for the success.
    token: Option<sasl2::Token>,
    /// Where it stands.
    phase: InlinePhase,
    /// Frames from the core that came before the success was written
    /// (none should: the core answers a Bind2 bind and its SM enable back
    /// to back), handled right after it; at most [`MAX_HELD`].
    held: Vec<Frame>,
}

/// Where the inline requests stand.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) enum InlinePhase {
    /// The SASL exchange runs.
    #[default]
    Authenticating,
    /// `Resume` is at the core.
    Resuming,
    /// The Bind2 `Bind` is at the core.
    Binding,
    /// Bound to this JID; the `SmEnabled` that follows the bind is due.
    Enabling(String),
}

impl ClientSession {
    /// A SASL2 `<authenticate/>`.
    pub(super) fn on_authenticate(&mut self, raw: &[u8]) -> Result<(), StreamError> {
        let Some(offer) = self.offer.clone() else {
            return Ok(());
        };
        if !offer.sasl2 || !self.sasl.is_idle() {
            return Err(StreamError::new(
                StreamCondition::NotAuthorized,
                "unexpected SASL2 authenticate",
            )
            .refusing(Refusal::Unauthenticated));
        }
        let el = Element::parse(raw, ns::CLIENT)?;
        let auth = match Authenticate::parse(&el) {
            Ok(a) => a,
            Err(e) => {
                let (condition, result) = match e {
                    Sasl2Error::IncorrectEncoding => {
                        ("incorrect-encoding", LoginResult::IncorrectEncoding)
                    }
                    Sasl2Error::NoMechanism => ("invalid-mechanism", LoginResult::InvalidMechanism),
                    Sasl2Error::BadResume => ("malformed-request", LoginResult::Failed),
                };
                return self
                    .sasl
                    .refuse_authenticate(condition, result, &mut self.out);
            }
        };
        let Authenticate {
            mechanism,
            initial_response,
            user_agent,
            bind,
            resume,
            fast,
            request_token,
        } = auth;
        let fast_offer = features::fast_feature(&offer, self.tls_exporter.is_some(), self.zero_rtt);
        let offered = offer.offers(&mechanism) || fast_offer.mechanisms.contains(&&*mechanism);
        let fast = FastAuth {
            user_agent: user_agent.and_then(|ua| ua.id),
            // (a token only for a mechanism this connection offers)
            request_token: request_token.filter(|m| fast_offer.mechanisms.contains(&&**m)),
            count: fast.and_then(|f| f.count),
            invalidate: fast.is_some_and(|f| f.invalidate),
            tls_exporter: self.tls_exporter.clone(),
            // parsed from early data: the core requires a count (§6.2)
            early: self.early.is_some(),
        };
        if self.sasl.authenticate(
            self.sid,
            offered,
            &mechanism,
            initial_response,
            fast,
            &mut self.out,
        )? {
            self.inline = Some(Inline {
                resume,
                bind,
                ..Inline::default()
            });
        }
        Ok(())
    }

    /// The core accepted a SASL2 exchange: its inline requests go to the
    /// core (or, with none, the success is written at once, with the FAST
    /// token the core issued, if any).
    pub(super) fn sasl2_succeeded(&mut self, authenticated: Authenticated) {
        let Authenticated {
            user, data, token, ..
        } = authenticated;
        self.user = Some(user.clone());
        let mut inline = self.inline.take().unwrap_or_default();
        inline.additional_data = data;
        if let Some(t) = token {
            let expiry = i64::try_from(t.expiry).unwrap_or(i64::MAX);
            inline.token = Some(sasl2::Token {
                token: t.token,
                expiry,
            });
        }
        if let Some(Resume { previd, h }) = inline.resume.take() {
            self.binding
                .resume(self.sid, &user, previd, h, &mut self.out);
            inline.phase = InlinePhase::Resuming;
            self.inline = Some(inline);
            self.state = State::Inline;
            return;
        }
        self.inline_bind(inline);
    }

    /// Binds with Bind2 if asked; else the success without a binding: the
    /// client binds (or resumes) the legacy way on this stream.
    fn inline_bind(&mut self, mut inline: Inline) {
        let user = self.user.clone().unwrap_or_default();
        let Some(bind) = &inline.bind else {
            self.write_success(&inline, user, Vec::new());
            self.state = State::Bind;
            self.out
                .write_features(features::after_auth(self.offer.as_deref()));
            return;
        };
        let bind2 = Bind2 {
            tag: bind.tag.clone(),
            carbons: bind.carbons,
            sm: bind.sm.map(|sm| SmRequest {
                resume: sm.resume,
                max: sm.max,
            }),
        };
        if bind2.sm.is_some() {
            self.sm.enabling_inline(bind.inactive, &mut self.out);
        } else if bind.inactive {
            self.sm.set_inactive();
        }
        self.binding.bind2(self.sid, &user, bind2, &mut self.out);
        inline.phase = InlinePhase::Binding;
        self.inline = Some(inline);
        self.state = State::Inline;
    }

    /// A frame from the core while the inline requests are at work.
    pub(super) fn on_inline_answer(&mut self, frame: Frame) {
        let Some(mut inline) = self.inline.take() else {
            return;
        };
        match (&inline.phase, frame) {
            (InlinePhase::Resuming, Frame::Resumed { result, .. }) => {
                match self.binding.take_resumed(result) {
                    Some(Ok(resumed)) => {
                        let jid = resumed.resumption.jid.clone();
                        self.write_success(&inline, jid, vec![resumed.element()]);
                        // no `<sm/>`: the resumed session's SM is on (a
                        // client that sees it offered resumes again, and
                        // its <failed/> fails its unacknowledged stanzas)
                        self.out
                            .write_features(features::after_bound(self.offer.as_deref(), false));
                        // Bound, as after `<resumed/>`: the ledger's replay follows.
                        self.resumed(resumed);
                        for frame in inline.held {
                            self.on_core(frame);
                        }
                    }
                    Some(Err(condition)) => {
                        // XEP-0198 inline: `<failed/>` in the success, then bind.
                        inline.answers.push(
                            Element::new("failed", ns::SM)
                                .with_child(Element::new(condition, ns::STANZA_ERRORS)),
                        );
                        self.inline_bind(inline);
                    }
                    None => self.inline = Some(inline),
                }
            }
            (InlinePhase::Binding, Frame::BindResult { iq_id, result, .. }) => {
                let Some((_, result)) = self.binding.take_bind_result(iq_id, result) else {
                    self.inline = Some(inline);
                    return;
                };
                match result {
                    Ok(jid) => {
                        let sm = inline.bind.as_ref().is_some_and(|b| b.sm.is_some());
                        // (the negotiation's deadline still runs until the
                        // success is written: SmEnabled may never come)
                        let deadline = self.negotiation_deadline;
                        self.bound(jid.clone());
                        self.negotiation_deadline = deadline;
                        if sm {
                            inline.phase = InlinePhase::Enabling(jid);
                            self.inline = Some(inline);
                            self.state = State::Inline;
                        } else {
                            self.write_success(&inline, jid, vec![sasl2::bound(Vec::new())]);
                            self.bound_written(inline);
                        }
                    }
                    Err(condition) => {
                        // Authenticated, not bound: the success says so (no
                        // `<bound/>`), and the client may bind the legacy way.
                        tracing::debug!(sid = self.sid, condition, "bind2 refused");
                        // (nor is SM or CSI on: the client enables them anew)
                        self.sm.inline_refused(&mut self.out);
                        let user = self.user.clone().unwrap_or_default();
                        self.write_success(&inline, user, Vec::new());
                        self.state = State::Bind;
                        self.out
                            .write_features(features::after_auth(self.offer.as_deref()));
                    }
                }
            }
            (InlinePhase::Enabling(jid), Frame::SmEnabled { id, max, .. }) => {
                let jid = jid.clone();
                let enabled = self.sm.confirm_enabled(id, max, &mut self.out);
                self.write_success(
                    &inline,
                    jid,
                    vec![sasl2::bound(enabled.into_iter().collect())],
                );
                self.bound_written(inline);
            }
            (_, Frame::Kick { condition, .. }) => {
                self.close_with(StreamError::bare(StreamCondition::from_name(&condition)));
            }
            (_, other) => {
                if inline.held.len() >= MAX_HELD {
                    return self.close_with(StreamError::bare(StreamCondition::ResourceConstraint));
                }
                inline.held.push(other);
                self.inline = Some(inline);
            }
        }
    }

    /// The success of a bound stream is written: its features follow, and
    /// what the core sent meanwhile is handled.
    fn bound_written(&mut self, inline: Inline) {
        self.state = State::Bound;
        self.negotiation_deadline = None;
        self.out.write_features(features::after_bound(
            self.offer.as_deref(),
            !self.sm.is_on(),
        ));
        for frame in inline.held {
            self.on_core(frame);
        }
    }

    /// Writes the one `<success/>` of a SASL2 exchange.
    fn write_success(&mut self, inline: &Inline, identifier: String, mut answers: Vec<Element>) {
        let mut all = inline.answers.clone();
        all.append(&mut answers);
        all.extend(inline.token.as_ref().map(sasl2::Token::to_element));
        let success = Success {
            additional_data: inline.additional_data.clone(),
            authorization_identifier: identifier,
            inline: all,
        };
        self.out.write(success.to_bytes());
    }
}
