//! SASL relayed to the core (RFC 6120 §6, or SASL2, XEP-0388): the CM
//! checks the mechanism, decodes base64 and forwards the exchange as
//! `AuthStart` / `AuthResponse` frames; the core's challenges and outcome
//! go back to the client in the profile the exchange began in. A SASL2
//! success is not written here: the session writes it once the inline
//! requests are answered. Failures and aborts of both profiles are counted
//! together so a stream cannot try forever.

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cm_protocol::{FastAuth, FastTokenGrant, Frame, SessionId};
use xmpp_stream::element::Element;
use xmpp_stream::{StreamCondition, TopLevel, ns, sasl2, stream};

use super::SessionAction;
use super::features::CoreOffer;
use super::output::{Output, StreamError};
use super::report::{LoginResult, Refusal, SessionReport};

/// Most failed SASL attempts (aborts included) before the stream is closed.
pub(super) const MAX_AUTH_FAILURES: u32 = 3;

/// Where an exchange stands.
#[derive(Debug, Default)]
enum Stage {
    /// Waiting for `<auth/>`.
    #[default]
    Idle,
    /// `<auth/>` came without an initial response for this mechanism
    /// (with what a SASL2 `<authenticate/>` said of FAST); an empty
    /// challenge was sent.
    InitialResponse(String, FastAuth),
    /// The exchange runs at the core.
    Running,
}

/// Which SASL profile an exchange runs in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Profile {
    /// RFC 6120 SASL (`urn:ietf:params:xml:ns:xmpp-sasl`), a stream
    /// restart after success.
    #[default]
    Sasl1,
    /// XEP-0388 SASL2 (`urn:xmpp:sasl:2`), no restart.
    Sasl2,
}

impl Profile {
    fn ns(self) -> &'static str {
        match self {
            Profile::Sasl1 => ns::SASL,
            Profile::Sasl2 => ns::SASL2,
        }
    }

    fn challenge(self, data: &[u8]) -> Vec<u8> {
        match self {
            Profile::Sasl1 if data.is_empty() => stream::sasl_element("challenge", None, None),
            Profile::Sasl1 => stream::sasl_element("challenge", None, Some(&B64.encode(data))),
            Profile::Sasl2 => sasl2::data_element("challenge", data),
        }
    }

    fn failure(self, condition: &str) -> Vec<u8> {
        match self {
            Profile::Sasl1 => stream::sasl_failure(condition, None),
            Profile::Sasl2 => sasl2::failure(condition, None),
        }
    }
}

/// A successful exchange.
#[derive(Debug)]
pub(super) struct Authenticated {
    /// The bare JID the core authenticated.
    pub user: String,
    /// The profile: a SASL1 success is written, a SASL2 one is not yet.
    pub profile: Profile,
    /// The mechanism's additional data (SCRAM's server-final), for the
    /// SASL2 success.
    pub data: Vec<u8>,
    /// A FAST token the core issued, for the SASL2 success.
    pub token: Option<FastTokenGrant>,
}

/// The SASL relay of one stream (see the module docs).
#[derive(Debug, Default)]
pub(super) struct SaslRelay {
    stage: Stage,
    /// The profile of the exchange in progress (or the last).
    profile: Profile,
    /// A frame was sent to the core and its answer is due.
    awaiting_core: bool,
    /// The client aborted while an answer was due: drop that answer.
    drop_next_answer: bool,
    failures: u32,
    /// The client's address, sent with every attempt (the core throttles
    /// failures per address).
    client_ip: Option<IpAddr>,
}

impl SaslRelay {
    /// Records the client's address for the attempts to come.
    pub fn set_client_ip(&mut self, ip: IpAddr) {
        self.client_ip = Some(ip);
    }

    /// No exchange is in progress (other elements may come, e.g. registration).
    pub fn is_idle(&self) -> bool {
        matches!(self.stage, Stage::Idle)
    }

    /// A SASL2 exchange waits for the core's answer: the client may only
    /// abort meanwhile, so what it pipelines behind is read on later.
    pub fn sasl2_awaiting_core(&self) -> bool {
        self.awaiting_core && self.profile == Profile::Sasl2
    }

    /// The core is running an exchange for this stream.
    pub fn is_running(&self) -> bool {
        matches!(self.stage, Stage::Running)
    }

