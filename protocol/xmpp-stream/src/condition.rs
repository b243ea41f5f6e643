//! Stream error (RFC 6120 §4.9.3) and stanza error (§8.3.3) conditions.

use std::fmt;

/// A stream error condition: ends the whole XML stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamCondition {
    /// Malformed stream data.
    BadFormat,
    /// A new session replaced this one.
    Conflict,
    /// The `to` of the stream header is not served here.
    HostUnknown,
    /// A `from` the peer may not send as (RFC 6120 §4.9.3.9; an external
    /// component sending from outside its domain, XEP-0114).
    InvalidFrom,
    /// Wrong namespace on the stream header or a stanza.
    InvalidNamespace,
    /// The peer sent data that is not well-formed XML.
    NotWellFormed,
    /// The peer exceeded a limit (size, depth, rate).
    PolicyViolation,
    /// The server cannot reach an internal service.
    RemoteConnectionFailed,
    /// Too many resources used.
    ResourceConstraint,
    /// Comments, DTDs, PIs or entity declarations.
    RestrictedXml,
    /// The server is shutting down.
    SystemShutdown,
    /// Anything else.
    UndefinedCondition,
    /// Data before authentication or an unknown top-level element.
    UnsupportedStanzaType,
    /// Stream version other than 1.0.
    UnsupportedVersion,
    /// The peer was not authorized for what it did.
    NotAuthorized,
    /// An internal server error.
    InternalServerError,
    /// No data for too long.
    ConnectionTimeout,
}

impl StreamCondition {
    /// The element name of the condition.
    pub fn name(self) -> &'static str {
        use StreamCondition::*;
        match self {
            BadFormat => "bad-format",
            Conflict => "conflict",
            HostUnknown => "host-unknown",
            InvalidFrom => "invalid-from",
            InvalidNamespace => "invalid-namespace",
            NotWellFormed => "not-well-formed",
            PolicyViolation => "policy-violation",
            RemoteConnectionFailed => "remote-connection-failed",
            ResourceConstraint => "resource-constraint",
            RestrictedXml => "restricted-xml",
            SystemShutdown => "system-shutdown",
            UndefinedCondition => "undefined-condition",
            UnsupportedStanzaType => "unsupported-stanza-type",
            UnsupportedVersion => "unsupported-version",
            NotAuthorized => "not-authorized",
            InternalServerError => "internal-server-error",
            ConnectionTimeout => "connection-timeout",
        }
    }

    /// Parses a condition name; unknown names map to `undefined-condition`.
    pub fn from_name(name: &str) -> Self {
        use StreamCondition::*;
        [
            BadFormat,
            Conflict,
            HostUnknown,
            InvalidFrom,
            InvalidNamespace,
            NotWellFormed,
            PolicyViolation,
            RemoteConnectionFailed,
            ResourceConstraint,
            RestrictedXml,
            SystemShutdown,
            UnsupportedStanzaType,
            UnsupportedVersion,
            NotAuthorized,
            InternalServerError,
            ConnectionTimeout,
        ]
        .into_iter()
        .find(|c| c.name() == name)
        .unwrap_or(UndefinedCondition)
    }
}

impl fmt::Display for StreamCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A stanza error condition: answers one stanza, the stream goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StanzaCondition {
    /// The request was malformed.
    BadRequest,
    /// The resource is in use.
    Conflict,
    /// Feature not implemented.
    FeatureNotImplemented,
    /// Sender not allowed.
    Forbidden,
    /// Internal error.
    InternalServerError,
    /// The addressed item does not exist.
    ItemNotFound,
    /// Address malformed.
    JidMalformed,
    /// Not acceptable.
    NotAcceptable,
    /// Not allowed.
    NotAllowed,
    /// Not authorized.
    NotAuthorized,
    /// Policy violation.
    PolicyViolation,
    /// The recipient is unavailable.
    RecipientUnavailable,
    /// Registration is required (a members-only room, XEP-0045).
    RegistrationRequired,
    /// A remote domain is not served (no federation).
    RemoteServerNotFound,
    /// Resource limit reached.
    ResourceConstraint,
    /// The service is not available.
    ServiceUnavailable,
    /// Anything else.
    UndefinedCondition,
    /// Unexpected request.
    UnexpectedRequest,
}

impl StanzaCondition {
    /// The element name of the condition.
    pub fn name(self) -> &'static str {
        use StanzaCondition::*;
        match self {
            BadRequest => "bad-request",
            Conflict => "conflict",
            FeatureNotImplemented => "feature-not-implemented",
            Forbidden => "forbidden",
            InternalServerError => "internal-server-error",
            ItemNotFound => "item-not-found",
            JidMalformed => "jid-malformed",
            NotAcceptable => "not-acceptable",
            NotAllowed => "not-allowed",
            NotAuthorized => "not-authorized",
            PolicyViolation => "policy-violation",
            RecipientUnavailable => "recipient-unavailable",
            RegistrationRequired => "registration-required",
            RemoteServerNotFound => "remote-server-not-found",
            ResourceConstraint => "resource-constraint",
            ServiceUnavailable => "service-unavailable",
            UndefinedCondition => "undefined-condition",
            UnexpectedRequest => "unexpected-request",
        }
    }

    /// The error type RFC 6120 §8.3.3 associates with the condition.
    pub fn error_type(self) -> &'static str {
        use StanzaCondition::*;
        match self {
            BadRequest | JidMalformed | NotAcceptable | PolicyViolation => "modify",
            NotAuthorized | RegistrationRequired => "auth",
            InternalServerError | ResourceConstraint | RecipientUnavailable => "wait",
            _ => "cancel",
        }
    }

    /// Parses a condition name; unknown names map to `undefined-condition`.
    pub fn from_name(name: &str) -> Self {
        use StanzaCondition::*;
        [
            BadRequest,
            Conflict,
            FeatureNotImplemented,
            Forbidden,
            InternalServerError,
            ItemNotFound,
            JidMalformed,
            NotAcceptable,
            NotAllowed,
            NotAuthorized,
            PolicyViolation,
            RecipientUnavailable,
            RegistrationRequired,
            RemoteServerNotFound,
            ResourceConstraint,
            ServiceUnavailable,
            UnexpectedRequest,
        ]
        .into_iter()
        .find(|c| c.name() == name)
        .unwrap_or(UndefinedCondition)
    }
}

impl fmt::Display for StanzaCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
