//! The one error type every call of the binding may raise
//! (`LonglinkException` in Kotlin, `LonglinkError` in Swift and Python).

use client_sdk::ClientError;
use client_sdk::push::PushError;

/// Why a call failed. `detail` says more, for logs; apps decide on the
/// variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum LonglinkError {
    /// Bad options: a JID, a server address, a CA certificate.
    #[error("configuration: {detail}")]
    Config {
        /// What is wrong.
        detail: String,
    },
    /// The server could not be reached (no network, wrong address).
    #[error("server unreachable: {detail}")]
    Unreachable {
        /// What the network said.
        detail: String,
    },
    /// TLS failed: the certificate is not trusted, names another server.
    #[error("TLS: {detail}")]
    Tls {
        /// What TLS said.
        detail: String,
    },
    /// The server refused the login with this SASL condition
    /// (`not-authorized`: wrong user or password).
    #[error("authentication failed: {condition}")]
    Auth {
        /// The SASL condition.
        condition: String,
    },
    /// The server ended the stream with this condition.
    #[error("stream error: {condition}")]
    Stream {
        /// The stream error condition (`conflict`, `system-shutdown`…).
        condition: String,
    },
    /// A request was answered with this stanza error condition.
    #[error("stanza error: {condition}")]
    Stanza {
        /// The stanza error condition (`item-not-found`, `forbidden`…).
        condition: String,
    },
    /// The server sent something the library did not expect.
    #[error("unexpected answer: {detail}")]
    Unexpected {
        /// What came.
        detail: String,
    },
    /// The connection went away; the session reconnects by itself if it
    /// can (events tell).
    #[error("disconnected: {detail}")]
    Disconnected {
        /// Why.
        detail: String,
    },
    /// The session is over (disconnected, aborted, or ended for good):
    /// connect again.
    #[error("session closed")]
    Closed,
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// Too much is waiting (the outbox, or requests): try again later.
    #[error("busy: {detail}")]
    Busy {
        /// What is full.
        detail: String,
    },
    /// The account does not offer push notifications (XEP-0357).
    #[error("the account does not offer push notifications")]
    PushNotSupported,
    /// The server cannot reach this app server (push).
    #[error("the server cannot reach the app server {app_server}")]
    PushAppServerUnreachable {
        /// The app server's JID.
        app_server: String,
    },
    /// A push registration the server or the library finds invalid.
    #[error("invalid push request: {detail}")]
    PushInvalid {
        /// What is wrong.
        detail: String,
    },
    /// The server refused the push request with this condition.
    #[error("push request refused: {condition}")]
    PushRefused {
        /// The stanza error condition.
        condition: String,
    },
    /// The events are already read elsewhere: an [`crate::EventListener`]
    /// takes them all, and `next_event` cannot be used beside it (nor two
    /// listeners).
    #[error("the events go to an event listener")]
    EventsTaken,
    /// A bug in the library (a task of it panicked).
    #[error("internal error: {detail}")]
    Internal {
        /// What happened.
        detail: String,
    },
}

impl From<ClientError> for LonglinkError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Config(detail) => Self::Config { detail },
            ClientError::Unreachable(detail) => Self::Unreachable { detail },
            ClientError::Tls(detail) => Self::Tls { detail },
            ClientError::Auth(condition) => Self::Auth { condition },
            ClientError::Stream(condition) => Self::Stream { condition },
            ClientError::StanzaError(condition) => Self::Stanza { condition },
            ClientError::Protocol(detail) => Self::Unexpected { detail },
            ClientError::Disconnected(detail) => Self::Disconnected { detail },
            ClientError::Closed => Self::Closed,
            ClientError::Timeout => Self::Timeout,
            ClientError::Busy(detail) => Self::Busy { detail },
        }
    }
}

impl From<PushError> for LonglinkError {
    fn from(e: PushError) -> Self {
        match e {
            PushError::NotSupported => Self::PushNotSupported,
            PushError::AppServerUnreachable(app_server) => {
                Self::PushAppServerUnreachable { app_server }
            }
            PushError::Invalid(detail) => Self::PushInvalid { detail },
            PushError::Refused(condition) => Self::PushRefused { condition },
            PushError::Client(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_and_push_errors_keep_their_condition_across_the_binding() {
        assert_eq!(
            LonglinkError::from(ClientError::Auth("not-authorized".into())),
            LonglinkError::Auth {
                condition: "not-authorized".into()
            }
        );
        assert_eq!(
            LonglinkError::from(PushError::AppServerUnreachable("push.x".into())),
            LonglinkError::PushAppServerUnreachable {
                app_server: "push.x".into()
            }
        );
        assert_eq!(
            LonglinkError::from(PushError::Client(ClientError::Timeout)),
            LonglinkError::Timeout
        );
    }
}
