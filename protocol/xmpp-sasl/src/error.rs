//! Error type shared by all mechanisms.

/// Why a SASL exchange failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// The message does not follow the mechanism's grammar.
    #[error("malformed SASL message: {0}")]
    Malformed(&'static str),
    /// A base64-encoded SCRAM attribute (`s=`, `c=`, `p=`, `v=`) is not valid base64.
    #[error("invalid base64 in SCRAM attribute")]
    Base64,
    /// The client requested channel binding (`p=` GS2 flag); none is offered.
    #[error("channel binding is not supported")]
    ChannelBindingNotSupported,
    /// The `c=` attribute does not match the GS2 header of the client-first-message.
    #[error("channel binding data mismatch")]
    ChannelBindingMismatch,
    /// A mandatory extension (`m=`) was present; none is supported.
    #[error("unsupported mandatory SCRAM extension")]
    UnsupportedExtension,
    /// The username is badly escaped, empty or fails SASLprep.
    #[error("invalid username encoding")]
    InvalidUsername,
    /// The authorization identity is badly encoded or not permitted.
    #[error("invalid authorization identity")]
    InvalidAuthzid,
    /// The nonce does not extend / equal the expected nonce.
    #[error("nonce mismatch")]
    NonceMismatch,
    /// The client proof did not verify (wrong password or unknown user).
    #[error("invalid client proof")]
    InvalidProof,
    /// Credentials were rejected (e.g. PLAIN password mismatch).
    #[error("not authorized")]
    NotAuthorized,
    /// The server signature (SCRAM) or responder message (HT) did not
    /// verify: the server does not know the password or token.
    #[error("invalid server signature")]
    InvalidServerSignature,
    /// The mechanism binds to a channel-binding type this connection does
    /// not have (e.g. `HT-SHA-256-ENDP` where the certificate the client
    /// saw is not known): for this connection it is not offered.
    #[error("channel binding unavailable on this connection")]
    ChannelBindingUnavailable,
    /// The credentials (a FAST token) are no longer trusted: expired,
    /// invalidated, or replaced by a newer one the client used.
    #[error("credentials expired")]
    CredentialsExpired,
    /// The server asked for fewer PBKDF2 iterations than the client accepts.
    #[error("iteration count {got} below minimum {min}")]
    IterationsTooLow {
        /// Iteration count sent by the server.
        got: u32,
        /// Minimum the client accepts.
        min: u32,
    },
    /// The server asked for more PBKDF2 iterations than the client accepts
    /// (hashing them would keep the client busy for minutes).
    #[error("iteration count {got} above maximum {max}")]
    IterationsTooHigh {
        /// Iteration count sent by the server.
        got: u32,
        /// Maximum the client accepts.
        max: u32,
    },
    /// The server-final-message carried `e=<value>`.
    #[error("server reported SCRAM error: {0}")]
    ServerError(String),
    /// The requested mechanism is not offered.
    #[error("unsupported mechanism: {0}")]
    InvalidMechanism(String),
    /// The mechanism is only offered over an encrypted stream.
    #[error("encryption required")]
    EncryptionRequired,
    /// A step was called in the wrong order (e.g. final before first).
    #[error("SASL step out of order")]
    OutOfOrder,
}

impl SaslError {
    /// The RFC 6120 §6.5 defined condition to send in `<failure/>`.
    pub fn condition(&self) -> &'static str {
        match self {
            SaslError::Malformed(_)
            | SaslError::ChannelBindingNotSupported
            | SaslError::UnsupportedExtension
            | SaslError::InvalidUsername
            | SaslError::OutOfOrder => "malformed-request",
            SaslError::Base64 => "incorrect-encoding",
            SaslError::InvalidAuthzid => "invalid-authzid",
            SaslError::InvalidMechanism(_) | SaslError::ChannelBindingUnavailable => {
                "invalid-mechanism"
            }
            SaslError::CredentialsExpired => "credentials-expired",
            SaslError::EncryptionRequired => "encryption-required",
            SaslError::ChannelBindingMismatch
            | SaslError::NonceMismatch
            | SaslError::InvalidProof
            | SaslError::NotAuthorized
            | SaslError::InvalidServerSignature
            | SaslError::IterationsTooLow { .. }
            | SaslError::IterationsTooHigh { .. }
            | SaslError::ServerError(_) => "not-authorized",
        }
    }
}