    /// A SASL element from the client.
    pub fn on_element(
        &mut self,
        sid: SessionId,
        offer: &CoreOffer,
        raw: &[u8],
        top: &TopLevel,
        out: &mut Output,
    ) -> Result<(), StreamError> {
        let text = Element::parse(raw, ns::CLIENT)?.text();
        let no_initial_response = text.trim().is_empty();
        let data = match text.trim() {
            "" | "=" => Ok(Vec::new()),
            t => B64.decode(t),
        };
        if !self.is_idle() && top.ns != self.profile.ns() {
            return Err(StreamError::new(
                StreamCondition::NotAuthorized,
                "SASL element of another profile",
            )
            .refusing(Refusal::Unauthenticated));
        }
        let Ok(data) = data else {
            let profile = if self.is_idle() {
                Profile::Sasl1
            } else {
                self.profile
            };
            out.write(profile.failure("incorrect-encoding"));
            report(out, LoginResult::IncorrectEncoding);
            self.stage = Stage::Idle;
            return Ok(());
        };
        match (&mut self.stage, top.name.as_str()) {
            (Stage::Idle, "auth") if top.ns == ns::SASL => {
                self.profile = Profile::Sasl1;
                let mechanism = top.attr("mechanism").unwrap_or_default();
                if !offer.offers(mechanism) {
                    out.write(stream::sasl_failure("invalid-mechanism", None));
                    report(out, LoginResult::InvalidMechanism);
                    return Ok(());
                }
                if no_initial_response {
                    // RFC 6120 §6.4.2: ask for it with an empty challenge.
                    out.write(Profile::Sasl1.challenge(&[]));
                    self.stage = Stage::InitialResponse(mechanism.to_owned(), FastAuth::default());
                    return Ok(());
                }
                self.start(sid, mechanism.to_owned(), data, FastAuth::default(), out);
            }
            (Stage::InitialResponse(mechanism, fast), "response") => {
                let mechanism = std::mem::take(mechanism);
                let fast = std::mem::take(fast);
                self.start(sid, mechanism, data, fast, out);
            }
            (Stage::Running, "response") => {
                self.awaiting_core = true;
                out.send(Frame::AuthResponse {
                    sid,
                    data: data.into(),
                });
            }
            (_, "abort") => {
                let profile = if self.is_idle() {
                    if top.ns == ns::SASL2 {
                        Profile::Sasl2
                    } else {
                        Profile::Sasl1
                    }
                } else {
                    self.profile
                };
                out.write(profile.failure("aborted"));
                report(out, LoginResult::Aborted);
                self.drop_next_answer = self.awaiting_core;
                self.stage = Stage::Idle;
                // Aborts count as failures: a stream cannot restart SASL forever.
                return self.count_failure();
            }
            _ => {
                return Err(StreamError::new(
                    StreamCondition::NotAuthorized,
                    "unexpected SASL element",
                )
                .refusing(Refusal::Unauthenticated));
            }
        }
        Ok(())
    }

    /// A SASL2 `<authenticate/>` (already read) for a mechanism this
    /// connection offers or not (`offered`), with what it says of FAST:
    /// starts the exchange; false if it was refused (the failure is
    /// written).
    pub fn authenticate(
        &mut self,
        sid: SessionId,
        offered: bool,
        mechanism: &str,
        initial_response: Option<Vec<u8>>,
        fast: FastAuth,
        out: &mut Output,
    ) -> Result<bool, StreamError> {
        self.profile = Profile::Sasl2;
        if !offered {
            out.write(sasl2::failure("invalid-mechanism", None));
            report(out, LoginResult::InvalidMechanism);
            return Ok(false);
        }
        match initial_response {
            Some(data) => self.start(sid, mechanism.to_owned(), data, fast, out),
            None => {
                out.write(sasl2::data_element("challenge", &[]));
                self.stage = Stage::InitialResponse(mechanism.to_owned(), fast);
            }
        }
        Ok(true)
    }

    /// A SASL2 `<authenticate/>` that does not read (`condition`, e.g.
    /// `incorrect-encoding` or `malformed-request`): refused, counted.
    pub fn refuse_authenticate(
        &mut self,
        condition: &str,
        result: LoginResult,
        out: &mut Output,
    ) -> Result<(), StreamError> {
        out.write(sasl2::failure(condition, None));
        report(out, result);
        self.stage = Stage::Idle;
        self.count_failure()
    }

    /// The core's `AuthChallenge`, `AuthSuccess` or `AuthFailure`; returns
    /// who authenticated on success.
    pub fn on_core(
        &mut self,
        frame: Frame,
        out: &mut Output,
    ) -> Result<Option<Authenticated>, StreamError> {
        self.awaiting_core = false;
        if std::mem::take(&mut self.drop_next_answer) || !self.is_running() {
            tracing::debug!(frame = frame.name(), "SASL answer ignored");
            return Ok(None);
        }
        match frame {
            Frame::AuthChallenge { data, .. } => {
                let challenge = match self.profile {
                    // (an empty SASL1 challenge is `=`, as before)
                    Profile::Sasl1 => {
                        stream::sasl_element("challenge", None, Some(&B64.encode(&data)))
                    }
                    Profile::Sasl2 => self.profile.challenge(&data),
                };
                out.write(challenge);
            }
            Frame::AuthSuccess {
                data, user, token, ..
            } => {
                if self.profile == Profile::Sasl1 {
                    let data = (!data.is_empty()).then(|| B64.encode(&data));
                    out.write(stream::sasl_element("success", None, data.as_deref()));
                }
                report(out, LoginResult::Ok);
                self.stage = Stage::Idle;
                return Ok(Some(Authenticated {
                    user,
                    profile: self.profile,
                    data: data.to_vec(),
                    // (a SASL1 success has no place for a token)
                    token: token.filter(|_| self.profile == Profile::Sasl2),
                }));
            }
            Frame::AuthFailure { condition, .. } => {
                out.write(self.profile.failure(&condition));
                report(out, LoginResult::of_failure(&condition));
                self.stage = Stage::Idle;
                self.count_failure()?;
            }
            other => tracing::debug!(frame = other.name(), "not a SASL answer"),
        }
        Ok(None)
    }

    fn start(
        &mut self,
        sid: SessionId,
        mechanism: String,
        data: Vec<u8>,
        fast: FastAuth,
        out: &mut Output,
    ) {
        self.stage = Stage::Running;
        self.awaiting_core = true;
        out.send(Frame::AuthStart {
            sid,
            mechanism,
            data: data.into(),
            client_ip: self.client_ip,
            fast: Box::new(fast),
        });
    }

    fn count_failure(&mut self) -> Result<(), StreamError> {
        self.failures += 1;
        if self.failures >= MAX_AUTH_FAILURES {
            return Err(StreamError::new(
                StreamCondition::PolicyViolation,
                "too many failed authentication attempts",
            )
            .refusing(Refusal::AuthFailures));
        }
        Ok(())
    }
}

/// Reports how a SASL attempt ended.
fn report(out: &mut Output, result: LoginResult) {
    out.push(SessionAction::Report(SessionReport::Login(result)));
}
