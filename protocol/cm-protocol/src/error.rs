//! Why bytes from the peer are not a frame.

/// A frame that could not be decoded; the connection carrying it is closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fields ran past the end of the frame.
    #[error("truncated frame")]
    Truncated,
    /// A field had an impossible value.
    #[error("invalid frame")]
    Invalid,
    /// Unknown frame type.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// Declared length above [`MAX_FRAME`](crate::MAX_FRAME).
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
}

/// A type octet that names no [`FrameTag`](crate::FrameTag).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown frame type {0}")]
pub struct UnknownFrameType(pub u8);

impl From<UnknownFrameType> for DecodeError {
    fn from(UnknownFrameType(octet): UnknownFrameType) -> Self {
        DecodeError::UnknownType(octet)
    }
}
