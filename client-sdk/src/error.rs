//! Errors of the client library: each says what failed.

/// Why a client operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// Bad options (JID, CA file).
    #[error("configuration: {0}")]
    Config(String),
    /// The server could not be reached.
    #[error("server unreachable: {0}")]
    Unreachable(String),
    /// TLS failed (certificate not trusted, wrong name, no common ALPN).
    #[error("TLS: {0}")]
    Tls(String),
    /// Authentication failed with this SASL condition.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The server ended the stream with this stream error condition.
    #[error("stream error: {0}")]
    Stream(String),
    /// A request was answered with this stanza error condition.
    #[error("stanza error: {0}")]
    StanzaError(String),
    /// The server sent something unexpected.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The connection went away.
    #[error("disconnected: {0}")]
    Disconnected(String),
    /// The session is closed.
    #[error("session closed")]
    Closed,
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// Too much is waiting (the outbox, or requests waiting for answers):
    /// try again later.
    #[error("busy: {0}")]
    Busy(String),
}

impl ClientError {
    pub(crate) fn from_connection(e: quinn::ConnectionError) -> Self {
        // QUIC carries TLS alerts as CRYPTO_ERROR codes 0x100..=0x1ff (RFC 9001 §4.8).
        let is_crypto = |code: u64| (0x100..0x200).contains(&code);
        match e {
            quinn::ConnectionError::TransportError(t) if is_crypto(u64::from(t.code)) => {
                ClientError::Tls(t.to_string())
            }
            quinn::ConnectionError::ConnectionClosed(c) if is_crypto(u64::from(c.error_code)) => {
                ClientError::Tls(c.to_string())
            }
            quinn::ConnectionError::TimedOut => {
                ClientError::Unreachable("no answer from the server".into())
            }
            other => ClientError::Unreachable(other.to_string()),
        }
    }
}
