//! What a session reports of its own decisions, for the CM's metrics: a
//! [`SessionReport`] action among the others of a batch. The driver counts
//! them; the session never touches a counter.

use xmpp_stream::StreamCondition;
use xmpp_stream::framer::FramingError;

/// Something the session decided that the CM counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionReport {
    /// A SASL attempt ended.
    Login(LoginResult),
    /// The stream spent its read budget: reading pauses.
    ReadPaused,
    /// The session ended the stream (reported just before its
    /// [`super::SessionAction::Close`]).
    Ended(EndReason),
}

/// How a SASL attempt ended (the `result` label of
/// `longlink_cm_logins_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginResult {
    /// The core authenticated the client.
    Ok,
    /// The core refused the credentials.
    Failed,
    /// The core could not decide now (`temporary-auth-failure`).
    TemporaryFailure,
    /// The client aborted.
    Aborted,
    /// The client asked for a mechanism the core does not offer.
    InvalidMechanism,
    /// The client's SASL data was not base64.
    IncorrectEncoding,
}

impl LoginResult {
    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            LoginResult::Ok => "ok",
            LoginResult::Failed => "failed",
            LoginResult::TemporaryFailure => "temporary_failure",
            LoginResult::Aborted => "aborted",
            LoginResult::InvalidMechanism => "invalid_mechanism",
            LoginResult::IncorrectEncoding => "incorrect_encoding",
        }
    }

    /// The result of the core's `AuthFailure` with `condition`.
    pub(super) fn of_failure(condition: &str) -> Self {
        match condition {
            "temporary-auth-failure" => LoginResult::TemporaryFailure,
            _ => LoginResult::Failed,
        }
    }
}

/// Why the session ended the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The client closed it (`</stream:stream>`, `<close/>`).
    ClientClosed,
    /// With a stream error: for what the client sent (`refusal`), or told
    /// to (the core's kick, the driver's shutdown or slow-client close, a
    /// core that never answered).
    StreamError {
        /// The condition sent.
        condition: StreamCondition,
        /// What the client did, if the stream ended for it.
        refusal: Option<Refusal>,
    },
}

/// What a client sent (or failed to do) that made the session end its
/// stream (the `reason` label of `longlink_cm_drops_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Over a framing limit: a stanza above `max_stanza_bytes`, elements
    /// nested too deep, a stream header too large.
    StanzaLimits,
    /// XML that is not well-formed or not allowed (restricted XML, a wrong
    /// namespace, an unexpected stream header).
    Malformed,
    /// A stream header for a domain this CM does not serve.
    HostUnknown,
    /// Something other than authentication (or binding) before it.
    Unauthenticated,
    /// Too many failed SASL attempts.
    AuthFailures,
    /// Not authenticated and bound within the negotiation deadline.
    NegotiationTimeout,
    /// A stream-management violation (a bad or too high `h`, an unknown
    /// nonza).
    StreamManagement,
}

impl Refusal {
    /// Every refusal.
    pub const ALL: [Refusal; 7] = [
        Refusal::StanzaLimits,
        Refusal::Malformed,
        Refusal::HostUnknown,
        Refusal::Unauthenticated,
        Refusal::AuthFailures,
        Refusal::NegotiationTimeout,
        Refusal::StreamManagement,
    ];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::StanzaLimits => "stanza_limits",
            Refusal::Malformed => "malformed",
            Refusal::HostUnknown => "host_unknown",
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::AuthFailures => "auth_failures",
            Refusal::NegotiationTimeout => "negotiation_timeout",
            Refusal::StreamManagement => "stream_management",
        }
    }

    /// The refusal a framing (or parsing) error stands for: the framer's
    /// limits end in `policy-violation`, everything else is malformed.
    pub(super) fn of_framing(e: &FramingError) -> Self {
        match e.condition {
            StreamCondition::PolicyViolation => Refusal::StanzaLimits,
            _ => Refusal::Malformed,
        }
    }
}
